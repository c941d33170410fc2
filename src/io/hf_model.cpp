#include "metapo/model/config_json.h"
#include "metapo/io/hf_model.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "metapo/core/error.h"
#include "metapo/core/hash.h"
#include "metapo/core/progress.h"
#include "metapo/io/checkpoint.h"
#include "metapo/io/safetensors.h"
#include "metapo/model/layout.h"

namespace metapo {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

void check_dir(const std::string& dir) {
  std::error_code ec;
  MP_CHECK(fs::exists(dir, ec), "model directory ", dir, " does not exist");
  MP_CHECK(fs::is_directory(dir, ec), "model directory ", dir, " is not a directory");
}

json read_json(const fs::path& path) {
  std::ifstream in(path);
  MP_CHECK(in, path.string(), ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return json::parse(ss.str());
  } catch (const json::parse_error& e) {
    fail(path.string(), ": bad JSON: ", e.what());
  }
}

void write_json(const fs::path& path, const json& j) {
  std::ofstream out(path);
  out << j.dump(2) << "\n";
  out.close();
  MP_CHECK(out, path.string(), ": write failed");
}

// The path rank 0 of comm holds, on every rank.
fs::path bcast_path(const fs::path& p, Comm& comm) { return broadcast_string(comm, p.string(), 0); }

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// A run of the flat buffer cut at tensor boundaries and into pieces of at most 1M elements: the unit
// of work of the parallel reads and writes.
struct Piece {
  size_t tensor, first, count, local;  // elements [first, first + count) of tensor k <-> local + ...
  bool replicated;
};

std::vector<Piece> split_runs(const ParamLayout& lay, const std::vector<TpCopy>& runs, const std::string& where) {
  constexpr size_t kPiece = size_t(1) << 20;
  const std::vector<TensorEntry>& ts = lay.tensors();
  std::vector<Piece> pieces;
  for (const TpCopy& r : runs) {
    size_t full = r.full, at = r.local, left = r.count;
    while (left > 0) {
      // The tensor holding `full`: the last one starting at or before it (tensors are in offset order).
      const auto it = std::upper_bound(ts.begin(), ts.end(), full,
                                       [](size_t f, const TensorEntry& t) { return f < t.offset; });
      MP_CHECK(it != ts.begin(), where, ": element ", full, " is before the first tensor");
      const size_t k = size_t(it - ts.begin()) - 1;
      const size_t first = full - ts[k].offset;
      MP_CHECK(first < ts[k].numel, where, ": element ", full, " is past tensor ", ts[k].name);
      const size_t n = std::min({left, ts[k].numel - first, kPiece});
      pieces.push_back({k, first, n, at, r.replicated});
      full += n, at += n, left -= n;
    }
  }
  return pieces;
}

const std::map<std::string, std::string>& st_dtypes() {
  static const std::map<std::string, std::string> m = {{"float32", "F32"}, {"bfloat16", "BF16"}, {"float16", "F16"}};
  return m;
}

}  // namespace

std::vector<int64_t> model_eos_ids(const std::string& dir, int64_t vocab_size) {
  std::vector<int64_t> ids;
  auto add = [&](const json& v) {
    if (v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() < vocab_size &&
        std::find(ids.begin(), ids.end(), v.get<int64_t>()) == ids.end())
      ids.push_back(v.get<int64_t>());
  };
  std::error_code ec;
  for (const char* name : {"config.json", "generation_config.json"}) {
    const fs::path path = fs::path(dir) / name;
    if (!fs::is_regular_file(path, ec)) continue;
    const json j = read_json(path);
    const auto e = j.is_object() ? j.find("eos_token_id") : j.end();
    if (e == j.end()) continue;
    if (e->is_array())
      for (const json& v : *e) add(v);
    else
      add(*e);
  }
  return ids;
}

void check_save_dtype(const std::string& dtype, const std::string& what, bool allow_auto) {
  MP_CHECK(st_dtypes().count(dtype) || (allow_auto && dtype == "auto"), what, " ", dtype, ": unknown (valid: ",
           allow_auto ? "auto, " : "", "float32, bfloat16, float16)");
}

