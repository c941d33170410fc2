// RUN/run.json and RUN/metapo.json: one writer and one typed reader each (run_files.h).
#include "metapo/train/run_files.h"

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "metapo/core/error.h"
#include "metapo/io/checkpoint.h"

namespace metapo {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr int64_t F = kNumFeatures;

json read_json_file(const std::string& path) {
  std::ifstream in(path);
  MP_CHECK(in, path, ": cannot open");
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    fail(path, ": not valid JSON (", e.what(), ")");
  }
}

const json& need(const json& obj, const char* key, const std::string& path, const std::string& where) {
  MP_CHECK(obj.is_object(), path, ": ", where.empty() ? "the file" : where, " is not a JSON object");
  MP_CHECK(obj.contains(key), path, ": missing field ", where.empty() ? "" : where + ".", key);
  return obj.at(key);
}

double need_number(const json& obj, const char* key, const std::string& path, const std::string& where) {
  const json& v = need(obj, key, path, where);
  MP_CHECK(v.is_number() && std::isfinite(v.get<double>()), path, ": ", where.empty() ? "" : where + ".", key,
           " is not a finite number (", v.dump(), ")");
  return v.get<double>();
}

int64_t need_int(const json& obj, const char* key, const std::string& path, const std::string& where) {
  const json& v = need(obj, key, path, where);
  MP_CHECK(v.is_number_integer(), path, ": ", where.empty() ? "" : where + ".", key, " is not an integer (",
           v.dump(), ")");
  return v.get<int64_t>();
}

std::vector<double> need_doubles(const json& obj, const char* key, const std::string& path,
                                 const std::string& where) {
  const json& v = need(obj, key, path, where);
  const std::string name = where.empty() ? key : where + "." + key;
  MP_CHECK(v.is_array(), path, ": ", name, " is not an array");
  std::vector<double> out;
  out.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    // A NaN written by the trainer comes back as null: reject it here, with its position.
    MP_CHECK(v[i].is_number() && std::isfinite(v[i].get<double>()), path, ": ", name, "[", i,
             "] is not a finite number (", v[i].dump(), ")");
    out.push_back(v[i].get<double>());
  }
  return out;
}

template <size_t N>
void need_names(const json& obj, const char* key, const std::array<const char*, N>& want, const std::string& path,
                const std::string& where) {
  const json& v = need(obj, key, path, where);
  const std::string name = where.empty() ? key : where + "." + key;
  std::vector<std::string> expected(want.begin(), want.end());
  std::string exp_list;
  for (const std::string& s : expected) exp_list += (exp_list.empty() ? "" : ", ") + s;
  MP_CHECK(v.is_array() && v.size() == N, path, ": ", name, " is ", v.dump(), ", expected [", exp_list,
           "] (written by another metapo version?)");
  for (size_t i = 0; i < N; ++i)
    MP_CHECK(v[i].is_string() && v[i].get<std::string>() == expected[i], path, ": ", name, "[", i, "] is ",
             v[i].dump(), ", expected \"", expected[i], "\" (written by another metapo version?)");
}

json memory_json(const RankMemory& m) {
  json j;
  j["params"] = int64_t(m.params), j["grads"] = int64_t(m.grads), j["optimizer_state"] = int64_t(m.optimizer_state);
  if (m.activations >= 0) j["activations"] = int64_t(m.activations); else j["activations"] = nullptr;
  return j;
}

RankMemory parse_memory(const json& j, const std::string& path, const std::string& where) {
  RankMemory m;
  m.params = double(need_int(j, "params", path, where));
  m.grads = double(need_int(j, "grads", path, where));
  m.optimizer_state = double(need_int(j, "optimizer_state", path, where));
  const json& a = need(j, "activations", path, where);
  MP_CHECK(a.is_null() || a.is_number_integer(), path, ": ", where, ".activations is ", a.dump(),
           ", expected an integer or null");
  m.activations = a.is_null() ? -1.0 : double(a.get<int64_t>());
  return m;
}

json peak_json(const RankPeak& p) {
  json j;
  j["rank"] = p.rank, j["dp"] = p.dp, j["pp"] = p.pp, j["tp"] = p.tp;
  for (int k = 0; k < kNumMem; ++k) j[mem_name(Mem(k))] = p.bytes[size_t(k)];
  j["total"] = p.total;
  return j;
}

RankPeak parse_peak(const json& j, const std::string& path, const std::string& where) {
  RankPeak p;
  p.rank = need_int(j, "rank", path, where), p.dp = need_int(j, "dp", path, where);
  p.pp = need_int(j, "pp", path, where), p.tp = need_int(j, "tp", path, where);
  for (int k = 0; k < kNumMem; ++k) p.bytes[size_t(k)] = need_int(j, mem_name(Mem(k)), path, where);
  p.total = need_int(j, "total", path, where);
  return p;
}

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : fallback;
}

