#include "metapo/io/hf_model.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "metapo/core/error.h"
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

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

LlamaConfig load_hf_config(const std::string& dir) {
  check_dir(dir);
  const fs::path path = fs::path(dir) / "config.json";
  MP_CHECK(fs::is_regular_file(path), path.string(),
           ": missing (not a Hugging Face model directory?)");
  return config_from_json(read_json(path), path.string());
}

HfModel load_hf_model(const std::string& dir) {
  HfModel m;
  m.config = load_hf_config(dir);
  const LlamaConfig& c = m.config;
  const ParamLayout lay(c);

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

  // Pass 1: open every file (validating its header) and match tensors to the layout, so that a
  // missing or misshapen tensor fails before gigabytes are read.
  std::vector<SafetensorsReader> readers;
  for (const auto& f : files) readers.emplace_back(f);
  std::map<std::string, size_t> source;  // layout tensor -> reader index
  for (size_t ri = 0; ri < readers.size(); ++ri) {
    const std::string& file = readers[ri].path();
    const std::string fname = fs::path(file).filename().string();
    for (const auto& kv : wmap)
      MP_CHECK(kv.second != fname || readers[ri].find(kv.first), listing, ": tensor ", kv.first,
               " is listed in shard ", fname, ", which does not hold it");
    for (const SafetensorsEntry& e : readers[ri].tensors()) {
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
      MP_CHECK(fresh, file, ": tensor ", e.name, " is also in ", readers[it->second].path());
    }
  }
  for (const TensorEntry& t : lay.tensors())
    MP_CHECK(source.count(t.name), listing, ": tensor ", t.name, " is missing");

  // Pass 2: read, converting to fp32 straight into the flat buffer.
  m.params.assign(lay.total(), 0.0f);
  for (const TensorEntry& t : lay.tensors()) {
    readers[source[t.name]].read(t.name, m.params.data() + t.offset);
    // A diverged model is refused here, so eval, score, generate and training never run on one.
    const float* x = m.params.data() + t.offset;
    size_t bad = 0;
    for (size_t i = 0; i < t.numel; ++i) bad += std::isfinite(x[i]) ? 0 : 1;
    MP_CHECK(bad == 0, readers[source[t.name]].path(), ": tensor ", t.name, " holds ", bad, " non-finite values (of ",
             t.numel, "); the model diverged");
  }
  return m;
}

void save_hf_model(const std::string& dir, const LlamaConfig& c, const std::vector<float>& params,
                   const std::string& dtype) {
  static const std::map<std::string, std::string> st_dtype = {
      {"float32", "F32"}, {"bfloat16", "BF16"}, {"float16", "F16"}};
  MP_CHECK(st_dtype.count(dtype), dir, ": cannot save dtype ", dtype,
           " (float32, bfloat16 or float16)");
  c.validate(dir);
  const ParamLayout lay(c);
  MP_CHECK(params.size() == lay.total(), dir, ": ", params.size(),
           " parameters given, the config needs ", lay.total());

  // "out/" + ".partial" would land inside out/: work on the path without its trailing slash.
  fs::path target = fs::path(dir).lexically_normal();
  if (!target.has_filename()) target = target.parent_path();
  const fs::path tmp = target.string() + ".partial", old = target.string() + ".old";
  std::error_code ec;
  // Replace only what we would have written ourselves; never delete an arbitrary directory.
  if (fs::exists(target, ec)) {
    MP_CHECK(fs::is_directory(target, ec) && fs::is_regular_file(target / "config.json", ec),
             target.string(), ": exists and is not a model directory (no config.json); "
             "refusing to replace it");
  }
  if (target.has_parent_path()) {
    fs::create_directories(target.parent_path(), ec);
    MP_CHECK(!ec, target.parent_path().string(), ": cannot create (", ec.message(), ")");
  }
  fs::remove_all(tmp, ec);  // a stale one from a crashed export
  fs::create_directory(tmp, ec);
  MP_CHECK(!ec, tmp.string(), ": cannot create (", ec.message(), ")");

  try {
    LlamaConfig saved = c;
    saved.torch_dtype = dtype;
    write_json(tmp / "config.json", config_to_json(saved));
    write_json(tmp / "generation_config.json",
               {{"bos_token_id", c.bos_token_id}, {"eos_token_id", c.eos_token_id}});
    std::vector<SafetensorsTensor> tensors;
    for (const TensorEntry& t : lay.tensors())
      tensors.push_back({t.name, t.shape, params.data() + t.offset});
    write_safetensors((tmp / "model.safetensors").string(), tensors, st_dtype.at(dtype));
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }

  // rename() cannot replace a non-empty directory, so the old one steps aside first; a crash in
  // between leaves dir.old and dir.partial, both complete, never a half-written dir.
  if (fs::exists(target, ec)) {
    fs::remove_all(old, ec);
    fs::rename(target, old, ec);
    MP_CHECK(!ec, target.string(), ": cannot move the old model aside (", ec.message(), ")");
  }
  fs::rename(tmp, target, ec);
  MP_CHECK(!ec, target.string(), ": cannot rename ", tmp.string(), " to it (", ec.message(), ")");
  fs::remove_all(old, ec);
}

}  // namespace metapo