std::string resolve_save_dtype(const std::string& dtype, const LlamaConfig& c) {
  if (dtype != "auto") return dtype;
  return st_dtypes().count(c.torch_dtype) ? c.torch_dtype : "float32";
}

namespace {

// Marks the directories a save works in beside its target, dir.partial and dir.old, so that a later
// save removes only those it left (after a crash), never a user's directory of the same name. Removed
// from the finished directory once it is in place.
constexpr const char* kSaveMark = ".metapo-save";

// dir + ".partial", made fresh, beside a `dir` that is absent or a model directory (one with
// config.json: what save_hf_model writes); never replaces any other directory. Returns the path.
fs::path begin_model_dir(const std::string& dir) {
  check_model_dir_target(dir);
  // "out/" + ".partial" would land inside out/: work on the path without its trailing slash.
  const fs::path target = model_dir_path(dir);
  const fs::path tmp = target.string() + ".partial";
  std::error_code ec;
  if (target.has_parent_path()) {
    fs::create_directories(target.parent_path(), ec);
    MP_CHECK(!ec, target.parent_path().string(), ": cannot create (", ec.message(), ")");
  }
  fs::remove_all(tmp, ec);  // a stale one from a crashed save (check_model_dir_target: ours)
  fs::create_directory(tmp, ec);
  MP_CHECK(!ec, tmp.string(), ": cannot create (", ec.message(), ")");
  std::ofstream(tmp / kSaveMark) << "a metapo save in progress: this directory becomes " << target.string() << "\n";
  return tmp;
}

// The tokenizer's files: a save copies them from the model it started from, as a TRL trainer's
// save_pretrained keeps the tokenizer beside the weights.
constexpr const char* kTokenizerFiles[] = {"tokenizer.json",   "tokenizer_config.json", "special_tokens_map.json",
                                           "tokenizer.model",  "added_tokens.json",     "vocab.json",
                                           "merges.txt",       "chat_template.jinja",   "chat_template.json"};

// config.json keys of the source that a save does not carry over although config_to_json does not
// write them: another spelling of what it writes (transformers 5's dtype and rope_parameters), or
// what no longer describes the saved files (the source's transformers version, quantization, remote code).
bool key_not_carried(const std::string& k) {
  static const char* const kKeys[] = {"dtype",        "rope_parameters",     "transformers_version",
                                      "auto_map",     "quantization_config", "_name_or_path"};
  for (const char* x : kKeys)
    if (k == x) return true;
  return false;
}

// config.json (torch_dtype = dtype) and generation_config.json into tmp. With a source model
// directory (the model the weights came from): config.json keeps the source's keys that metapo does
// not manage (pad_token_id, an eos_token_id list whose first id is the model's, ...),
// generation_config.json is the source's, and its tokenizer files are copied.
void write_model_json(const fs::path& tmp, const LlamaConfig& c, const std::string& dtype,
                      const std::string& source_dir) {
  LlamaConfig saved = c;
  saved.torch_dtype = dtype;
  json config = config_to_json(saved);
  json generation = {{"bos_token_id", c.bos_token_id}, {"eos_token_id", c.eos_token_id}};
  std::vector<std::string> files = {"config.json", "generation_config.json"};
  std::error_code ec;
  const fs::path src(source_dir);
  if (!source_dir.empty() && fs::is_regular_file(src / "config.json", ec)) {
    const json was = read_json(src / "config.json");
    for (const auto& [k, v] : was.items())
      if (!config.contains(k) && !key_not_carried(k)) config[k] = v;
    const auto eos = was.find("eos_token_id");
    if (eos != was.end() && eos->is_array() && !eos->empty() && (*eos)[0].is_number_integer() &&
        (*eos)[0].get<int64_t>() == c.eos_token_id)
      config["eos_token_id"] = *eos;
    // Copied as it is (a file that is not a JSON object is refused first), like the tokenizer's.
    std::vector<const char*> copies(std::begin(kTokenizerFiles), std::end(kTokenizerFiles));
    if (fs::is_regular_file(src / "generation_config.json", ec)) {
      MP_CHECK(read_json(src / "generation_config.json").is_object(), (src / "generation_config.json").string(),
               ": not a JSON object");
      copies.push_back("generation_config.json");
      generation = nullptr;
    }
    for (const char* name : copies) {
      if (!fs::is_regular_file(src / name, ec)) continue;
      fs::copy_file(src / name, tmp / name, fs::copy_options::overwrite_existing, ec);
      MP_CHECK(!ec, (src / name).string(), ": cannot copy into ", tmp.string(), " (", ec.message(), ")");
      if (std::string(name) != "generation_config.json") files.push_back(name);
    }
  }
  write_json(tmp / "config.json", config);
  if (!generation.is_null()) write_json(tmp / "generation_config.json", generation);
  // On disk before the directory is renamed into place (the safetensors files fsync their own).
  for (const std::string& name : files) fsync_file((tmp / name).string());
}

// Renames the complete tmp (begin_model_dir) to dir. rename() cannot replace a non-empty directory, so
// an old dir steps aside first; a crash in between leaves dir.old and dir.partial, both complete,
// never a half-written dir.
void commit_model_dir(const fs::path& tmp, const std::string& dir) {
  const fs::path target = model_dir_path(dir);
  const fs::path old = target.string() + ".old";
  std::error_code ec;
  if (fs::exists(target, ec)) {
    fs::remove_all(old, ec);  // a stale one from a crashed save (check_model_dir_target: ours)
    // Marked before it moves, so that no crash leaves an unmarked DIR.old (the mark is not moved back).
    std::ofstream(target / kSaveMark) << "a metapo save's old copy of " << target.string() << "\n";
    fs::rename(target, old, ec);
    if (ec) {
      const std::string why = ec.message();
      fs::remove(target / kSaveMark, ec);
      fail(target.string(), ": cannot move the old model aside (", why, ")");
    }
  }
  fs::rename(tmp, target, ec);
  MP_CHECK(!ec, target.string(), ": cannot rename ", tmp.string(), " to it (", ec.message(), ")");
  fs::remove(target / kSaveMark, ec);
  fsync_dir(target.string());  // its entries, then the rename in its parent
  fsync_dir(target.has_parent_path() ? target.parent_path().string() : ".");
  // The old directory's other files (tokenizer.json, a README, an adapter, ...) stay, as
  // save_pretrained keeps them; only what a model save writes is replaced: config.json,
  // generation_config.json, model.safetensors, the shards model-XXXXX-of-YYYYY.safetensors and their
  // index (an old export's shards must not outlive it). A file that cannot be carried over stays in
  // the old directory, left unmarked (so that no later save clears it), and is said.
  std::string stranded;
  for (const auto& e : fs::directory_iterator(old, ec)) {
    const std::string name = e.path().filename().string();
    const bool shard = name.size() == 32 && name.rfind("model-", 0) == 0 && name.compare(11, 4, "-of-") == 0 &&
                       name.compare(20, 12, ".safetensors") == 0;  // model-00001-of-00002.safetensors
    const bool model_file = name == "config.json" || name == "generation_config.json" ||
                            name == "model.safetensors.index.json" || name == "model.safetensors" || shard;
    std::error_code ec2;
    if (model_file || name == kSaveMark || fs::exists(target / name, ec2)) continue;
    fs::rename(e.path(), target / name, ec2);
    if (ec2) stranded += (stranded.empty() ? "" : ", ") + name + " (" + ec2.message() + ")";
  }
  if (!stranded.empty()) {
    // Unmarked, so that the next save refuses DIR.old instead of clearing it with the user's files.
    fs::remove(old / kSaveMark, ec);
    fail(target.string(), ": written, but files of the old directory could not be carried over: ", stranded,
         "; they are in ", old.string(), " (move them back, then remove it)");
  }
  fs::remove_all(old, ec);
}

}  // namespace