int64_t env_int(const char* name) {
  const std::string v = env_or(name, "");
  char* end = nullptr;
  const long long x = v.empty() ? 0 : std::strtoll(v.c_str(), &end, 10);
  return end && *end == '\0' ? int64_t(x) : 0;
}

}  // namespace

// ---- RUN/run.json ---------------------------------------------------------------------------------

std::optional<SlurmJob> SlurmJob::from_env() {
  if (env_or("SLURM_JOB_ID", "").empty()) return std::nullopt;
  SlurmJob s;
  s.job_id = env_or("SLURM_JOB_ID", ""), s.job_name = env_or("SLURM_JOB_NAME", "");
  s.node_list = env_or("SLURM_JOB_NODELIST", env_or("SLURM_NODELIST", ""));
  s.restart_count = env_int("SLURM_RESTART_COUNT");
  s.nodes = env_int("SLURM_JOB_NUM_NODES"), s.ntasks = env_int("SLURM_NTASKS");
  return s;
}

json to_json(const SlurmJob& s) {
  return {{"job_id", s.job_id}, {"job_name", s.job_name}, {"node_list", s.node_list}, {"restart_count", s.restart_count},
          {"nodes", s.nodes}, {"ntasks", s.ntasks}};
}

json to_json(const RunRecord& r) {
  json j = r.options.is_object() ? r.options : json::object();
  j["command"] = r.command, j["command_line"] = r.command_line;
  if (r.parallel) {
    json p;
    p["world"] = r.parallel->world, p["dp"] = r.parallel->dp, p["tp"] = r.parallel->tp, p["pp"] = r.parallel->pp;
    p["stage_layers"] = json::array();
    for (const auto& [b, e] : r.parallel->stage_layers) p["stage_layers"].push_back({b, e});
    j["parallel"] = p;
  }
  if (r.memory) j["memory_bytes"] = memory_json(*r.memory);
  for (const RankMemory& m : r.memory_per_stage) j["memory_bytes_per_stage"].push_back(memory_json(m));
  for (const RankPeak& m : r.memory_peak) j["memory_peak_bytes_per_rank"].push_back(peak_json(m));
  j["restarts"] = r.restarts;
  if (r.slurm) j["slurm"] = to_json(*r.slurm);
  return j;
}

RunRecord parse_run_record(const json& j, const std::string& path) {
  MP_CHECK(j.is_object(), path, ": not a JSON object");
  RunRecord r;
  const json& c = need(j, "command", path, "");
  MP_CHECK(c.is_string() && (c == "train" || c == "sft"), path, ": command is ", c.dump(), ", expected \"train\" or \"sft\"");
  r.command = c.get<std::string>();
  if (j.contains("command_line")) {
    MP_CHECK(j["command_line"].is_string(), path, ": command_line is not a string");
    r.command_line = j["command_line"].get<std::string>();
  }
  if (j.contains("parallel")) {
    const json& p = j["parallel"];
    RunLayout l;
    l.world = need_int(p, "world", path, "parallel"), l.dp = need_int(p, "dp", path, "parallel");
    l.tp = need_int(p, "tp", path, "parallel"), l.pp = need_int(p, "pp", path, "parallel");
    MP_CHECK(l.dp >= 1 && l.tp >= 1 && l.pp >= 1 && l.world == l.dp * l.tp * l.pp, path, ": parallel is ", p.dump(),
             ", expected world = dp * tp * pp >= 1");
    const json& st = need(p, "stage_layers", path, "parallel");
    MP_CHECK(st.is_array() && int64_t(st.size()) == l.pp, path, ": parallel.stage_layers has ", st.dump(),
             ", expected ", l.pp, " [first, end) pairs");
    for (const json& s : st) {
      MP_CHECK(s.is_array() && s.size() == 2 && s[0].is_number_integer() && s[1].is_number_integer() && s[0] <= s[1],
               path, ": parallel.stage_layers entry ", s.dump(), " is not a [first, end) pair");
      l.stage_layers.emplace_back(s[0].get<int64_t>(), s[1].get<int64_t>());
    }
    r.parallel = l;
  }
  if (j.contains("memory_bytes")) r.memory = parse_memory(j["memory_bytes"], path, "memory_bytes");
  if (j.contains("memory_bytes_per_stage")) {
    const json& ms = j["memory_bytes_per_stage"];
    MP_CHECK(ms.is_array(), path, ": memory_bytes_per_stage is not an array");
    for (size_t s = 0; s < ms.size(); ++s)
      r.memory_per_stage.push_back(parse_memory(ms[s], path, str_cat("memory_bytes_per_stage[", s, "]")));
  }
  if (j.contains("memory_peak_bytes_per_rank")) {
    const json& ms = j["memory_peak_bytes_per_rank"];
    MP_CHECK(ms.is_array(), path, ": memory_peak_bytes_per_rank is not an array");
    for (size_t s = 0; s < ms.size(); ++s)
      r.memory_peak.push_back(parse_peak(ms[s], path, str_cat("memory_peak_bytes_per_rank[", s, "]")));
  }
  if (j.contains("restarts")) {
    r.restarts = need_int(j, "restarts", path, "");
    MP_CHECK(r.restarts >= 0, path, ": restarts is ", r.restarts, ", expected >= 0");
  }
  if (j.contains("slurm")) {
    const json& sj = j["slurm"];
    SlurmJob sl;
    for (auto [key, field] : {std::pair{"job_id", &sl.job_id}, {"job_name", &sl.job_name}, {"node_list", &sl.node_list}}) {
      const json& v = need(sj, key, path, "slurm");
      MP_CHECK(v.is_string(), path, ": slurm.", key, " is not a string");
      *field = v.get<std::string>();
    }
    sl.restart_count = need_int(sj, "restart_count", path, "slurm");
    sl.nodes = need_int(sj, "nodes", path, "slurm"), sl.ntasks = need_int(sj, "ntasks", path, "slurm");
    r.slurm = sl;
  }
  r.options = j;
  for (const char* k : {"command", "command_line", "parallel", "memory_bytes", "memory_bytes_per_stage", "memory_peak_bytes_per_rank", "restarts", "slurm"})
    r.options.erase(k);
  return r;
}

