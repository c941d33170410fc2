// metapo score: per-token log-probs of given token sequences, so users can check metapo against any
// other implementation. Sequences are packed (no padding) into forwards of at most
// --max-batch-tokens tokens; with several ranks, line i is scored by rank i mod world.
#include <mpi.h>

#include <fstream>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "metapo/cli/commands.h"
#include "metapo/core/error.h"
#include "metapo/io/hf_model.h"
#include "metapo/model/llama.h"

namespace metapo::cli {

namespace {

struct ScoreInput {
  std::vector<int32_t> tokens;
  std::vector<uint8_t> mask;  // empty: every position counts
};

std::vector<ScoreInput> read_score_input(const std::string& path, int64_t vocab) {
  std::vector<ScoreInput> out;
  for_each_token_line(path, "--input", vocab, [&](const nlohmann::json& j, std::vector<int32_t>&& tokens,
                                                  const std::string& where) {
    ScoreInput s;
    s.tokens = std::move(tokens);
    if (j.contains("loss_mask") && !j["loss_mask"].is_null()) {
      const auto& m = j["loss_mask"];
      MP_CHECK(m.is_array() && m.size() == s.tokens.size(), where, "\"loss_mask\" must be an array of ",
               s.tokens.size(), " values (one per token)");
      for (const auto& v : m) {
        MP_CHECK(v.is_number_integer() || v.is_boolean(), where, "\"loss_mask\" values must be 0 or 1");
        s.mask.push_back(uint8_t(v.is_boolean() ? v.get<bool>() : v.get<int64_t>() != 0));
      }
    }
    out.push_back(std::move(s));
  });
  return out;
}


}  // namespace

int cmd_score(Context& ctx, int argc, char** argv) {
  po::options_description desc("metapo score options");
  std::string model_dir, input, output;
  int64_t max_tokens = 0;
  desc.add_options()
    ("model", po::value(&model_dir)->required(), "model directory (Hugging Face layout)")
    ("input", po::value(&input)->required(), "JSONL: {\"tokens\": [ids], \"loss_mask\": [0/1 per token]} per line")
    ("output", po::value(&output)->required(), "JSONL: {\"logp\", \"n_tokens\", \"token_logps\"} per line, same order")
    ("max-batch-tokens", po::value(&max_tokens)->default_value(8192), "tokens per packed forward");
  po::variables_map vm;
  if (!parse_args("score", "metapo score --model DIR --input IN.jsonl --output OUT.jsonl", desc, argc,
                  argv, vm, ctx))
    return 0;
  MP_CHECK(max_tokens > 0, "--max-batch-tokens must be positive");
  const HfModel hf = load_hf_model(model_dir);
  const std::vector<ScoreInput> seqs = read_score_input(input, hf.config.vocab_size);
  LlamaModel<float> model(hf.config);

  // This rank's lines, packed greedily into forwards.
  std::ostringstream mine;
  std::vector<size_t> todo;
  for (size_t i = size_t(ctx.topo.world_rank); i < seqs.size(); i += size_t(ctx.topo.world_size)) todo.push_back(i);
  for (size_t a = 0; a < todo.size();) {
    PackedBatch b;
    size_t z = a;
    while (z < todo.size() && (z == a || b.n_tokens() + int64_t(seqs[todo[z]].tokens.size()) <= max_tokens))
      b.add(seqs[todo[z++]].tokens);
    const std::vector<int32_t> targets = next_token_targets(b, nullptr);
    std::vector<float> logp(size_t(b.n_tokens()));
    model.forward(hf.params.data(), b, targets.data(), logp.data());
    for (size_t k = a; k < z; ++k) {
      const ScoreInput& s = seqs[todo[k]];
      const int64_t off = b.cu_seqlens[k - a];
      nlohmann::json j;
      std::vector<double> tl;
      double sum = 0;
      int64_t count = 0;
      // Row t predicts token t+1: token_logps[t-1] = log p(tokens[t] | tokens[<t]) = logp[row t-1].
      for (size_t t = 1; t < s.tokens.size(); ++t) {
        const double v = double(logp[size_t(off) + t - 1]);
        tl.push_back(v);
        if (s.mask.empty() || s.mask[t]) sum += v, ++count;
      }
      j["logp"] = sum;
      j["n_tokens"] = count;
      j["token_logps"] = tl;
      mine << j.dump() << "\n";
    }
    a = z;
  }

  const std::vector<std::string> parts = gather_to_root(mine.str(), ctx.topo);
  if (ctx.topo.is_root()) {
    std::vector<std::istringstream> streams;
    for (const std::string& p : parts) streams.emplace_back(p);
    std::string out, line;
    for (size_t i = 0; i < seqs.size(); ++i) {
      std::getline(streams[i % parts.size()], line);
      out += line + "\n";
    }
    write_file_atomic(output, out);
    std::cerr << "scored " << seqs.size() << " sequences -> " << output << "\n";
  }
  return 0;
}

}  // namespace metapo::cli