std::string model_fingerprint(const HfModelReader& model) {
  constexpr size_t kSample = 1024;
  std::vector<TpCopy> runs;
  size_t at = 0;
  for (const TensorEntry& t : model.layout().tensors()) {
    const size_t n = std::min(t.numel, kSample);
    runs.push_back({t.offset, at, n, false});
    at += n;
  }
  std::vector<float> sample(at);
  model.read_runs(runs, sample.data());
  Fnv1a h;
  h.add_u64(model.layout().total());
  for (const TensorEntry& t : model.layout().tensors()) h.add_bytes(t.name.data(), t.name.size()), h.add_u64(t.numel);
  h.add_bytes(sample.data(), sample.size() * sizeof(float));
  return h.hex();
}

std::filesystem::path model_dir_path(const std::string& dir) {
  fs::path target = fs::path(dir).lexically_normal();
  if (!target.has_filename()) target = target.parent_path();
  return target;
}

void check_model_dir_target(const std::string& dir) {
  const fs::path target = model_dir_path(dir);
  std::error_code ec;
  // A link would be moved aside and replaced by a directory, leaving its target's old files.
  MP_CHECK(!fs::is_symlink(target, ec), target.string(), ": is a symbolic link; give the directory itself (",
           fs::read_symlink(target, ec).string(), ")");
  if (fs::exists(target, ec)) {
    MP_CHECK(fs::is_directory(target, ec) && fs::is_regular_file(target / "config.json", ec),
             target.string(), ": exists and is not a model directory (no config.json); "
             "refusing to replace it");
    // Its other files move into the new directory, which takes writing in it (commit_model_dir).
    MP_CHECK(::access(target.c_str(), W_OK | X_OK) == 0, target.string(), ": cannot write in it (",
             std::strerror(errno), "); a save replaces a model directory and carries its other files over");
  }
  // The save works in dir.partial and moves an old dir to dir.old: either may exist only as a crashed
  // save left it (marked), never as someone else's.
  for (const char* suffix : {".partial", ".old"}) {
    const fs::path side = target.string() + suffix;
    MP_CHECK(!fs::exists(fs::symlink_status(side, ec)) || (!fs::is_symlink(side, ec) && fs::is_directory(side, ec) &&
                                                            fs::exists(side / kSaveMark, ec)),
             side.string(), ": exists and was not left by a metapo save (a save of ", target.string(),
             " works in ", target.string(), ".partial and moves an old model to ", target.string(),
             ".old); move it away or choose another output directory");
  }
}

