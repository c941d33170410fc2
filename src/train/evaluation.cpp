// Evaluation over a split, reference log-probs and the margin trajectories of tracked pairs.
#include "metapo/train/evaluation.h"

#include <fstream>

#include <nlohmann/json.hpp>

#include "metapo/core/error.h"
#include "metapo/io/checkpoint.h"
#include "metapo/io/hf_model.h"
#include "metapo/train/sharded_model.h"

namespace metapo {

// Up to k pairs of each group (clean/easy, clean/hard, flipped; or just the first 3k pairs when the
// split has no quality), in index order: deterministic.
std::vector<int64_t> tracked_pairs(const PairSplit& s, int64_t k) {
  std::vector<int64_t> out;
  if (k <= 0) return out;
  if (s.quality.empty()) {
    for (int64_t i = 0; i < std::min<int64_t>(3 * k, s.size()); ++i) out.push_back(i);
    return out;
  }
  auto diff = s.columns.find("difficulty");
  int64_t counts[3] = {0, 0, 0};
  for (int64_t i = 0; i < s.size(); ++i) {
    const bool clean = s.quality[size_t(i)] >= 0.5f;
    const bool hard = diff != s.columns.end() && diff->second[size_t(i)] >= 0.5f;
    const int g = clean ? (hard ? 1 : 0) : 2;
    if (counts[g] < k) out.push_back(i), ++counts[g];
  }
  return out;
}

void write_trajectories(LlamaModel<float>& model, Comm* pp, const float* params, const PairSplit& s,
                        const std::vector<int64_t>& idx, const LossConfig& loss, int64_t step, const MicroBatching& mb,
                        const Topology& topo, const std::string& path) {
  std::vector<double> c, r;
  pair_logps(model, pp, params, s, idx, mb, topo.dp_comm(), c, r);
  if (!topo.is_root()) return;
  nlohmann::json j;
  j["step"] = step;
  auto diff = s.columns.find("difficulty");
  for (size_t k = 0; k < idx.size(); ++k) {
    const int64_t i = idx[k];
    const PairLogps p{c[k], r[k], s.ref_logp_chosen[size_t(i)], s.ref_logp_rejected[size_t(i)], s.chosen.len(i),
                      s.rejected.len(i)};
    nlohmann::json e;
    e["sample_id"] = s.sample_id[size_t(i)], e["margin"] = pair_loss(loss, p).margin;
    if (!s.quality.empty()) e["quality"] = s.quality[size_t(i)];
    if (diff != s.columns.end()) e["difficulty"] = diff->second[size_t(i)];
    j["pairs"].push_back(e);
  }
  append_whole(path, j.dump() + "\n");
}

PairStats evaluate_pairs(LlamaModel<float>& model, Comm* pp, const float* params, const PairSplit& s,
                         const LossConfig& loss, const MicroBatching& mb, int64_t limit, Comm& comm) {
  MP_CHECK(s.has_ref(), "evaluation needs reference log-probs (run metapo precompute-ref)");
  const int64_t n = limit > 0 ? std::min(limit, s.size()) : s.size();
  std::vector<int64_t> idx(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) idx[size_t(i)] = i;
  std::vector<double> c, r;
  pair_logps(model, pp, params, s, idx, mb, comm, c, r);
  PairStats st;
  for (int64_t i = 0; i < n; ++i) {
    const PairLogps p = pair_input(s, i, c[size_t(i)], r[size_t(i)]);
    st.add(loss, p, pair_loss(loss, p), 1.0);
  }
  return st;
}

void ensure_ref_logps(PairSplit& s, const std::string& split_name, const std::string& ref_dir,
                      const MicroBatching& mb, const Topology& topo, const std::vector<int64_t>& pp_layers,
                      const std::vector<int64_t>& stale, Device device) {
  if (s.has_ref() && stale.empty()) return;
  std::vector<int64_t> idx = stale;
  if (!s.has_ref()) {
    idx.resize(size_t(s.size()));
    for (int64_t i = 0; i < s.size(); ++i) idx[size_t(i)] = i;
  }
  if (topo.is_root()) {
    if (s.has_ref())
      std::printf("%s: %lld pairs cut after their reference log-probs were computed; computing theirs again with %s\n",
                  split_name.c_str(), (long long)idx.size(), ref_dir.c_str());
    else
      std::printf("%s: no reference log-probs in the dataset; computing them with %s\n", split_name.c_str(), ref_dir.c_str());
    std::fflush(stdout);
  }
  // This rank's shard only: the reference never becomes a second full copy beside the policy.
  ShardedModel sm = load_sharded_model(ref_dir, topo, pp_layers);
  place_on_device(sm, device);
  // Over DP: the TP ranks of a replica score the same pairs together.
  std::vector<double> c, r;
  pair_logps(*sm.model, sm.pp.get(), sm.model_params(), s, idx, mb, topo.dp_comm(), c, r);
  s.ref_logp_chosen.resize(size_t(s.size())), s.ref_logp_rejected.resize(size_t(s.size()));
  for (size_t k = 0; k < idx.size(); ++k) s.ref_logp_chosen[size_t(idx[k])] = c[k], s.ref_logp_rejected[size_t(idx[k])] = r[k];
}

}  // namespace metapo
