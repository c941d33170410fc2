# Sourced by the tools/ scripts that launch mpirun: Open MPI settings for this machine.
# Root is allowed (containers), more ranks than cores are allowed (2-core machines), and every script
# gets a private Open MPI session directory, so that mpiruns of other jobs on the machine cannot
# collide with ours (see tests/cli/common.sh); it is removed when the script exits.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
if [ -z "${OMPI_MCA_orte_tmpdir_base:-}" ]; then
  OMPI_MCA_orte_tmpdir_base=$(mktemp -d) && export OMPI_MCA_orte_tmpdir_base
  trap 'rm -rf "$OMPI_MCA_orte_tmpdir_base"' EXIT
fi
