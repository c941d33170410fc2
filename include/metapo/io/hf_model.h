// Hugging Face model directories: config.json + model.safetensors (or sharded
// model-0000x-of-0000y.safetensors listed by model.safetensors.index.json), in HF tensor names.
// This is how models enter metapo (`--init-from`) and leave it (`export`).
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "metapo/comm/comm.h"
#include "metapo/io/safetensors.h"
#include "metapo/model/config.h"
#include "metapo/model/layout.h"
#include "metapo/model/tp_layout.h"

namespace metapo {

struct HfModel {
  LlamaConfig config;
  std::vector<float> params;  // the flat buffer, in ParamLayout(config) order
};

// Reads and validates dir/config.json.
LlamaConfig load_hf_config(const std::string& dir);

// A model directory opened for reading: config.json, and every tensor of ParamLayout(config) located
// in the safetensors files and checked before any data is read (present exactly once, with exactly
// its shape; extra tensors are errors, except lm_head.weight in a tied model and rotary_emb.inv_freq
// buffers, which transformers may write). Then any part of the flat buffer can be read: a rank reads
// only the byte ranges of its own shard (DESIGN §7b).
class HfModelReader {
 public:
  explicit HfModelReader(const std::string& dir);
  const LlamaConfig& config() const { return config_; }
  const ParamLayout& layout() const { return layout_; }

  // For every run r: local[r.local, r.local + r.count) = the flat buffer's elements
  // [r.full, r.full + r.count) (ParamLayout(config) order), converted to fp32 from F32/BF16/F16/F64;
  // other elements of local are not touched. Reads only those bytes, on the calling rank's OpenMP
  // threads (pread, at most 1M elements staged per thread). A value that is not finite is an error
  // naming the file and the tensor (the model diverged).
  void read_runs(const std::vector<TpCopy>& runs, float* local) const;
  // The whole flat buffer.
  std::vector<float> read_all() const;

 private:
  std::string dir_;
  LlamaConfig config_;
  ParamLayout layout_;
  std::vector<SafetensorsReader> readers_;
  std::vector<size_t> source_;  // layout tensor k -> its reader
};

// A model's identity for the reference log-probs a dataset stores (precompute-ref writes it, train
// checks it): 16 hex digits of a hash of the layout (every tensor's name and size) and of the fp32
// values of the first 1024 elements of every tensor. Reads only those (a few MB for a 70B model). The
// same weights give the same fingerprint wherever the directory lives and however its files are split;
// another model (a fine-tune, a bf16 copy of an fp32 model) gives another.
std::string model_fingerprint(const HfModelReader& model);

// Reads config.json and every tensor of ParamLayout(config) (HfModelReader::read_all).
HfModel load_hf_model(const std::string& dir);

// `dir` as save_hf_model names what it writes: normalized, without a trailing slash ("out/" -> "out"),
// so that dir + ".partial", its parent and its file name are the directory's own.
std::filesystem::path model_dir_path(const std::string& dir);

// Whether save_hf_model may write `dir`: absent, or a model directory (with config.json) that it
// replaces; throws naming dir otherwise. For validating an output before heavy work.
void check_model_dir_target(const std::string& dir);

// Every end-of-sequence id a model directory names: config.json's eos_token_id and
// generation_config.json's, each a number or a list, in the order found, without repeats; ids outside
// [0, vocab_size) are left out. What transformers' generate() stops at.
std::vector<int64_t> model_eos_ids(const std::string& dir, int64_t vocab_size);

// Throws "<what> <dtype>: unknown (valid: float32, bfloat16, float16)" unless save_hf_model can
// write dtype; `what` names the option it came from (--save-dtype, --dtype). With allow_auto, "auto"
// is valid too (resolve_save_dtype).
void check_save_dtype(const std::string& dtype, const std::string& what, bool allow_auto = false);

// The dtype to write for an option's value: the value itself, or for "auto" the dtype the model's
// config.json named (c.torch_dtype, which a checkpoint's model config carries over from the run's
// model) when save_hf_model can write it, else float32. A bf16 model trained or exported comes out
// bf16, as transformers 5 (from_pretrained's dtype "auto", then save_pretrained) keeps it.
std::string resolve_save_dtype(const std::string& dtype, const LlamaConfig& c);

// For a float16 save: the first value of `runs` (local offsets into `local`, as save_hf_model_parallel
// takes them) past float16's range (|x| >= 65520 rounds to infinity, which every reader then refuses
// as a diverged model), as an error line naming `dir` and the tensor; "" when there is none or dtype
// is not float16. Both saves check it before writing anything.
std::string f16_range_error(const std::string& dir, const ParamLayout& lay, const std::vector<TpCopy>& runs,
                            const float* local, const std::string& dtype);

// Writes config.json (torch_dtype = dtype), generation_config.json and model.safetensors, with dtype
// float32, bfloat16 or float16. Builds dir + ".partial" and renames it to dir; an existing `dir` is
// replaced only when it holds a config.json (a model directory), never any other directory.
// source_dir (optional): the model directory the weights came from. Its tokenizer files and
// generation_config.json are copied, and config.json keeps the source's keys metapo does not manage
// (pad_token_id, an eos_token_id list, ...), as save_pretrained of the loaded model would.
void save_hf_model(const std::string& dir, const LlamaConfig& c, const std::vector<float>& params,
                   const std::string& dtype = "float32", const std::string& source_dir = "");

// The safetensors files of a model directory as save_hf_model_parallel writes them: the tensors in
// ParamLayout order, a new file whenever the next tensor would take the current one past
// max_shard_bytes (a tensor is never split). One file is model.safetensors; several are
// model-0000k-of-0000n.safetensors with model.safetensors.index.json, as transformers writes them.
// It depends on the model, the dtype and the limit only, never on the layout that writes it.
struct HfFilePlan {
  struct File {
    std::string name;
    SafetensorsLayout layout;  // header and each tensor's byte offset
  };
  std::string dtype;                                 // F32, BF16, F16
  std::vector<File> files;
  std::vector<std::pair<size_t, uint64_t>> where;    // layout tensor k -> (file, byte offset of its data)
};
constexpr uint64_t kHfMaxShardBytes = 5000000000ull;  // transformers' save_pretrained default, "5GB"
HfFilePlan plan_hf_files(const LlamaConfig& c, const std::string& dtype, uint64_t max_shard_bytes = kHfMaxShardBytes);

// Collective over comm (the ranks that hold one copy of the model between them): writes the model
// directory `dir` with each rank writing only its own parts, streamed, so no rank ever holds the
// whole model. Rank r's parts are `runs` (local offsets into `local` <-> full ParamLayout offsets, as
// tp_shard_map / stage_shard_map give them); replicated runs are written only where write_replicated.
// Rank 0 first makes dir + ".partial" with config.json, generation_config.json, the index and every
// file's header at its final size; then every rank converts its runs to dtype and pwrites them,
// on its threads, and fsyncs; the runs of all ranks must cover every parameter exactly once (else an
// error); rank 0 renames the directory into place (as save_hf_model). The bytes are those
// save_hf_model writes when the model fits in one file; source_dir as there. Any rank's failure
// throws the same on all.
void save_hf_model_parallel(const std::string& dir, const LlamaConfig& c, const std::vector<TpCopy>& runs,
                            bool write_replicated, const float* local, const std::string& dtype, Comm& comm,
                            uint64_t max_shard_bytes = kHfMaxShardBytes, const std::string& source_dir = "");

}  // namespace metapo