LlamaConfig load_hf_config(const std::string& dir) {
  check_dir(dir);
  const fs::path path = fs::path(dir) / "config.json";
  MP_CHECK(fs::is_regular_file(path), path.string(),
           ": missing (not a Hugging Face model directory?)");
  return config_from_json(read_json(path), path.string());
}

HfModelReader::HfModelReader(const std::string& dir)
    : dir_(dir), config_(load_hf_config(dir)), layout_(config_) {
  const LlamaConfig& c = config_;
  const ParamLayout& lay = layout_;

  // Which files to read. Like transformers, a single model.safetensors wins over an index.
  const fs::path single = fs::path(dir) / "model.safetensors";
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  std::string listing;                        // the file that promised the tensors, for messages
  std::map<std::string, std::string> wmap;    // sharded: tensor name -> shard file name
  std::vector<std::string> files;
  if (fs::exists(single)) {
    listing = single.string();
    files.push_back(listing);
  } else if (fs::exists(index)) {
    listing = index.string();
    const json j = read_json(index);
    MP_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(), listing,
             ": no weight_map object");
    std::map<std::string, bool> shards;
    for (const auto& it : j["weight_map"].items()) {
      MP_CHECK(it.value().is_string(), listing, ": weight_map entry for tensor ", it.key(),
               " is not a file name");
      wmap[it.key()] = it.value().get<std::string>();
      shards[wmap[it.key()]] = true;
    }
    for (const auto& s : shards) files.push_back((fs::path(dir) / s.first).string());
  } else {
    fail(dir, ": no model.safetensors or model.safetensors.index.json (metapo reads only "
              "safetensors; re-save .bin checkpoints with transformers first)");
  }

  // Open every file (validating its header) and match tensors to the layout, so that a missing or
  // misshapen tensor fails before gigabytes are read.
  for (const auto& f : files) readers_.emplace_back(f);
  std::map<std::string, size_t> source;  // layout tensor -> reader index
  for (size_t ri = 0; ri < readers_.size(); ++ri) {
    const std::string& file = readers_[ri].path();
    const std::string fname = fs::path(file).filename().string();
    for (const auto& kv : wmap)
      MP_CHECK(kv.second != fname || readers_[ri].find(kv.first), listing, ": tensor ", kv.first,
               " is listed in shard ", fname, ", which does not hold it");
    for (const SafetensorsEntry& e : readers_[ri].tensors()) {
      const TensorEntry* t = lay.find(e.name);
      if (!t) {
        // transformers may save the tied head (same values as the embedding) and old RoPE caches.
        if (c.tie_word_embeddings && e.name == "lm_head.weight") {
          const std::vector<int64_t> want = {c.vocab_size, c.hidden_size};
          MP_CHECK(e.shape == want, file, ": tensor lm_head.weight: expected ", shape_str(want),
                   ", file has ", shape_str(e.shape));
          continue;
        }
        if (ends_with(e.name, "rotary_emb.inv_freq")) continue;
        fail(file, ": tensor ", e.name, " is not part of the ", c.model_type,
             " model that config.json describes (attention_bias ",
             c.attention_bias ? "true" : "false", ", tie_word_embeddings ",
             c.tie_word_embeddings ? "true" : "false", ")");
      }
      MP_CHECK(e.shape == t->shape, file, ": tensor ", e.name, ": expected ",
               shape_str(t->shape), ", file has ", shape_str(e.shape));
      auto [it, fresh] = source.emplace(e.name, ri);
      MP_CHECK(fresh, file, ": tensor ", e.name, " is also in ", readers_[it->second].path());
    }
  }
  for (const TensorEntry& t : lay.tensors()) {
    MP_CHECK(source.count(t.name), listing, ": tensor ", t.name, " is missing");
    source_.push_back(source[t.name]);
  }
}

