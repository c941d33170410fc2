# shellcheck shell=bash
# Sourced by the tools/ scripts that write into an output directory they name or are given.
#
# claim_out VAR DIR SIGN: DIR is the script's own, or made so. It may be absent or empty, or hold
# the .metapo-out marker these scripts write, or SIGN (a glob of what an earlier version of the
# script always wrote there). Any other directory, or a file, is refused with one line naming VAR,
# and nothing is touched. The marker is written into DIR.
# fresh_out VAR DIR SIGN: the same, and DIR is then emptied for a new run.
claim_out() {
  local var="$1" dir="$2" sign="$3"
  if [ -e "$dir" ] || [ -L "$dir" ]; then
    if [ ! -d "$dir" ]; then
      echo "error: $var=$dir: exists and is not a directory; choose another $var" >&2
      exit 2
    fi
    if [ -n "$(ls -A "$dir")" ] && [ ! -e "$dir/.metapo-out" ] && ! compgen -G "$dir/$sign" >/dev/null; then
      echo "error: $var=$dir: exists and is not an output directory of $(basename "$0") (no .metapo-out);" \
        "choose another $var or remove it" >&2
      exit 2
    fi
  fi
  mkdir -p "$dir" && : >"$dir/.metapo-out"
}
fresh_out() {
  claim_out "$@"
  rm -rf "$2" && mkdir -p "$2" && : >"$2/.metapo-out"
}