RunRecord read_run_record(const std::string& path) {
  MP_CHECK(fs::exists(path), path, " not found (not a metapo run directory?)");
  return parse_run_record(read_json_file(path), path);
}

void write_run_record(const std::string& dir, const RunRecord& r) {
  fs::create_directories(dir);
  write_file_atomic(dir, "run.json", to_json(r).dump(2) + "\n");
}

LossConfig RunRecord::loss(const std::string& path, std::vector<std::string>* notes) const {
  MP_CHECK(command == "train", path, ": a run of `metapo ", command, "`, which has no preference loss");
  const json& j = options;
  const json& name = need(j, "loss", path, "");
  MP_CHECK(name.is_string(), path, ": loss is ", name.dump(), ", expected a loss name");
  LossConfig lc;
  try {
    lc.type = parse_loss(name.get<std::string>());
  } catch (const Error& e) {
    fail(path, ": ", e.what());
  }
  lc.beta = need_number(j, "beta", path, "");
  if (j.contains("label_smoothing")) lc.label_smoothing = need_number(j, "label_smoothing", path, "");
  // Older run.json files do not record these two; say so where the loss reads them.
  if (j.contains("simpo_gamma")) {
    lc.simpo_gamma = need_number(j, "simpo_gamma", path, "");
  } else if (lc.type == LossType::Simpo && notes) {
    notes->push_back(str_cat(path, " does not record simpo_gamma; using the default ", lc.simpo_gamma));
  }
  if (j.contains("discopop_tau")) {
    lc.discopop_tau = need_number(j, "discopop_tau", path, "");
  } else if (lc.type == LossType::Discopop && notes) {
    notes->push_back(str_cat(path, " does not record discopop_tau; using the default ", lc.discopop_tau));
  }
  try {
    validate(lc);
  } catch (const Error& e) {
    fail(path, ": ", e.what());
  }
  return lc;
}


// ---- RUN/metapo.json ------------------------------------------------------------------------------

WeightNet MetaRun::make_net() const {
  WeightNet net(this->net);  // the initialization is overwritten by the stored φ
  net.params() = params;
  return net;
}

FeatureStandardizer MetaRun::make_standardizer() const {
  FeatureStandardizer s;
  s.load_state(standardizer);
  return s;
}

std::vector<PairStatRow> MetaRun::rows_of(const std::vector<int64_t>& sample_ids) const {
  std::vector<PairStatRow> rows(sample_ids.size());
  for (size_t k = 0; k < sample_ids.size(); ++k) {
    const int64_t id = sample_ids[k];
    if (id < 0 || id >= stat_rows) continue;  // never trained on: unseen row
    const double* r = &pair_stats[size_t(id) * kPairStatFields];
    // The field order of kPairStatFieldNames, which parse_meta_run has checked against the file.
    rows[k] = PairStatRow{r[0], r[1], r[2], r[3], r[4], r[5], r[6]};
  }
  return rows;
}