void HfModelReader::read_runs(const std::vector<TpCopy>& runs, float* local) const {
  const std::vector<TensorEntry>& ts = layout_.tensors();
  const std::vector<Piece> pieces = split_runs(layout_, runs, dir_);
  std::vector<size_t> bad(ts.size(), 0), read(ts.size(), 0);
  std::string error;
#pragma omp parallel
  {
    std::vector<size_t> my_bad(ts.size(), 0), my_read(ts.size(), 0);
#pragma omp for schedule(dynamic)
    for (size_t i = 0; i < pieces.size(); ++i) {
      const Piece& p = pieces[i];
      try {
        const SafetensorsReader& rd = readers_[source_[p.tensor]];
        rd.read_elements(*rd.find(ts[p.tensor].name), p.first, p.count, local + p.local);
      } catch (const std::exception& e) {
#pragma omp critical(hf_read_error)
        if (error.empty()) error = e.what();
        continue;
      }
      const float* x = local + p.local;
      size_t b = 0;
      for (size_t j = 0; j < p.count; ++j) b += std::isfinite(x[j]) ? 0 : 1;
      my_bad[p.tensor] += b, my_read[p.tensor] += p.count;
      report_progress();  // the hang watchdog: reading a large model is progress
    }
#pragma omp critical(hf_read_count)
    for (size_t k = 0; k < ts.size(); ++k) bad[k] += my_bad[k], read[k] += my_read[k];
  }
  if (!error.empty()) throw Error(error);
  // A diverged model is refused here, so eval, score, generate and training never run on one.
  for (size_t k = 0; k < ts.size(); ++k)
    MP_CHECK(bad[k] == 0, readers_[source_[k]].path(), ": tensor ", ts[k].name, " holds ", bad[k],
             " non-finite values (of ", read[k], read[k] == ts[k].numel ? "" : " read by this rank",
             "); the model diverged");
}

std::vector<float> HfModelReader::read_all() const {
  std::vector<TpCopy> all;
  for (const TensorEntry& t : layout_.tensors()) all.push_back({t.offset, t.offset, t.numel, false});
  std::vector<float> params(layout_.total(), 0.0f);
  read_runs(all, params.data());
  return params;
}

