// Shared pieces of the subcommands: the MPI/thread context, option parsing with INI config files,
// and small file helpers.
#pragma once
#include <boost/program_options.hpp>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "metapo/comm/topology.h"
#include "metapo/core/memory.h"
#include "metapo/model/config.h"

namespace metapo::cli {

namespace po = boost::program_options;

struct Context {
  Topology topo;
  int threads = 1;
};

// Parses a subcommand's arguments (argv[0] is the subcommand name). Adds --help and --config FILE:
// keys of the INI file's [<cmd>] section are options of the subcommand, and the command line wins
// over the file. Returns false when --help was printed (the caller then returns 0). Errors name the
// option or the config file and key.
bool parse_args(const std::string& cmd, const std::string& usage, po::options_description& desc,
                int argc, char** argv, po::variables_map& vm, const Context& ctx);

// The process grid of train, sft, precompute-ref and eval: --tp N, --pp M and --pp-layers (INI keys
// tp, pp and pp-layers too).
struct ParallelOptions {
  int tp = 1, pp = 1;
  std::string pp_layers_text;      // --pp-layers as given: comma-separated layer counts per stage
  std::vector<int64_t> pp_layers;  // parsed by apply_parallel_options (empty: an even split)
};
void add_parallel_options(po::options_description& desc, ParallelOptions& p);
// After parse_args: re-creates ctx.topo as Topology::create(tp, pp) (world = DP x PP x TP; the 1 x 1
// grid main() made is freed) and re-runs configure_threads; parses --pp-layers. One-line errors name the
// option: a world size not divisible by --tp x --pp, --pp-layers that is not one count per stage.
void apply_parallel_options(Context& ctx, ParallelOptions& p);

// --device for the forward-only commands (eval, precompute-ref, score): cpu (default) or cuda.
void add_device_option(po::options_description& desc, std::string& device);
// Parses --device and checks it before any work, one line naming --device: an unknown name, a device
// this build or machine lacks, cuda with --tp or --pp above 1 (one device per model replica for now);
// then selects the rank's device (ops::select_device: GPU local_rank mod the node's GPUs).
Device check_device_option(const std::string& device, const ParallelOptions& par, int local_rank);

// A preset name ("tiny") resolves to configs/presets/<name>.ini of the source tree; a path to an
// existing .ini file is taken as is.
std::string resolve_preset(const std::string& name_or_path);
// The model config of a preset: an .ini (configs/presets/NAME.ini) or a Hugging Face config.json
// (configs/models/NAME.json, or any .json path).
LlamaConfig preset_config(const std::string& name_or_path);

// A size in bytes: a number with an optional unit, KB/MB/GB/TB (powers of 1000, as transformers'
// max_shard_size) or KiB/MiB/GiB/TiB (powers of 1024); "5GB", "512MiB", "1000". Throws naming option.
uint64_t parse_bytes(const std::string& text, const std::string& option);
// --pp-layers: pp comma-separated positive layer counts ("" gives none: an even split).
std::vector<int64_t> parse_pp_layers(const std::string& text, int pp);

// Rank 0 receives every rank's text (each rank's lines in the order it produced them); other ranks get
// an empty vector. Collective over topo.world_comm().
std::vector<std::string> gather_to_root(const std::string& mine, const Topology& topo);

// Reads a JSONL file of token sequences ({"tokens": [ids], ...} per line; blank lines skipped):
// checks the JSON, the "tokens" array and every id against [0, vocab) and calls
// fn(line object, tokens, "path:line: ") for each line, so callers read their extra fields with the
// same error prefix. `option` names the file in errors ("--input").
void for_each_token_line(
    const std::string& path, const std::string& option, int64_t vocab,
    const std::function<void(const nlohmann::json&, std::vector<int32_t>&&, const std::string&)>& fn);

// Writes `content` to path + ".partial" and renames it to path, so a crash never leaves a
// half-written file under the final name.
void write_file_atomic(const std::string& path, const std::string& content);
// The same for several files: each written whole under its .partial name before any is renamed, so
// a write that fails (a full disk) replaces none of them.
void write_files_atomic(const std::vector<std::pair<std::string, std::string>>& files);

// Before any work: the directory a file `path` will be written in (or, when missing, the nearest
// existing one its parents will be made in) is a directory this process may write into; else one
// line "<what> <path>: ..." naming the directory and the reason. For the rank that writes the file
// (rank 0): another node need not have that directory.
void check_dir_writable(const std::string& path, const std::string& what);

// An input file an option names: it exists and is a file (a directory would read as empty).
void check_input_file(const std::string& path, const std::string& option);
// What a command's earlier output file looks like: JSONL each of whose lines `is_own` accepts, or
// (whole_json) one JSON value it accepts; `what` names it in the error. Empty: any file may go.
struct OwnOutput {
  std::function<bool(const nlohmann::json&)> is_own;
  std::string what;
  bool whole_json = false;
};
OwnOutput generate_output();  // {"id", "prompt": [ids], "completion": [ids], ...} per line
OwnOutput score_output();     // {"logp", "n_tokens", ...} per line
// An output file an option names, checked before any work: not empty, not a directory, and not
// any of `inputs` (files, or directories whose files it must not replace: a model directory). With
// `own`, a file already there is replaced only when it is empty or looks like an earlier output of
// the command (never a file of the user's).
void check_output_file(const std::string& path, const std::string& option, const std::vector<std::string>& inputs,
                       const OwnOutput& own = {});

}  // namespace metapo::cli
