// metapo score: per-token log-probs of given token sequences, so users can check metapo against any
// other implementation. Sequences are packed (no padding) into forwards of at most
// --max-batch-tokens tokens; a longer one is scored in a forward of its own. The world is DP x PP x TP (--tp, --pp as eval takes them): line i is
// scored by data-parallel replica i mod DP, through its sharded model (the pipeline forward of eval
// and precompute-ref); with --tp 1 --pp 1 that is rank i mod world, packed as on one replica.

#include <fstream>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "metapo/cli/commands.h"
#include "metapo/core/error.h"
#include "metapo/io/hf_model.h"
#include "metapo/model/llama.h"
#include "metapo/train/pipeline.h"
#include "metapo/train/sharded_model.h"

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
        MP_CHECK(v.is_boolean() || (v.is_number_integer() && (v.get<int64_t>() == 0 || v.get<int64_t>() == 1)), where,
                 "\"loss_mask\" values must be 0 or 1 (got ", v.dump(), ")");
        s.mask.push_back(uint8_t(v.is_boolean() ? v.get<bool>() : v.get<int64_t>() == 1));
      }
    }
    out.push_back(std::move(s));
  });
  return out;
}

// One score line: row t of the sequence's logp predicts token t+1, so token_logps[t-1] =
// log p(tokens[t] | tokens[<t]) = logp[t-1].
std::string score_line(const ScoreInput& s, const float* logp) {
  nlohmann::json j;
  std::vector<double> tl;
  double sum = 0;
  int64_t count = 0;
  for (size_t t = 1; t < s.tokens.size(); ++t) {
    const double v = double(logp[t - 1]);
    tl.push_back(v);
    if (s.mask.empty() || s.mask[t]) sum += v, ++count;
  }
  j["logp"] = sum;
  j["n_tokens"] = count;
  j["token_logps"] = tl;
  return j.dump();
}

}  // namespace

int cmd_score(Context& ctx, int argc, char** argv) {
  po::options_description desc("metapo score options");
  std::string model_dir, input, output, device;
  int64_t max_tokens = 0;
  desc.add_options()
    ("model", po::value(&model_dir)->required(), "model directory (Hugging Face layout)")
    ("input", po::value(&input)->required(), "JSONL: {\"tokens\": [ids], \"loss_mask\": [0/1 per token]} per line")
    ("output", po::value(&output)->required(), "JSONL: {\"logp\", \"n_tokens\", \"token_logps\"} per line, same order")
    ("max-batch-tokens", po::value(&max_tokens)->default_value(8192), "tokens per packed forward (a longer sequence gets a forward of its own)");
  ParallelOptions par;
  add_parallel_options(desc, par);
  add_device_option(desc, device);
  po::variables_map vm;
  if (!parse_args("score", "[mpirun -np N] metapo score [--tp T] [--pp P] --model DIR --input IN.jsonl --output OUT.jsonl",
                  desc, argc, argv, vm, ctx))
    return 0;
  MP_CHECK(max_tokens > 0, "--max-batch-tokens must be positive");
  check_input_file(input, "--input");
  check_output_file(output, "--output", {input, model_dir}, score_output());
  if (ctx.topo.is_root()) check_dir_writable(output, "--output");
  apply_parallel_options(ctx, par);
  const Device dev = check_device_option(device, par, ctx.topo.local_rank);
  const Topology& topo = ctx.topo;
  const HfModelReader reader(model_dir);
  const std::vector<ScoreInput> seqs = read_score_input(input, reader.config().vocab_size);
  ShardedModel sm = load_sharded_model(reader, topo, par.pp_layers);
  place_on_device(sm, dev);

  // This replica's lines, packed greedily into forwards (micro-batches of the pipeline).
  std::vector<size_t> todo;
  for (size_t i = size_t(topo.dp_rank); i < seqs.size(); i += size_t(topo.dp)) todo.push_back(i);
  std::vector<PipeMicro> mbs;
  std::vector<size_t> first;  // index in todo of each micro-batch's first line
  for (size_t a = 0; a < todo.size();) {
    PipeMicro mb;
    first.push_back(a);
    while (a < todo.size() && (a == first.back() || mb.batch.n_tokens() + int64_t(seqs[todo[a]].tokens.size()) <= max_tokens))
      mb.batch.add(seqs[todo[a++]].tokens);
    mb.targets = next_token_targets(mb.batch, nullptr);
    mbs.push_back(std::move(mb));
  }
  // The last stage has the log-probs, identical on its TP ranks: TP rank 0 there writes the lines.
  const bool writer = topo.last_stage() && topo.tp_rank == 0;
  std::ostringstream mine;
  pipeline_forward(*sm.model, sm.pp.get(), sm.model_params(), mbs, [&](size_t m, const std::vector<float>& logp) {
    if (!writer) return;
    const PackedBatch& b = mbs[m].batch;
    for (int64_t k = 0; k < b.n_seqs(); ++k)
      mine << score_line(seqs[todo[first[m] + size_t(k)]], logp.data() + b.cu_seqlens[size_t(k)]) << "\n";
  });

  const std::vector<std::string> parts = gather_to_root(mine.str(), topo);
  if (topo.is_root()) {
    std::vector<std::istringstream> streams;
    for (const std::string& p : parts) streams.emplace_back(p);
    std::string out, line;
    for (size_t i = 0; i < seqs.size(); ++i) {
      // Replica d's writer is world rank (d * pp + pp - 1) * tp (rank = (dp * pp + pp_rank) * tp + tp_rank).
      const size_t d = i % size_t(topo.dp);
      std::getline(streams[(d * size_t(topo.pp) + size_t(topo.pp - 1)) * size_t(topo.tp)], line);
      out += line + "\n";
    }
    write_file_atomic(output, out);
    std::cerr << "scored " << seqs.size() << " sequences -> " << output << "\n";
  }
  return 0;
}

}  // namespace metapo::cli