std::string f16_range_error(const std::string& dir, const ParamLayout& lay, const std::vector<TpCopy>& runs,
                            const float* local, const std::string& dtype) {
  if (dtype != "float16") return "";
  for (const TpCopy& r : runs)
    for (size_t k = 0; k < r.count; ++k) {
      const float x = local[r.local + k];
      if (!(std::fabs(x) >= 65520.0f)) continue;
      const size_t full = r.full + k;
      std::string name = "?";
      for (const TensorEntry& t : lay.tensors())
        if (full >= t.offset && full < t.offset + t.numel) name = t.name;
      return str_cat(dir, ": tensor ", name, " holds ", x, ", past float16's range (largest 65504): it would be "
                     "saved as infinity; save in bfloat16 or float32");
    }
  return "";
}

HfModel load_hf_model(const std::string& dir) {
  const HfModelReader reader(dir);
  return {reader.config(), reader.read_all()};
}

void save_hf_model(const std::string& dir, const LlamaConfig& c, const std::vector<float>& params,
                   const std::string& dtype, const std::string& source_dir) {
  check_save_dtype(dtype, dir + ": dtype");
  c.validate(dir);
  const ParamLayout lay(c);
  MP_CHECK(params.size() == lay.total(), dir, ": ", params.size(),
           " parameters given, the config needs ", lay.total());
  const std::string range = f16_range_error(dir, lay, {{0, 0, lay.total(), false}}, params.data(), dtype);
  MP_CHECK(range.empty(), range);
  const fs::path tmp = begin_model_dir(dir);
  try {
    write_model_json(tmp, c, dtype, source_dir);
    std::vector<SafetensorsTensor> tensors;
    for (const TensorEntry& t : lay.tensors())
      tensors.push_back({t.name, t.shape, params.data() + t.offset});
    write_safetensors((tmp / "model.safetensors").string(), tensors, st_dtypes().at(dtype));
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  commit_model_dir(tmp, dir);
}

HfFilePlan plan_hf_files(const LlamaConfig& c, const std::string& dtype, uint64_t max_shard_bytes) {
  check_save_dtype(dtype, "dtype");
  const std::string st = st_dtypes().at(dtype);
  const size_t esize = st == "F32" ? 4 : 2;
  const ParamLayout lay(c);
  const std::vector<TensorEntry>& ts = lay.tensors();
  HfFilePlan plan;
  plan.dtype = st;
  // Tensors in layout order, a new file when the next tensor would take this one past the limit.
  std::vector<std::vector<size_t>> groups;
  uint64_t bytes = 0;
  for (size_t k = 0; k < ts.size(); ++k) {
    const uint64_t b = uint64_t(ts[k].numel) * esize;
    if (groups.empty() || (bytes > 0 && bytes + b > max_shard_bytes)) groups.emplace_back(), bytes = 0;
    groups.back().push_back(k), bytes += b;
  }
  plan.where.resize(ts.size());
  for (size_t g = 0; g < groups.size(); ++g) {
    HfFilePlan::File f;
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", g + 1, groups.size());
    f.name = groups.size() == 1 ? "model.safetensors" : name;
    std::vector<SafetensorsTensor> list;
    for (size_t k : groups[g]) list.push_back({ts[k].name, ts[k].shape, nullptr});
    f.layout = safetensors_layout(f.name, list, st);
    for (size_t j = 0; j < groups[g].size(); ++j) plan.where[groups[g][j]] = {g, f.layout.offsets[j]};
    plan.files.push_back(std::move(f));
  }
  return plan;
}

void save_hf_model_parallel(const std::string& dir, const LlamaConfig& c, const std::vector<TpCopy>& runs,
                            bool write_replicated, const float* local, const std::string& dtype, Comm& comm,
                            uint64_t max_shard_bytes, const std::string& source_dir) {
  const int rank = comm.rank();
  const ParamLayout lay(c);
  const std::vector<TensorEntry>& ts = lay.tensors();
  const HfFilePlan plan = plan_hf_files(c, dtype, max_shard_bytes);
  // Every rank learns whether all ranks succeeded, and throws the same line when one did not.
  auto agree = [&](const std::string& error) {
    const std::string first = first_error(comm, error);  // the failing rank's line, on every rank
    if (!first.empty()) throw Error(first);
  };
  // Before anything is written: values a float16 file cannot hold, on any rank.
  agree(f16_range_error(dir, lay, runs, local, dtype));
  // Rank 0 lays the directory out: the JSON files, the index, every file's header at its full size.
  fs::path tmp;
  std::string error;
  if (rank == 0) {
    try {
      c.validate(dir);
      tmp = begin_model_dir(dir);
      write_model_json(tmp, c, dtype, source_dir);
      if (plan.files.size() > 1) {
        uint64_t total = 0;
        json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", json::object()}};
        for (size_t k = 0; k < ts.size(); ++k) {
          index["weight_map"][ts[k].name] = plan.files[plan.where[k].first].name;
          total += uint64_t(ts[k].numel) * plan.files[0].layout.element_size;
        }
        index["metadata"]["total_size"] = total;
        write_json(tmp / "model.safetensors.index.json", index);
      }
      for (const HfFilePlan::File& f : plan.files) {
        const std::string path = (tmp / f.name).string();
        const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        MP_CHECK(fd >= 0, path, ": cannot create (", std::strerror(errno), ")");
        errno = 0;
        const bool ok = ::pwrite(fd, f.layout.head.data(), f.layout.head.size(), 0) == ssize_t(f.layout.head.size()) &&
                        ::ftruncate(fd, off_t(f.layout.file_size)) == 0;
        const int err = errno ? errno : ENOSPC;  // a short write sets none: the disk is full
        ::close(fd);
        MP_CHECK(ok, path, ": cannot write the header (", std::strerror(err), ")");
      }
    } catch (const std::exception& e) {
      error = e.what();
      std::error_code ec;
      if (!tmp.empty()) fs::remove_all(tmp, ec);  // nothing half-written left beside the target
    }
  }
  agree(error);
  tmp = bcast_path(tmp, comm);
  // Every rank converts and writes its own runs, on its threads, and fsyncs what it wrote.
  const std::vector<Piece> pieces = split_runs(lay, runs, dir);
  std::vector<int> fds(plan.files.size(), -1);
  uint64_t written = 0;
  try {
    for (size_t g = 0; g < plan.files.size(); ++g) {
      const std::string path = (tmp / plan.files[g].name).string();
      fds[g] = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
      MP_CHECK(fds[g] >= 0, path, ": cannot open for writing (", std::strerror(errno), ")");
    }
#pragma omp parallel for schedule(dynamic) reduction(+ : written)
    for (size_t i = 0; i < pieces.size(); ++i) {
      const Piece& p = pieces[i];
      if (p.replicated && !write_replicated) continue;
      const auto [g, off] = plan.where[p.tensor];
      const size_t es = plan.files[g].layout.element_size;
      std::vector<char> buf(p.count * es);
      encode_floats(local + p.local, p.count, plan.dtype, buf.data());
      size_t done = 0;
      while (done < buf.size()) {
        const ssize_t n = ::pwrite(fds[g], buf.data() + done, buf.size() - done, off_t(off + uint64_t(p.first) * es + done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
#pragma omp critical(hf_write_error)
          if (error.empty()) error = str_cat((tmp / plan.files[g].name).string(), ": write failed (", std::strerror(errno), ")");
          break;
        }
        done += size_t(n);
      }
      written += p.count;
      report_progress();  // the hang watchdog: writing a large model is progress
    }
    for (size_t g = 0; g < fds.size() && error.empty(); ++g)
      if (::fsync(fds[g]) != 0) error = str_cat((tmp / plan.files[g].name).string(), ": fsync failed (", std::strerror(errno), ")");
  } catch (const std::exception& e) {
    if (error.empty()) error = e.what();
  }
  for (int fd : fds)
    if (fd >= 0) ::close(fd);
  // The ranks' parts must cover the model exactly once.
  uint64_t all = written;
  comm.allreduce(&all, 1, ReduceOp::Sum);
  if (error.empty() && all != lay.total())
    error = str_cat(dir, ": the ranks wrote ", all, " of the model's ", lay.total(), " parameters");
  try {
    agree(error);
  } catch (...) {
    std::error_code ec;
    if (rank == 0) fs::remove_all(tmp, ec);
    throw;
  }
  if (rank == 0) {
    try {
      commit_model_dir(tmp, dir);
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  agree(error);
}

}  // namespace metapo