MetaRun parse_meta_run(const json& j, const std::string& path) {
  MP_CHECK(j.is_object(), path, ": not a JSON object");
  const json& format = need(j, "format", path, "");
  MP_CHECK(format.is_string() && format.get<std::string>() == kMetaRunFormat, path, ": format is ", format.dump(),
           ", expected \"", kMetaRunFormat, "\"");
  const int64_t version = need_int(j, "format_version", path, "");
  MP_CHECK(version == kMetaRunFormatVersion, path, ": format_version ", version, " is not supported (this build reads ",
           kMetaRunFormatVersion, ")");

  MetaRun run;
  const json& net = need(j, "net", path, "");
  run.net.n_features = need_int(net, "n_features", path, "net");
  MP_CHECK(run.net.n_features == F, path, ": net.n_features is ", run.net.n_features, ", this build has ", F,
           " features");
  run.net.hidden = need_int(net, "hidden", path, "net");
  MP_CHECK(run.net.hidden >= 1, path, ": net.hidden is ", run.net.hidden, ", expected >= 1");
  run.net.a_min = need_number(net, "a_min", path, "net");
  MP_CHECK(run.net.a_min >= 0 && run.net.a_min < 1, path, ": net.a_min is ", run.net.a_min, ", expected [0, 1)");
  run.params = need_doubles(net, "params", path, "net");
  const int64_t n_params = weight_net_layout(F, run.net.hidden).total;
  MP_CHECK(int64_t(run.params.size()) == n_params, path, ": net.params has ", run.params.size(),
           " values, expected ", n_params, " for ", F, " features and hidden width ", run.net.hidden);
  need_names(j, "features", kFeatureNames, path, "");
  if (j.contains("features_used")) {
    MP_CHECK(j["features_used"].is_string(), path, ": features_used must be a string");
    run.features_used = j["features_used"].get<std::string>();
    const std::string& f = run.features_used;
    MP_CHECK(f == "all" || f == "temporal" || f == "instantaneous", path, ": features_used \"", f,
             "\" is unknown (valid: all, temporal, instantaneous)");
  }

  run.standardizer = need_doubles(j, "standardizer", path, "");
  MP_CHECK(int64_t(run.standardizer.size()) == 3 * F, path, ": standardizer has ", run.standardizer.size(),
           " values, expected ", 3 * F, " (count, sum and sum of squares of ", F, " features)");
  try {
    run.make_standardizer();  // its own range checks
  } catch (const Error& e) {
    fail(path, ": standardizer: ", e.what());
  }

  const json& ps = need(j, "pair_stats", path, "");
  need_names(ps, "fields", kPairStatFieldNames, path, "pair_stats");
  run.stat_rows = need_int(ps, "rows", path, "pair_stats");
  MP_CHECK(run.stat_rows >= 0, path, ": pair_stats.rows is ", run.stat_rows, ", expected >= 0");
  run.pair_stats = need_doubles(ps, "data", path, "pair_stats");
  MP_CHECK(int64_t(run.pair_stats.size()) == run.stat_rows * kPairStatFields, path, ": pair_stats.data has ",
           run.pair_stats.size(), " values, expected rows*fields = ", run.stat_rows, "*", kPairStatFields);
  for (int64_t r = 0; r < run.stat_rows; ++r) {
    const double n = run.pair_stats[size_t(r * kPairStatFields)];
    MP_CHECK(n >= 0 && n == std::floor(n), path, ": pair_stats row ", r, " has observation count n = ", n,
             ", expected a non-negative integer");
  }
  return run;
}

MetaRun read_meta_run(const std::string& path) {
  MP_CHECK(fs::exists(path), path, " not found: only `metapo train --weighting metapo` writes it, at the end "
           "of training (was this run trained with another weighting, or did it not finish?)");
  return parse_meta_run(read_json_file(path), path);
}

json to_json(const MetaRun& run) {
  json j;
  j["format"] = kMetaRunFormat, j["format_version"] = kMetaRunFormatVersion;
  j["net"]["hidden"] = run.net.hidden, j["net"]["a_min"] = run.net.a_min;
  j["net"]["n_features"] = run.net.n_features, j["net"]["params"] = run.params;
  j["features_used"] = run.features_used;
  j["features"] = std::vector<std::string>(kFeatureNames.begin(), kFeatureNames.end());
  j["standardizer"] = run.standardizer;
  j["pair_stats"]["fields"] = std::vector<std::string>(kPairStatFieldNames.begin(), kPairStatFieldNames.end());
  j["pair_stats"]["rows"] = run.stat_rows;
  j["pair_stats"]["data"] = run.pair_stats;
  return j;
}

void write_meta_run(const std::string& dir, const MetaRun& run) {
  write_file_atomic(dir, "metapo.json", to_json(run).dump() + "\n");
}

}  // namespace metapo
