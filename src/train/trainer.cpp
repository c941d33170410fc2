// The trainer loops of metapo train and metapo sft.
#include "metapo/train/dpo.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cerrno>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>

#include <nlohmann/json.hpp>

#include "metapo/comm/mpi_session.h"
#include "metapo/core/buffer.h"
#include "metapo/core/error.h"
#include "metapo/core/hash.h"
#include "metapo/core/memory.h"
#include "metapo/core/progress.h"
#include "metapo/core/timer.h"
#include "metapo/io/checkpoint.h"
#include "metapo/io/dataset_h5.h"
#include "metapo/io/hf_model.h"
#include "metapo/meta/features.h"
#include "metapo/model/tp_layout.h"
#include "metapo/train/run_files.h"
#include "metapo/train/metapo.h"
#include "metapo/train/metrics.h"
#include "metapo/train/pairs.h"
#include "metapo/train/pipeline.h"
#include "metapo/train/reports.h"
#include "metapo/train/train_state.h"
#include "metapo/train/watchdog.h"

namespace fs = std::filesystem;

namespace metapo {

namespace {

void check_compatible(const LlamaConfig& c, const DatasetInfo& info, const std::string& data) {
  MP_CHECK(info.vocab_size <= c.vocab_size, data, ": vocab_size ", info.vocab_size,
           " is larger than the model's vocab_size ", c.vocab_size, " (wrong tokenizer for this model?)");
}

int64_t total_steps(const TrainConfig& cfg, int64_t n) {
  MP_CHECK(cfg.batch_size <= n, "--batch-size ", cfg.batch_size, " is larger than the training split (", n,
           " examples)");
  return cfg.max_steps > 0 ? cfg.max_steps : cfg.epochs * (n / cfg.batch_size);
}

void check_batching(const TrainConfig& cfg, const Topology& topo) {
  MP_CHECK(cfg.batch_size > 0 && cfg.micro_batch > 0, "--batch-size and --micro-batch must be positive");
  MP_CHECK(cfg.batch_size % topo.dp == 0, "--batch-size ", cfg.batch_size,
           " is not divisible by the number of data-parallel ranks (", topo.dp, ")");
}

// --max-length and --max-prompt-length on a split just read: the pairs they cut, counted on the root.
std::vector<int64_t> truncate_split(PairSplit& s, const TrainConfig& cfg, const std::string& split, const Topology& topo) {
  const std::vector<int64_t> cut = truncate_pairs(s, cfg.truncation, str_cat(cfg.data_path, ": /", split));
  if (!cut.empty() && topo.is_root())
    std::printf("%s: %lld of %lld pairs cut by %s\n", split.c_str(), (long long)cut.size(), (long long)s.size(),
                cfg.truncation.describe().c_str());
  check_token_budget(s.size(), [&](int64_t i) { return pair_tokens(s, i); }, s.sample_id, cfg.micro(),
                     str_cat(cfg.data_path, ": /", split));
  return cut;
}

// MetaPO's pair table has a row per sample id up to the largest (row = id, so that the statistics of a
// pair keep their place across resumes and layouts), gathered whole and written as JSON
// (metapo.json) at the run's end: refused before any heavy work when that cannot fit, and said when
// the ids are sparse enough to make it much larger than the split.
void check_pair_table(const PairSplit& train, const TrainConfig& cfg, const Topology& topo) {
  int64_t max_id = 0;
  for (int64_t id : train.sample_id) max_id = std::max(max_id, id);
  const double rows = double(max_id) + 1.0;
  // Per row at the end: the owners' rows and the gathered copy (7 doubles each), then metapo.json's
  // JSON tree and text (measured about 470 bytes a row).
  constexpr double kBytesPerRow = 512;
  check_fits_memory(rows * kBytesPerRow,
                    str_cat("--weighting metapo: ", cfg.data_path, ": /", cfg.train_split, " has sample ids up to ", max_id,
                            "; the pair table (a row per id, ", int64_t(rows), " rows, for ", train.size(),
                            " pairs) at the run's end"));
  if (rows > 16.0 * double(train.size()) && rows * kBytesPerRow > double(1 << 30) && topo.is_root())
    std::printf("note: %s: /%s has sample ids up to %lld for %lld pairs: MetaPO's pair table holds a row per id (%.1f GiB "
                "at the run's end); numbering the pairs densely (0..N-1) makes it smaller\n",
                cfg.data_path.c_str(), cfg.train_split.c_str(), (long long)max_id, (long long)train.size(),
                rows * kBytesPerRow / double(1ull << 30));
}

// The local parameter buffer's length with ZeRO-1's padding (ZeroAdamW::padded_size), known before
// the model is read so the buffer is allocated once.
size_t zero_padded_size(const LlamaConfig& c, const Topology& topo, const std::vector<int64_t>& pp_layers) {
  const PipeStage stage = pipeline_stages(c.num_hidden_layers, topo.pp, pp_layers)[size_t(topo.pp_rank)];
  const size_t local = ParamLayout(topo.tp > 1 ? tp_local_config(c, topo.tp) : c, stage).total();
  const size_t shard = (local + size_t(topo.dp) - 1) / size_t(topo.dp);
  return shard * size_t(topo.dp);
}

LrSchedule make_schedule(const TrainConfig& cfg, int64_t total) {
  LrSchedule s = cfg.sched;
  s.peak = cfg.adam.lr;
  s.total_steps = total;
  if (s.warmup_steps == 0 && cfg.warmup_ratio > 0) s.warmup_steps = int64_t(std::ceil(cfg.warmup_ratio * double(total)));
  return s;
}

// save_final's refusal of values a float16 final/ cannot hold: the trained state is still good, so
// the run checkpoints it before it stops (Run::save).
struct FinalRangeError : Error {
  using Error::Error;
};

// RUN/final from the shards of data-parallel replica 0: every rank of it writes its own runs into the
// model files (save_hf_model_parallel), so no rank assembles the whole model. params: this rank's
// shard, possibly with ZeRO-1 padding past the layout's end. Nothing is written when a value on any
// rank is not finite (every rank throws: no final/ from a diverged run) or, for a float16 final/,
// past float16's range (every rank throws FinalRangeError).
void save_final(const TrainConfig& cfg, const Topology& topo, const LlamaConfig& c, const ShardedModel& sm,
                const std::vector<float>& params) {
  int32_t ok = all_finite(params.data(), sm.model->layout().total());
  topo.world_comm().allreduce(&ok, 1, ReduceOp::Min);
  MP_CHECK(ok, cfg.out_dir, "/final: not written: the trained parameters hold non-finite values");
  std::vector<TpCopy> runs = sm.shard_map;
  if (!sm.mp)  // the whole model on this rank
    for (const TensorEntry& t : sm.model->layout().tensors()) runs.push_back({t.offset, t.offset, t.numel, false});
  const std::string dtype = resolve_save_dtype(cfg.save_dtype, c);
  {
    // Every rank learns of a value out of float16's range on any rank of replica 0 (whose parameters
    // final/ holds) before the save begins, with the line of the lowest rank that has one (its
    // tensor and value).
    const std::string range = topo.dp_rank == 0 ? f16_range_error(cfg.out_dir + "/final", ParamLayout(c), runs, params.data(), dtype) : "";
    const std::string first = first_error(topo.world_comm(), range);
    if (!first.empty()) throw FinalRangeError(first);
  }
  // final.partial and final.old in a run directory are the run's own (metapo writes only names it
  // chose there): left by a crashed save, also of a build that did not mark them, they go.
  if (topo.is_root()) {
    std::error_code ec;
    for (const char* side : {"/final.partial", "/final.old"}) fs::remove_all(cfg.out_dir + side, ec);
  }
  topo.world_comm().barrier();
  if (topo.dp_rank == 0)
    save_hf_model_parallel(cfg.out_dir + "/final", c, runs, topo.tp_rank == 0, params.data(), dtype, topo.mp_comm(),
                           kHfMaxShardBytes, cfg.model_dir);
  topo.world_comm().barrier();
}

// Every rank reads the data and its part of the model itself: node-local copies that are not the same
// (a stale one on one node) would train on a mix without any error. `mine` is this rank's fingerprint
// of `what`; they must all equal rank 0's, else one line on every rank names the first rank that differs.
void check_same_on_every_rank(const Topology& topo, const std::string& mine, const std::string& what) {
  if (topo.world_size == 1) return;
  const std::string root = broadcast_string(topo.world_comm(), mine, 0);
  int32_t first = root == mine ? std::numeric_limits<int32_t>::max() : int32_t(topo.world_rank);
  topo.world_comm().allreduce(&first, 1, ReduceOp::Min);
  MP_CHECK(first == std::numeric_limits<int32_t>::max(), what, ": rank ", first, " reads other contents than rank 0 (",
           "fingerprint ", first == topo.world_rank ? mine : std::string("differs"), " against ", root,
           "): every rank must see the same files (node-local copies that differ?)");
}

// What check_same_on_every_rank compares of a pair split: all of it, the stored reference log-probs,
// their model's fingerprint, the columns and the quality labels too (fingerprint(), which checkpoints
// record, covers the tokens and ids only).
std::string content_fingerprint(const PairSplit& s) {
  Fnv1a h;
  h.add_sized(fingerprint(s));
  h.add_sized(s.ref_logp_chosen), h.add_sized(s.ref_logp_rejected);
  h.add_sized(s.ref_model_fingerprint);
  h.add_sized(s.quality);
  for (const auto& [name, v] : s.columns) h.add_sized(name), h.add_sized(v);
  return h.hex();
}

// Stored reference log-probs are used as they are, so they must be the run's reference model's:
// precompute-ref records the model's fingerprint beside them, and a split whose fingerprint is not that
// of ref_dir (--ref-model, default --model) stops the run before any work, naming both models. Rank 0
// reads the fingerprint (a few MB of the model) and broadcasts it. Files without the attribute (older
// builds, other tools) are not checked.
void check_stored_reference(const TrainConfig& cfg, const Topology& topo, const std::string& ref_dir,
                            const std::string& policy_fingerprint,
                            const std::vector<std::pair<std::string, const PairSplit*>>& splits) {
  if (cfg.trust_stored_ref) return;
  int32_t any = 0;
  for (const auto& [name, s] : splits) any = any || (s && s->has_ref() && !s->ref_model_fingerprint.empty());
  topo.world_comm().allreduce(&any, 1, ReduceOp::Max);  // the ranks' data are the same (checked); one decision
  if (!any) return;
  std::string have;
  if (topo.is_root()) {
    try {
      have = ref_dir == cfg.model_dir ? policy_fingerprint : model_fingerprint(HfModelReader(ref_dir));
    } catch (const Error& e) {
      have = std::string("!") + e.what();
    }
  }
  have = broadcast_string(topo.world_comm(), have, 0);
  MP_CHECK(have.empty() || have[0] != '!', have.substr(std::min<size_t>(1, have.size())));
  for (const auto& [name, s] : splits) {
    if (!s || !s->has_ref() || s->ref_model_fingerprint.empty() || s->ref_model_fingerprint == have) continue;
    MP_CHECK(false, cfg.data_path, ": /", name, ": the reference log-probs were computed with another model (",
             s->ref_model.empty() ? std::string("unnamed") : s->ref_model, ", fingerprint ", s->ref_model_fingerprint,
             ") than this run's reference ", ref_dir, " (", cfg.ref_model_dir.empty() ? "--model" : "--ref-model",
             ", fingerprint ", have, "): name the model they came from with --ref-model, compute them again ",
             "(metapo precompute-ref --model ", ref_dir, " --data ", cfg.data_path,
             "; not in the middle of a run: it changes its reference), or use them as they are with --trust-stored-ref");
  }
}

// SIGUSR1 and SIGTERM ask the run to finish its step, checkpoint and exit kExitCheckpointed. The flag
// holds the signal's number; the ranks agree on it once per step (TrainRun::control).
volatile std::sig_atomic_t g_stop_signal = 0;
const Timer g_process_clock;  // --max-time counts from the start of the process
extern "C" void on_stop_signal(int sig) { g_stop_signal = sig; }

void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGUSR1, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

// The hang watchdog's end of the job: one line, then the job's abort from the watchdog's thread (the
// main thread is blocked in a collective that will not complete). Open MPI's abort does not go through
// the communicators the blocked thread holds; should it not return either, SIGALRM ends the process.
std::unique_ptr<HangWatchdog> make_watchdog(const TrainConfig& cfg, const Topology& topo, const std::string& kind) {
  char host[256] = "?";
  ::gethostname(host, sizeof host - 1);
  const std::string who = str_cat("rank ", topo.world_rank, " of ", topo.world_size, " (DP ", topo.dp_rank, ", PP ",
                                  topo.pp_rank, ", TP ", topo.tp_rank, ") on ", host, ", pid ", ::getpid());
  HangConfig hc;
  hc.timeout_s = cfg.hang_timeout_s;
  return std::make_unique<HangWatchdog>(hc, who, [kind](const std::string& message) {
    std::fprintf(stderr, "metapo %s: error: %s\n", kind.c_str(), message.c_str());
    std::fflush(stderr);
    ::alarm(60);
    abort_job(kExitHung);
  });
}

const char* stop_reason(int code) {
  return code == SIGUSR1 ? "SIGUSR1" : code == SIGTERM ? "SIGTERM" : code == 1 ? "--max-time" : "a signal";
}

// The size of the file's first `size` bytes cut after their last newline (0: none).
uintmax_t last_whole_line_end(const std::string& path, uintmax_t size) {
  std::ifstream in(path, std::ios::binary);
  uintmax_t end = size;
  char c = 0;
  while (end > 0) {
    in.seekg(std::streamoff(end - 1));
    if (!in.get(c) || c == '\n') break;
    --end;
  }
  return end;
}

// A run continued in place from step k (--resume RUN/step_k.h5 rolling back, or --resume auto past
// unreadable newer files): the run's checkpoints past k, and the final/ and metapo.json of a
// continuation that finished (with analyze's analysis.json and pair_weights.jsonl of them), belong
// to the abandoned continuation. They are moved, not deleted, into
// RUN/abandoned_r<restart>/, so that --keep does not delete the new checkpoints in their favour and
// --resume auto follows this continuation (not a final/ it did not write); `latest` names the
// checkpoint resumed from until the next one is written.
void set_aside_later_checkpoints(const std::string& out_dir, const std::string& loaded, int64_t step, int64_t restarts) {
  std::vector<std::string> later;
  for (const std::string& c : list_checkpoints(out_dir)) {
    if (checkpoint_step(c) > step) later.push_back(c);
  }
  std::reverse(later.begin(), later.end());  // oldest first
  std::error_code ec;
  for (const char* end : {"final", "metapo.json", "analysis.json", "pair_weights.jsonl"})  // of its end (and analyze's)
    if (fs::exists(fs::path(out_dir) / end, ec)) later.push_back((fs::path(out_dir) / end).string());
  if (later.empty()) return;
  fs::path dir = fs::path(out_dir) / str_cat("abandoned_r", restarts);
  for (int k = 2; fs::exists(dir, ec); ++k) dir = fs::path(out_dir) / str_cat("abandoned_r", restarts, "_", k);
  fs::create_directory(dir, ec);
  MP_CHECK(!ec, dir.string(), ": cannot make the directory for the checkpoints past step ", step, " (", ec.message(), ")");
  for (const std::string& c : later) {
    fs::rename(c, dir / fs::path(c).filename(), ec);
    MP_CHECK(!ec, c, ": cannot move it to ", dir.string(), " (", ec.message(), ")");
  }
  write_file_atomic(out_dir, "latest", fs::path(loaded).filename().string() + "\n");
  std::string names;
  for (const std::string& c : later) names += (names.empty() ? "" : ", ") + fs::path(c).filename().string();
  std::printf("resuming at step %lld: moved what the run wrote past it (%s) to %s\n", (long long)step, names.c_str(),
              dir.c_str());
  std::fflush(stdout);
}

constexpr const char* kRunLock = ".lock";  // RUN/.lock: see lock_run_dir

// While it lives, progress reports (core/progress.h: every chunk of pairs that pair_logps completes
// in an evaluation, the reference log-probs or the trajectories, and every piece of a model file
// read) count as progress for the hang watchdog: those passes may take far longer than a step, but
// never long without a report.
class ProgressTicks {
 public:
  explicit ProgressTicks(HangWatchdog& w) { set_progress_hook([&w] { w.progress(-1); }); }
  ~ProgressTicks() { set_progress_hook({}); }
  ProgressTicks(const ProgressTicks&) = delete;
  ProgressTicks& operator=(const ProgressTicks&) = delete;
};

// What --out and --resume say before anything heavy is done: decided by the world root (the
// directory is shared), agreed by every rank, so an error is the same line everywhere.
struct RunDirPlan {
  bool complete = false;                // --resume auto on a finished run: nothing to do
  bool in_place = false;                // continuing RUN's own files from one of its checkpoints
  std::vector<std::string> candidates;  // checkpoints to try in order
  bool fallback = false;                // --resume auto: an unreadable one is skipped
  bool fresh_dir = false;               // --out did not exist or was empty: all in it is this run's
  bool made_dir = false;                // --out did not exist
  int64_t restarts = 0;                 // run.json's restarts for this start (continuing RUN: one more)
};

// --meta-trace: a new file, or one in the run directory being continued, or the one its run.json
// names (a resume continues it); never another file of the run, and in a directory that exists or
// is --out (made by the run).
void check_trace_path(const TrainConfig& cfg, bool has_run) {
  const std::string& trace = cfg.meta.trace_path;
  if (cfg.weighting != Weighting::Metapo || trace.empty()) return;
  std::error_code ec;
  const fs::path p = fs::absolute(trace, ec).lexically_normal(), out = fs::absolute(cfg.out_dir, ec).lexically_normal();
  const fs::path dir = p.parent_path();
  const bool in_out = dir == out || (fs::exists(dir, ec) && fs::exists(out, ec) && fs::equivalent(dir, out, ec));
  MP_CHECK(fs::is_directory(dir, ec) || in_out, "--meta-trace ", trace, ": ", dir.string(), " is not a directory");
  const std::string name = p.filename().string();
  static const char* const kRunFiles[] = {"run.json", "metrics.jsonl", "trajectories.jsonl", "metapo.json",
                                          "pair_weights.jsonl", "analysis.json", "latest", "final", ".lock"};
  bool own = name.rfind("step_", 0) == 0;
  for (const char* f : kRunFiles) own = own || name == f;
  MP_CHECK(!in_out || !own, "--meta-trace ", trace, ": a file of the run itself (e.g. ", (out / "meta_trace.jsonl").string(),
           " instead)");
  if (!fs::exists(p, ec)) return;
  MP_CHECK(!fs::is_directory(p, ec), "--meta-trace ", trace, ": is a directory");
  // In a run directory every file but the user's own is the run's (a copied run directory keeps
  // its trace under another path than its run.json names).
  bool recorded = has_run && in_out;
  if (has_run && !recorded) {
    const RunRecord was = read_run_record(cfg.out_dir + "/run.json");
    const nlohmann::json& m = was.options.contains("meta") ? was.options["meta"] : nlohmann::json::object();
    if (m.contains("trace") && m["trace"].is_string() && !m["trace"].get<std::string>().empty())
      recorded = fs::equivalent(m["trace"].get<std::string>(), p, ec);
  }
  MP_CHECK(recorded, "--meta-trace ", trace, ": exists and is not this run's trace; metapo starts a trace only in a new "
           "file (remove it or choose another path)");
}

// say: print the notes (--resume auto starting afresh); off for the check before the lock.
RunDirPlan decide_run_dir(const TrainConfig& cfg, const std::string& kind, bool say) {
  const fs::path out(cfg.out_dir);
  std::error_code ec;
  const bool exists = fs::exists(out, ec);
  MP_CHECK(!exists || fs::is_directory(out, ec), "--out ", cfg.out_dir, ": exists and is not a directory");
  const bool has_run = exists && fs::exists(out / "run.json", ec);
  bool nonempty = false;  // anything but the lock file of a start (lock_run_dir)
  if (exists)
    for (const auto& e : fs::directory_iterator(out, ec)) nonempty = nonempty || e.path().filename() != kRunLock;
  // A run being started holds its lock file before it has run.json: the first look (say == false)
  // leaves that directory to the decision under the lock.
  const bool starting = !say && exists && fs::exists(out / kRunLock, ec);
  MP_CHECK(has_run || !nonempty || starting, "--out ", cfg.out_dir,
           ": exists and is not a metapo run directory (no run.json); choose another --out (metapo writes a new run only "
           "into a new or empty directory)");
  check_trace_path(cfg, has_run);
  RunDirPlan plan;
  plan.fresh_dir = !nonempty, plan.made_dir = !exists;
  if (cfg.resume.empty()) {
    MP_CHECK(!has_run, "--out ", cfg.out_dir,
             ": an existing run directory (pass --resume auto to continue it, or choose another --out)");
    return plan;
  }
  if (has_run) {
    const RunRecord was = read_run_record((out / "run.json").string());
    MP_CHECK(was.command == kind, "--out ", cfg.out_dir, ": a run of `metapo ", was.command, "`, not of `metapo ", kind, "`");
    plan.restarts = was.restarts + 1;
    // A traced run continued without --meta-trace: its trace ends here, said rather than silent.
    const nlohmann::json& m = was.options.contains("meta") ? was.options["meta"] : nlohmann::json::object();
    if (say && !cfg.resume.empty() && cfg.weighting == Weighting::Metapo && cfg.meta.trace_path.empty() &&
        m.contains("trace") && m["trace"].is_string() && !m["trace"].get<std::string>().empty())
      std::printf("note: the run's --meta-trace %s is not continued (this start has no --meta-trace; pass it to go on "
                  "tracing)\n", m["trace"].get<std::string>().c_str());
  }
  if (cfg.resume == "auto") {
    if (!has_run) {
      if (say) std::printf("--resume auto: %s holds no run yet; starting a new one\n", cfg.out_dir.c_str());
      return plan;
    }
    if (fs::exists(out / "final" / "config.json", ec)) {
      // Complete only when final/ reads back as a model; a broken one (a crash while it was
      // written without fsync, an edit) is set aside by the resume (set_aside_later_checkpoints).
      std::string broken;  // what is wrong, after "RUN/"
      try {
        const HfModelReader final_model((out / "final").string());
      } catch (const Error& e) {
        broken = str_cat("final is not a readable model (", e.what(), ")");
      }
      // A MetaPO run writes metapo.json before final/; a run of an older build stopped between the
      // two has final/ alone and is finished from its checkpoint like a broken final/.
      if (broken.empty() && cfg.weighting == Weighting::Metapo && !fs::exists(out / "metapo.json", ec))
        broken = "final has no metapo.json beside it (the run stopped while it ended)";
      if (broken.empty()) {
        plan.complete = true;
        return plan;
      }
      // Without a checkpoint to finish from, starting again would empty the finished run's logs.
      MP_CHECK(!list_checkpoints(cfg.out_dir).empty(), "--resume auto: ", cfg.out_dir, "/", broken,
               " and the run has no checkpoint to finish it from; move ", cfg.out_dir, "/final away to train the run again");
      if (say) std::printf("--resume auto: %s/%s; resuming the run\n", cfg.out_dir.c_str(), broken.c_str());
    }
    plan.candidates = list_checkpoints(cfg.out_dir);
    if (plan.candidates.empty()) {
      if (say) std::printf("--resume auto: %s has no checkpoint yet; starting again from step 0\n", cfg.out_dir.c_str());
      return plan;
    }
    plan.in_place = plan.fallback = true;
    return plan;
  }
  MP_CHECK(fs::exists(cfg.resume, ec), "--resume ", cfg.resume, ": no such file or directory (or pass --resume auto)");
  const std::string ck = resolve_checkpoint(cfg.resume);
  MP_CHECK(fs::is_regular_file(ck, ec), "--resume ", cfg.resume, ": ", ck, " is not a checkpoint file");
  const bool same = has_run && fs::equivalent(fs::path(ck).parent_path(), out, ec);
  MP_CHECK(!has_run || same, "--out ", cfg.out_dir, ": an existing run directory, and --resume ", cfg.resume,
           " is not one of its checkpoints (a run resumed from another run's checkpoint goes into a new --out)");
  plan.in_place = same;
  plan.candidates = {ck};
  return plan;
}

int g_run_lock_fd = -1;

// METAPO_LOCK_WAIT_S overrides the 60 s (tests; a cluster whose file system keeps a dead node's locks
// for longer); "off": no lock at all (-1).
int run_lock_wait_s() {
  const char* v = std::getenv("METAPO_LOCK_WAIT_S");
  if (!v || !*v) return 60;
  if (std::strcmp(v, "off") == 0) return -1;
  char* end = nullptr;
  const long s = std::strtol(v, &end, 10);
  MP_CHECK(*end == '\0' && s >= 0 && s <= 86400, "METAPO_LOCK_WAIT_S=", v,
           ": not a whole number of seconds in [0, 86400], nor off");
  return int(s);
}

// One start at a time in a run directory: the world root holds an exclusive flock on RUN/.lock from
// before it reads the directory until the process ends (two starts of the same command, or a restart
// while the ranks of a killed launcher still run, would otherwise write the same checkpoints and
// metrics.jsonl). A start waits up to 60 s (METAPO_LOCK_WAIT_S) for the holder to end, then gives
// up with one line. Where the file system has no flock (ENOLCK, EOPNOTSUPP) the run goes on
// unlocked. Returns whether this call created the lock file.
bool lock_run_dir(const std::string& out_dir) {
  const int wait_s = run_lock_wait_s();
  if (wait_s < 0) return false;  // METAPO_LOCK_WAIT_S=off
  const std::string path = (fs::path(out_dir) / kRunLock).string();
  std::error_code ec;
  const bool existed = fs::exists(path, ec);
  for (int waited = 0;;) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    MP_CHECK(fd >= 0, "--out ", out_dir, ": cannot create ", path, " (", std::strerror(errno), ")");
    int rc;
    do rc = ::flock(fd, LOCK_EX | LOCK_NB); while (rc != 0 && errno == EINTR);
    if (rc == 0) {
      // The file locked must still be the one at the path: a start that failed removes the lock
      // file of a directory it made, and a waiter would otherwise hold a lock on a deleted file.
      struct stat held {}, now {};
      if (::fstat(fd, &held) == 0 && ::stat(path.c_str(), &now) == 0 && held.st_ino == now.st_ino && held.st_dev == now.st_dev) {
        g_run_lock_fd = fd;  // held until the process ends
        return !existed;
      }
      ::close(fd);
      continue;
    }
    const int err = errno;
    ::close(fd);
    if (err != EWOULDBLOCK && err != EAGAIN) {  // no flock here (ENOLCK, EOPNOTSUPP, ENOSYS, ...)
      std::printf("warning: --out %s: cannot lock %s (%s); going on without the lock\n", out_dir.c_str(), path.c_str(),
                  std::strerror(err));
      std::fflush(stdout);
      return !existed;
    }
    if (waited >= wait_s)
      throw ExitError(str_cat("--out ", out_dir, ": another metapo run is using this directory (", path,
                              " is locked); wait for it to end or choose another --out (exit status ", kExitLocked, ")"),
                      kExitLocked);
    if (g_stop_signal != 0)  // scancel, Ctrl-C of a start that has not begun: nothing to checkpoint
      throw Error(str_cat("--out ", out_dir, ": stopped by ", stop_reason(g_stop_signal), " while waiting for ", path,
                          "; nothing was changed"));
    if (waited == 0) {
      std::printf("--out %s: another metapo start holds %s; waiting up to %d s for it to end\n", out_dir.c_str(),
                  path.c_str(), wait_s);
      std::fflush(stdout);
    }
    ::sleep(1);
    ++waited;
  }
}

RunDirPlan plan_run_dir(const TrainConfig& cfg, const Topology& topo, const std::string& kind) {
  nlohmann::json j;
  if (topo.is_root()) {
    bool made = false, created_lock = false;
    try {
      // Checked first (a directory of the user's gets no lock file), then decided again under the lock.
      decide_run_dir(cfg, kind, false);
      std::error_code ec;
      // A link whose target is missing is the user's: said, never made into (or removed as) ours.
      MP_CHECK(!fs::is_symlink(cfg.out_dir, ec) || fs::exists(cfg.out_dir, ec), "--out ", cfg.out_dir,
               ": a symbolic link to ", fs::read_symlink(cfg.out_dir, ec).string(),
               ", which does not exist (make that directory, or give another --out)");
      made = !fs::exists(fs::symlink_status(cfg.out_dir, ec));
      if (made) {
        fs::create_directories(cfg.out_dir, ec);
        MP_CHECK(!ec, "--out ", cfg.out_dir, ": cannot make the directory (", ec.message(), ")");
      }
      created_lock = lock_run_dir(cfg.out_dir);
      RunDirPlan p = decide_run_dir(cfg, kind, true);
      if (made) p.made_dir = true;
      j = {{"complete", p.complete}, {"in_place", p.in_place}, {"candidates", p.candidates}, {"fallback", p.fallback},
           {"fresh_dir", p.fresh_dir}, {"made_dir", p.made_dir}, {"restarts", p.restarts}};
    } catch (const Error& e) {
      const auto* x = dynamic_cast<const ExitError*>(&e);
      j = {{"error", e.what()}, {"status", x ? x->status() : 1}};
      std::error_code ec;
      if (created_lock) fs::remove(fs::path(cfg.out_dir) / kRunLock, ec);
      if (made) fs::remove(cfg.out_dir, ec);
    }
    std::fflush(stdout);
  }
  j = nlohmann::json::parse(broadcast_string(topo.world_comm(), j.dump(), 0));
  if (j.contains("error")) throw ExitError(j["error"].get<std::string>(), j["status"].get<int>());
  RunDirPlan p;
  p.complete = j["complete"], p.in_place = j["in_place"], p.fallback = j["fallback"], p.fresh_dir = j["fresh_dir"], p.made_dir = j["made_dir"];
  p.candidates = j["candidates"].get<std::vector<std::string>>();
  p.restarts = j["restarts"];
  if (p.complete && topo.is_root())
    std::printf("%s: the run is complete (%s/final exists); nothing to resume\n", cfg.out_dir.c_str(), cfg.out_dir.c_str());
  return p;
}


// What the ranks agree on once per step, after the gradients are reduced: skip the update (a
// non-finite loss, gradient norm or alignment on some rank), stop (a signal on some rank, or the
// --max-time budget on the root), checkpoint (--save-every-minutes on the root).
struct StepControl {
  bool skip = false;
  int stop = 0;  // 0, or stop_reason's code
  bool save_due = false;
};

// What run_dpo and run_sft share around their steps: the model split into this rank's pipeline stage
// and TP shard, ZeRO-1 over DP (with its padding of the parameter and gradient buffers), run.json with
// the layout and the memory per rank, the training state with its checkpoints and resume, the metrics
// log, the per-step communication report and the save.
struct TrainRun {
  TrainRun(const TrainConfig& cfg, const Topology& topo, ShardedModel&& model, const char* kind, int64_t total,
           int64_t restarts, std::unique_ptr<HangWatchdog> watchdog)
      : cfg(cfg),
        topo(topo),
        config(model.config),
        kind(kind),
        total(total),
        restarts(restarts),
        sm(std::move(model)),
        dp_comm(topo.dp_comm().dup()),
        opt(sm.model->layout(), cfg.adam, *dp_comm, sm.mp.get(), sm.shard_map, topo.tp_rank == 0),
        grads(tagged_buffer<float>(Mem::Grads, opt.padded_size())) {
    resize_exact(sm.params, opt.padded_size());  // ZeRO-1 padding (zeros, never read by the model)
    sm.params_mem.track(sm.params);
    place_on_device(sm, cfg.device, "--device", /*training=*/true);
    opt_on_device = sm.device && opt.place_on_device(sm.device->get());
    sm.model->set_recompute(cfg.recompute);
    sm.model->set_precision(cfg.precision);
    // A new run's run.json (it makes the run directory); a continued run's is rewritten when its
    // first step begins, so a start killed before then (kill -9) leaves the run's record as it was.
    report_memory(cfg, kind, topo, config, rank_memory(opt, -1), restarts, false, restarts == 0);
    topo.world_comm().barrier();  // the run directory exists on every rank from here on
    watch = std::move(watchdog);  // running since the start (run_dpo, run_sft), still loading
    watch->phase("start-up (checkpoint load)", 0);
  }

  // The first step begins: a rollback's set-aside (start) takes effect.
  void begin() {
    if (!set_aside_from_.empty() && topo.is_root())
      set_aside_later_checkpoints(cfg.out_dir, set_aside_from_, state.step, restarts);
    set_aside_from_.clear();
  }

  // The phase this rank enters (for the hang watchdog's message); step is 0-based.
  void phase(const char* name, int64_t step) { watch->phase(name, step + 1); }

  Comm* pipe() const { return sm.pp.get(); }

  // Where the optimizer reads the gradient and updates the parameters: the device copies when it runs
  // there (one data-parallel rank), else the host buffers, which backward_done / update_done keep in
  // step with the device copies the model uses (nothing to do on the CPU).
  float* opt_params() { return opt_on_device ? sm.device_params.data() : sm.params.data(); }
  float* opt_grads() { return opt_on_device ? sm.device_grads.data() : grads.data(); }
  void backward_done() {
    if (!opt_on_device) sm.grads_to_host(grads.data());
  }
  void update_done() {
    if (!opt_on_device) sm.params_to_device();
    else ops::synchronize(sm.device->get());  // the update finished, for the step's time
  }

  // Collective. The training state (files: the run's append-only files by key), restored from the
  // plan's checkpoint when there is one; then the metrics log, continued or started empty.
  void start(const RunDirPlan& plan, std::vector<std::pair<std::string, std::string>> files, const std::string& fp,
             bool uses_meta, MetaPOState* meta) {
    state.kind = kind, state.topo = &topo, state.config = config, state.pp_layers = cfg.pp_layers;
    state.sm = &sm, state.opt = &opt, state.uses_meta = uses_meta, state.meta = meta;
    state.run_config = run_config_json(cfg, kind), state.data_fingerprint = fp, state.files = std::move(files);
    state.total_steps = total;
    if (topo.is_root()) {  // checkpoints a killed run left half-written
      std::error_code ec;
      for (const auto& e : fs::directory_iterator(cfg.out_dir, ec)) {
        const std::string name = e.path().filename().string();
        if (name.rfind("step_", 0) == 0 && name.find(".h5.partial") != std::string::npos)  // and its .reserve
          fs::remove(e.path(), ec);
      }
    }
    // A refused resume into a new directory leaves nothing behind: StartupCleanup.
    std::string loaded;
    Timer load_clock;
    for (const std::string& c : plan.candidates) {
      try {
        load_checkpoint(state, c);
        loaded = c;
        break;
      } catch (const CheckpointIncompatible&) {
        throw;
      } catch (const Error& e) {
        if (!plan.fallback) throw;
        if (topo.is_root()) std::printf("--resume auto: skipping %s\n", e.what()), std::fflush(stdout);
      }
    }
    MP_CHECK(plan.candidates.empty() || !loaded.empty(), "--resume auto: none of the ", plan.candidates.size(),
             " checkpoints of ", cfg.out_dir, " can be read (above); move them away to start the run again");
    resumed = !loaded.empty();
    const double load_s = load_clock.seconds();
    watch->set_loading(false);  // the training state exists: from here a fixed limit is what it says
    // What the run wrote past the checkpoint is set aside once the first step begins (begin()): a
    // start that fails before then leaves the run as it was.
    if (resumed && plan.in_place) set_aside_from_ = loaded;
    if (resumed && plan.in_place && topo.is_root()) {
      // The run's files back to where the checkpoint stood: each step once.
      for (const auto& [key, path] : state.files) {
        if (!state.file_sizes.contains(key)) continue;
        const uintmax_t want = state.file_sizes[key].get<uintmax_t>();
        std::error_code ec;
        const uintmax_t have = fs::exists(path, ec) ? fs::file_size(path, ec) : 0;
        if (have < want) {
          // Lost in a crash before the data reached the disk: continued as it is, but never after a
          // torn line (appended lines must each stay one JSON value).
          const uintmax_t whole = last_whole_line_end(path, have);
          std::printf("warning: %s holds %llu bytes, fewer than the %llu it had at the checkpoint; continuing it as it is%s\n",
                      path.c_str(), (unsigned long long)have, (unsigned long long)want,
                      whole < have ? str_cat(" after its last whole line (", have - whole, " bytes of a torn line dropped)").c_str() : "");
          if (whole < have) fs::resize_file(path, whole, ec);
        } else if (have > want) {
          fs::resize_file(path, want, ec);
        }
      }
    }
    sm.params_to_device();  // a checkpoint's parameters, where the model reads them
    topo.world_comm().barrier();
    log.emplace(cfg.out_dir + "/metrics.jsonl", topo.is_root(), total, resumed && plan.in_place, state.step);
    since_save.reset();
    if (resumed) {
      nlohmann::json j;
      j["event"] = "resumed", j["step"] = state.step, j["checkpoint"] = loaded, j["skipped_steps"] = state.skipped_steps;
      j["parallel"] = {{"dp", topo.dp}, {"tp", topo.tp}, {"pp", topo.pp}};
      char secs[32];
      std::snprintf(secs, sizeof secs, "%.2f", load_s);
      j["load_seconds"] = load_s, j["restarts"] = restarts;
      if (const std::optional<SlurmJob> sl = SlurmJob::from_env()) j["slurm"] = to_json(*sl);
      log->event(j, str_cat("resumed from ", loaded, " at step ", state.step, " (DP ", topo.dp, " x PP ", topo.pp, " x TP ",
                            topo.tp, ") in ", secs, " s"));
    }
  }

  // Count this step's communication only (not setup, evaluation or trajectories).
  void begin_step(int64_t step) {
    for (Comm* c : comms()) c->reset_volume();
    phase("forward/backward", step);
  }
  std::vector<Comm*> comms() {
    std::vector<Comm*> v{dp_comm.get()};
    for (Comm* c : {sm.tp.get(), sm.pp.get(), sm.mp.get()})
      if (c) v.push_back(c);
    return v;
  }

  // Collective over the world (see StepControl).
  StepControl control(bool bad) {
    int32_t f[3] = {bad ? 1 : 0, int32_t(g_stop_signal), 0};
    if (topo.is_root()) {
      if (cfg.max_time_s > 0 && f[1] == 0 && g_process_clock.seconds() + 2 * max_step_s + save_s >= cfg.max_time_s) f[1] = 1;
      if (cfg.save_every_minutes > 0 && since_save.seconds() >= cfg.save_every_minutes * 60) f[2] = 1;
    }
    topo.world_comm().allreduce(f, 3, ReduceOp::Max);
    return {f[0] != 0, f[1], f[2] != 0};
  }

  // Collective. After step `step` (done or skipped, logged): the counters, then a checkpoint when one
  // is due or the run stops. Returns true when the run is to exit kExitCheckpointed.
  bool end_step(int64_t step, bool skipped, const StepControl& c, double step_seconds) {
    state.step = step + 1;
    state.consumed_samples += cfg.batch_size;
    max_step_s = std::max(max_step_s, step_seconds);
    const bool stop = c.stop != 0 && step + 1 < total;
    // No periodic checkpoint of a skipped step: the newest checkpoint stays the last good state.
    const bool due = !skipped && ((cfg.save_every > 0 && (step + 1) % cfg.save_every == 0) || c.save_due);
    watch->progress(step_seconds);
    if (stop || due) {
      phase("checkpoint write", step);
      checkpoint();
      watch->progress(-1);  // a checkpoint gets its own full limit, and restarts it when done
    }
    if (stop && topo.is_root()) {
      std::printf("stopping at step %lld of %lld on %s: checkpointed; exit status %d (continue with --resume auto)\n",
                  (long long)(step + 1), (long long)total, stop_reason(c.stop), kExitCheckpointed);
      std::fflush(stdout);
    }
    return stop;
  }

  std::string checkpoint() {
    Timer t;
    const std::string path = save_checkpoint(state, cfg.out_dir, cfg.keep);
    save_s = t.seconds();
    since_save.reset();
    if (topo.is_root()) {
      std::error_code ec;
      std::printf("checkpoint %s (%.1f MiB, %.2f s)\n", path.c_str(), double(fs::file_size(path, ec)) / (1024.0 * 1024.0), save_s);
      std::fflush(stdout);
    }
    return path;
  }

  // A skipped step: counted, logged, and past --max-skipped-steps the run stops with an error on
  // every rank (nothing more is written; the newest checkpoint is the last good state).
  void skip_step(int64_t step, double loss, double gnorm, double lr) {
    ++state.skipped_steps;
    nlohmann::json j;
    j["step"] = step + 1, j["skipped"] = true, j["skipped_steps"] = state.skipped_steps;
    j["loss"] = loss, j["grad_norm"] = gnorm, j["lr"] = lr;  // non-finite values are null in JSON
    char line[256];
    std::snprintf(line, sizeof line, "step %5lld/%lld | skipped: non-finite loss or gradient norm (loss %g, gnorm %g) | %lld skipped of --max-skipped-steps %lld",
                  (long long)(step + 1), (long long)total, loss, gnorm, (long long)state.skipped_steps,
                  (long long)cfg.max_skipped_steps);
    log->step(step, j, line);
    if (state.skipped_steps > cfg.max_skipped_steps) {
      const std::vector<std::string> ck = list_checkpoints(cfg.out_dir);
      throw Error(str_cat("step ", step + 1, ": ", state.skipped_steps,
                          " steps skipped for a non-finite loss or gradient norm, more than --max-skipped-steps ",
                          cfg.max_skipped_steps, "; stopping without writing ", cfg.out_dir, "/final (",
                          ck.empty() ? std::string("no checkpoint was written") : "the last good checkpoint is " + ck.front(),
                          "; a lower --lr or --max-grad-norm may help)"));
    }
  }

  // The step's report: comm/<kind>_bytes, the bytes this rank (the world root: DP, TP and PP rank 0)
  // handed to each kind of collective over its DP, TP, PP and replica communicators (the model's TP
  // all-reduces go through the TP one, activations through the PP one); after the first step also the
  // measured activation memory, printed and added to run.json (collective over pp_comm).
  void report(nlohmann::json& j, int64_t step) {
    uint64_t mine[kNumCommOps] = {}, all[kNumCommOps];
    for (Comm* c : comms())
      for (int k = 0; k < kNumCommOps; ++k) mine[k] += c->volume().bytes[k];
    // And summed over every rank of the world (what the analytic count in docs/training.md gives).
    std::copy(mine, mine + kNumCommOps, all);
    topo.world_comm().allreduce(all, kNumCommOps, ReduceOp::Sum);
    for (int k = 0; k < kNumCommOps; ++k) {
      j[std::string("comm/") + kCommOpNames[k] + "_bytes"] = mine[k];
      j[std::string("comm_all/") + kCommOpNames[k] + "_bytes"] = all[k];
    }
    j["skipped_steps"] = state.skipped_steps;
    if (step == 0) j["memory/activations_bytes"] = sm.model->activation_bytes();
    if (!reported_activations) {  // the first step of this process
      reported_activations = true;
      report_memory(cfg, kind, topo, config, rank_memory(opt, int64_t(sm.model->activation_bytes())), restarts, true);
    }
  }

  void save() {
    // Steps skipped for non-finite values (each said when it happened, within --max-skipped-steps):
    // said once more at the end, where a log's tail shows it.
    if (state.skipped_steps > 0 && topo.is_root()) {
      std::printf("warning: %lld of the run's %lld steps were skipped for a non-finite loss or gradient norm; "
                  "%s/final is the model after the others (see the skipped steps above: a learning rate too high?)\n",
                  (long long)state.skipped_steps, (long long)total, cfg.out_dir.c_str());
      std::fflush(stdout);
    }
    // The high-water marks of the whole run, before the save (which allocates nothing tracked).
    watch->phase("memory report", 0);
    report_memory(cfg, kind, topo, config, rank_memory(opt, int64_t(sm.model->activation_bytes())), restarts, true);
    watch->phase("final save", 0);
    if (opt_on_device) sm.params_to_host();
    try {
      save_final(cfg, topo, config, sm, sm.params);
    } catch (const FinalRangeError& e) {
      // Hours of training are not lost to the dtype of the file: the state goes into a checkpoint
      // (unless the step's is there), from which export writes final/ in another dtype.
      std::string path = cfg.out_dir + "/" + checkpoint_name(state.step);
      std::error_code ec;
      int32_t have = topo.is_root() && fs::is_regular_file(path, ec) ? 1 : 0;
      topo.world_comm().allreduce(&have, 1, ReduceOp::Max);  // one decision: the checkpoint is collective
      if (!have) {
        watch->phase("checkpoint write", 0);
        watch->progress(-1);  // the checkpoint's own full limit, as a periodic one gets
        path = checkpoint();
      }
      throw Error(str_cat(e.what(), "; the trained state is in ", path, ": --resume auto --save-dtype bfloat16 "
                          "writes final/ from it (or `metapo export --model ", path, " --dtype bfloat16 --out DIR`)"));
    }
  }

  const TrainConfig& cfg;
  const Topology& topo;
  const LlamaConfig config;
  const std::string kind;
  const int64_t total;
  const int64_t restarts;
  ShardedModel sm;
  std::unique_ptr<Comm> dp_comm;  // the optimizer's and MetaPO's (counted in the step report)
  ZeroAdamW opt;
  Buffer<float> grads;
  bool opt_on_device = false;  // the optimizer on the model's device (ZeroAdamW::place_on_device)
  std::optional<MetricsLog> log;
  std::unique_ptr<HangWatchdog> watch;
  std::string set_aside_from_;  // the checkpoint a run continued in place from (begin())
  TrainState state;
  bool resumed = false, reported_activations = false;
  Timer since_save;
  double max_step_s = 0, save_s = 0;
};

// Until the first step is done, an error (a model, checkpoint or option that fails once loaded, or
// a first step that fails: a bad value its batch holds) leaves nothing behind in a --out that this
// start made or found empty, nor a --meta-trace it started: all of it is this run's, and a corrected
// command must be able to use the same names. A run directory being resumed keeps its run.json as it
// was: TrainRun rewrites it (this command's options, one more restart) only once the first step has
// run. Rank 0 clears: an error only another rank sees aborts the job first (docs/training.md).
class StartupCleanup {
 public:
  StartupCleanup(const RunDirPlan& plan, const TrainConfig& cfg, const Topology& topo)
      : out_(cfg.out_dir), root_(topo.is_root()), fresh_(plan.fresh_dir), made_(plan.made_dir) {
    std::error_code ec;
    if (cfg.weighting == Weighting::Metapo && !cfg.meta.trace_path.empty() && !fs::exists(cfg.meta.trace_path, ec))
      new_trace_ = cfg.meta.trace_path;
  }
  StartupCleanup(const StartupCleanup&) = delete;
  StartupCleanup& operator=(const StartupCleanup&) = delete;
  ~StartupCleanup() {
    if (armed_ && root_ && std::uncaught_exceptions() > exceptions_) {
      std::error_code ec;
      if (!new_trace_.empty()) fs::remove(new_trace_, ec);
      if (fresh_)
        for (const auto& e : fs::directory_iterator(out_, ec)) fs::remove_all(e.path(), ec);
      if (made_) fs::remove(out_, ec);
    }
  }
  void started() { armed_ = false; }  // the first step is done: from here the run's files are kept

 private:
  std::string out_, new_trace_;
  bool root_, fresh_, made_, armed_ = true;
  int exceptions_ = std::uncaught_exceptions();
};

}  // namespace

void install_train_stop_handlers() { install_stop_handlers(); }

int run_dpo(const Topology& topo, const TrainConfig& cfg_in) {
  // The options with what depends on the run's length resolved once the length is known (below), so
  // that run.json, the checkpoints and the weight net all see the values in effect.
  TrainConfig resolved = cfg_in;
  const TrainConfig& cfg = resolved;
  install_stop_handlers();  // from the start: a SIGUSR1 during the load stops the run after its first step
  validate(cfg.loss);
  check_batching(cfg, topo);
  const bool use_meta = cfg.weighting == Weighting::Metapo;
  if (use_meta) {
    validate(cfg.meta);
    MP_CHECK(cfg.meta.val_batch % topo.dp == 0, "--meta-val-batch ", cfg.meta.val_batch, " is not divisible by the ",
             topo.dp, " data-parallel ranks");
    // The reference hypergradients read the host parameters, which on a device are not the master
    // copy, and take dot products and maxima over the flat buffer, which with TP or PP would need
    // their own reductions over the parts; ghost products are reduced inside the model (TP) and over
    // the pipeline (PP).
    MP_CHECK(!moves_to_device(cfg.device) || cfg.meta.hypergrad == "ghost", "--hypergrad ", cfg.meta.hypergrad,
             " is not supported with the model on a device (--device ", device_name(cfg.device), "; use --hypergrad ghost)");
    MP_CHECK(topo.tp == 1 || cfg.meta.hypergrad == "ghost", "--hypergrad ", cfg.meta.hypergrad,
             " is not supported with --tp ", topo.tp, " (use --hypergrad ghost)");
    MP_CHECK(topo.pp == 1 || cfg.meta.hypergrad == "ghost", "--hypergrad ", cfg.meta.hypergrad,
             " is not supported with --pp ", topo.pp, " (use --hypergrad ghost)");
  }
  MP_CHECK(cfg.ref_model_dir.empty() || fs::is_directory(cfg.ref_model_dir), "--ref-model ", cfg.ref_model_dir,
           ": not a directory");
  const RunDirPlan plan = plan_run_dir(cfg, topo, "train");
  if (plan.complete) return 0;
  StartupCleanup cleanup(plan, cfg, topo);
  std::unique_ptr<HangWatchdog> watch = make_watchdog(cfg, topo, "train");
  const ProgressTicks ticks(*watch);
  watch->set_loading(true);
  watch->phase("start-up (model, data and reference log-probs)", 0);
  // Opened and checked now (config, every tensor's presence and shape); read after the reference
  // log-probs, so the reference shard is gone by then.
  const HfModelReader policy(cfg.model_dir);
  const DatasetInfo info = read_dataset_info(cfg.data_path);
  check_compatible(policy.config(), info, cfg.data_path);
  PairSplit train = read_pair_split(cfg.data_path, cfg.train_split);
  resolved.data_fingerprint = fingerprint(train);
  check_same_on_every_rank(topo, content_fingerprint(train), cfg.data_path + ": /" + cfg.train_split);
  const std::string policy_fingerprint = model_fingerprint(policy);
  check_same_on_every_rank(topo, policy_fingerprint, "--model " + cfg.model_dir);
  if (use_meta) check_pair_table(train, cfg, topo);
  const std::vector<int64_t> cut_train = truncate_split(train, cfg, cfg.train_split, topo);
  note_past_context(train, policy.config().max_position_embeddings, cfg.data_path + ": /" + cfg.train_split, topo.is_root());
  if (!cfg.ref_model_dir.empty() && !loss_uses_reference(cfg.loss.type) && !use_meta && topo.is_root()) {
    std::printf("note: --ref-model %s is not used: --loss %s needs no reference model\n", cfg.ref_model_dir.c_str(),
                loss_name(cfg.loss.type).c_str());
    std::fflush(stdout);
  } else if (!cfg.ref_model_dir.empty() && train.has_ref() && (train.ref_model_fingerprint.empty() || cfg.trust_stored_ref) &&
             topo.is_root()) {
    std::printf("note: --ref-model %s is not used for the pairs %s already holds reference log-probs of (precompute-ref); "
                "only pairs without them are scored with it\n", cfg.ref_model_dir.c_str(), cfg.data_path.c_str());
    std::fflush(stdout);
  }
  // --meta-apply confidence: each pair trains on its own ℓ(a_i) (confidence_pair_loss) with
  // coefficient 1/B, and nothing is renormalized.
  const bool confidence = use_meta && cfg.meta.apply == "confidence";
  LossConfig train_loss = cfg.loss;
  train_loss.weights_as_confidence = confidence;
  const bool do_eval = cfg.eval_every > 0 || use_meta;
  PairSplit val;
  std::vector<int64_t> cut_val;
  if (do_eval) {
    val = read_pair_split(cfg.data_path, cfg.val_split);
    check_same_on_every_rank(topo, content_fingerprint(val), cfg.data_path + ": /" + cfg.val_split);
    cut_val = truncate_split(val, cfg, cfg.val_split, topo);
    note_past_context(val, policy.config().max_position_embeddings, cfg.data_path + ": /" + cfg.val_split, topo.is_root());
  }
  MP_CHECK(!do_eval || val.size() > 0, cfg.data_path, ": /", cfg.val_split, " holds no pairs, and ",
           use_meta ? "--weighting metapo draws its validation batches from it" : "--eval-every evaluates on it");
  MP_CHECK(!use_meta || cfg.meta.val_batch <= val.size(), "--meta-val-batch ", cfg.meta.val_batch, " is larger than ",
           cfg.data_path, ": /", cfg.val_split, " (", val.size(), " pairs)");
  const std::string ref_dir = cfg.ref_model_dir.empty() ? cfg.model_dir : cfg.ref_model_dir;
  if (loss_uses_reference(cfg.loss.type) || use_meta)
    check_stored_reference(cfg, topo, ref_dir, policy_fingerprint, {{cfg.train_split, &train}, {cfg.val_split, do_eval ? &val : nullptr}});
  // Stored reference log-probs are of the sequences as the file holds them: those of cut pairs are
  // computed again, on the cut sequences the policy is trained on.
  // A reference-free loss (simpo) needs no reference unless MetaPO's features do (the policy's drift
  // from it): none is loaded or computed, and zeros stand in for absent log-probs (never read).
  if (loss_uses_reference(cfg.loss.type) || use_meta) {
    ensure_ref_logps(train, cfg.train_split, ref_dir, cfg.micro(), topo, cfg.pp_layers, cut_train, cfg.device);
    if (do_eval) ensure_ref_logps(val, cfg.val_split, ref_dir, cfg.micro(), topo, cfg.pp_layers, cut_val, cfg.device);
  } else {
    train.zero_absent_ref(), val.zero_absent_ref();
  }
  const TokensOf train_tokens = [&](int64_t i) { return pair_tokens(train, i); };
  MemoryHandle data_mem(Mem::Data);
  data_mem.set(memory_bytes(train) + memory_bytes(val));
  std::vector<double> column;
  if (cfg.weighting == Weighting::Column) {
    auto it = train.columns.find(cfg.weight_opt.column);
    MP_CHECK(it != train.columns.end(), cfg.data_path, ": /", cfg.train_split, "/columns/", cfg.weight_opt.column,
             " not found (needed by --weighting column)");
    column.assign(it->second.begin(), it->second.end());
    // Checked whole before the first step (a bad value would otherwise end the run when its batch
    // comes), naming the pair by its sample id.
    for (size_t i = 0; i < column.size(); ++i)
      MP_CHECK(std::isfinite(column[i]) && column[i] >= 0, cfg.data_path, ": /", cfg.train_split, "/columns/",
               cfg.weight_opt.column, ": value ", column[i], " of pair ", i, " (sample_id ", train.sample_id[i],
               ") is not a finite number >= 0 (needed by --weighting column)");
  }

  const int64_t total = total_steps(cfg, train.size());
  if (use_meta && cfg.meta.warmup >= total && topo.is_root())
    std::printf("warning: --meta-warmup %lld: the run has %lld steps, so the weight net is never updated\n",
                (long long)cfg.meta.warmup, (long long)total);
  resolved.meta.lr = meta_lr(cfg_in.meta, total);
  const LrSchedule sched = make_schedule(cfg, total);
  TrainRun run(cfg, topo, load_sharded_model(policy, topo, cfg.pp_layers, zero_padded_size(policy.config(), topo, cfg.pp_layers)), "train", total, plan.restarts,
               std::move(watch));
  LlamaModel<float>& model = *run.sm.model;
  Comm* pp = run.pipe();
  const bool last_stage = topo.last_stage();
  Comm& dp_comm = *run.dp_comm;
  ZeroAdamW& opt = run.opt;
  std::vector<float>& params = run.sm.params;
  Buffer<float>& grads = run.grads;
  // What the model reads and writes: on a device the copies there (params stays the host master).
  const float* mparams = run.sm.model_params();
  float* mgrads = run.sm.model_grads(grads.data());
  const bool on_device = run.sm.device != nullptr;
  const double B = double(cfg.batch_size);
  std::unique_ptr<MetaPOState> meta;
  Buffer<float> ghat, hyper_scratch;
  ops::DeviceArray<float> ghat_dev(cfg.device, Mem::MetaPO);  // ghat's copy the ghost products read on a device
  if (use_meta) {
    int64_t max_id = 0;
    for (int64_t id : train.sample_id) max_id = std::max(max_id, id);
    // The pair statistics, the features and the weight net live on the last pipeline stage, where
    // the pair losses are (DESIGN §6); its DP ranks share the table.
    if (last_stage)
      meta = std::make_unique<MetaPOState>(cfg.meta, max_id, cfg.seed, dp_comm, topo.is_last_stage_root(),
                                           plan.in_place && !plan.candidates.empty());
    // ĝ on the host where the optimizer is (its all-reduce and preconditioning); on a device also
    // its copy there, which the ghost products read.
    if (!run.opt_on_device) ghat = tagged_buffer<float>(Mem::MetaPO, params.size());
    if (on_device) ghat_dev.resize_for_overwrite(model.layout().total());
  }
  const std::vector<int64_t> tracked = tracked_pairs(train, cfg.track_pairs);
  const std::string traj_path = cfg.out_dir + "/trajectories.jsonl";
  std::vector<std::pair<std::string, std::string>> files{{"metrics.jsonl", cfg.out_dir + "/metrics.jsonl"}};
  if (!tracked.empty()) files.emplace_back("trajectories.jsonl", traj_path);
  if (use_meta && !cfg.meta.trace_path.empty()) files.emplace_back("meta_trace", cfg.meta.trace_path);
  run.start(plan, files, fingerprint(train), use_meta, meta.get());
  MetricsLog& log = *run.log;

  auto run_eval = [&](int64_t step) {
    PairStats ev = evaluate_pairs(model, pp, mparams, val, cfg.loss, cfg.micro(), cfg.eval_pairs, topo.dp_comm());
    nlohmann::json j = stats_json(ev, "eval/");
    j["step"] = step + 1;
    char line[256];
    std::snprintf(line, sizeof line, "eval  %5lld | loss %.4f | acc %.3f | margin %.3f", (long long)(step + 1),
                  j["eval/loss"].get<double>(), j["eval/rewards/accuracies"].get<double>(),
                  j["eval/rewards/margins"].get<double>());
    log.event(j, line);
  };

  if (!run.resumed && !tracked.empty()) {
    if (topo.is_root()) std::ofstream(traj_path, std::ios::trunc);
    write_trajectories(model, pp, mparams, train, tracked, cfg.loss, 0, cfg.micro(), topo, traj_path);
  }
  run.begin();

  const int64_t first_step = run.state.step;
  for (int64_t step = run.state.step; step < total; ++step) {
    if (step > first_step) cleanup.started();  // a first step that fails leaves nothing behind either
    Timer tm;
    run.begin_step(step);
    const std::vector<int64_t> batch = global_batch(train.size(), cfg.batch_size, cfg.seed, step);
    const std::vector<int64_t> mine = dp_share(batch, topo.dp_rank, topo.dp, train_tokens, cfg.micro());
    PairStats st;
    double tokens = 0, scored = 0;
    // MetaPO: the validation gradient at the current θ first, so the training backward can take
    // ghost products with it.
    // Phase times (seconds) of this step, logged as time/* so the MetaPO overhead can be read off.
    double t_refresh = 0, t_val = 0, t_meta = 0;
    Timer phase;
    if (use_meta) {
      const std::vector<int64_t> window = refresh_window(cfg.meta, train.size(), step, batch);
      if (!window.empty()) {
        run.phase("MetaPO refresh pass", step);
        std::vector<double> c, r;
        pair_logps(model, pp, mparams, train, window, cfg.micro(), topo.dp_comm(), c, r);
        if (meta) meta->observe_refresh(train, window, c, r, cfg.loss, step);
      }
    }
    t_refresh = phase.seconds();
    const bool meta_step = use_meta && is_meta_step(cfg.meta, step);
    phase.reset();
    if (meta_step) run.phase("MetaPO validation gradient", step);
    if (meta_step) {
      // ĝ is reduced and preconditioned where the optimizer is. With the model on a device and the
      // optimizer on the host, the validation backward writes the gradient's device copy (scratch
      // until the training backward) and ĝ goes back to the device for the ghost products.
      const bool staged = on_device && !run.opt_on_device;
      validation_gradient(model, pp, mparams, val, meta_validation_loss(cfg.loss), cfg.meta.val_batch, cfg.micro(), cfg.seed, step,
                          topo, opt, cfg.meta.precondition, run.opt_on_device ? ghat_dev.data() : ghat.data(),
                          staged ? mgrads : nullptr);
      if (staged) ops::to_device(model.context(), ghat_dev.data(), ghat.data(), ghat_dev.size() * sizeof(float));
    }
    t_val = phase.seconds();
    phase.reset();
    const std::vector<std::vector<int64_t>> chunks = micro_batches(mine, train_tokens, cfg.micro());
    // Backward with a_i / B; the step rescales by B / Σa once Σa over all ranks is known.
    ChunkWeightFn weigh;
    if (use_meta) {
      weigh = [&](size_t m, const std::vector<PairLogps>& in, const std::vector<PairLossResult>& out) {
        return meta->weights(train, chunks[m], in, out);
      };
    } else {
      weigh = [&](size_t m, const std::vector<PairLogps>& in, const std::vector<PairLossResult>& out) {
        std::vector<double> col;
        if (!column.empty())
          for (int64_t i : chunks[m]) col.push_back(column[size_t(i)]);
        return static_pair_weights(cfg.weighting, in, out, col, cfg.weight_opt);
      };
    }
    // One exchange of the pairs' history before the micro-batches: with a token budget the DP ranks
    // may run different numbers of them.
    if (meta) meta->begin_step(train, mine);
    const bool ghost = meta_step && cfg.meta.hypergrad == "ghost";
    run.phase("forward/backward", step);
    const std::vector<PairMicroResult> res =
        pair_pipeline_step(model, pp, mparams, mgrads, train, chunks, train_loss, weigh, 1.0 / B,
                           ghost ? (on_device ? ghat_dev.data() : ghat.data()) : nullptr);
    run.backward_done();
    std::vector<double> align;
    for (size_t m = 0; m < chunks.size(); ++m) {
      const PairMicroResult& r = res[m];
      tokens += double(r.tokens), scored += double(r.scored);
      if (!last_stage) continue;
      for (size_t k = 0; k < chunks[m].size(); ++k) st.add(cfg.loss, r.in[k], r.out[k], r.weights[k]);
      if (meta_step && ghost) {
        align.insert(align.end(), r.align.begin(), r.align.end());
      } else if (meta_step) {
        // Reference methods (DESIGN §6), after the training backward so they only reuse scratch (one
        // rank holds the whole model: checked above).
        if (hyper_scratch.empty()) hyper_scratch = tagged_buffer<float>(Mem::MetaPO, params.size());
        const std::vector<double> a =
            cfg.meta.hypergrad == "exact"
                ? pair_alignments_exact<float>(model, params.data(), hyper_scratch.data(), params.size(), train,
                                               chunks[m], train_loss, ghat.data())
                : pair_alignments_fd<float>(model, params.data(), hyper_scratch.data(), params.size(), train,
                                            chunks[m], train_loss, ghat.data(), cfg.meta.fd_step);
        align.insert(align.end(), a.begin(), a.end());
      }
    }
    const double t_train = phase.seconds();
    run.phase("batch statistics all-reduce", step);
    st.allreduce(topo.dp_comm());
    // The pair statistics are the last stage's (the other stages hold zeros): share them, so every
    // stage knows Σa for the rescale and the root can log them.
    if (topo.pp > 1) st.allreduce(topo.pp_comm());
    double counts[2] = {tokens, scored};  // whole numbers: their sum is exact
    topo.dp_comm().allreduce_sum(counts, 2);
    tokens = counts[0], scored = counts[1];
    const bool finite_w = std::isfinite(st.weight_sum);
    MP_CHECK(!finite_w || confidence || st.weight_sum > 0, "step ", step + 1, ": the pair weights of the batch sum to 0 (--weighting ",
             weighting_name(cfg.weighting), ")");
    phase.reset();
    // ZeRO-1: reduce-scatter, undo the a_i/B scaling of the backward with B/Σa (DESIGN §6: exact
    // global normalization of the weights), then (unless some rank saw a non-finite value) the meta
    // update, clipping, this rank's shard's update and the all-gather.
    const double lr = sched.at(step);
    run.phase("gradient reduction (ZeRO-1 reduce-scatter)", step);
    const double gnorm = opt.reduce(run.opt_grads(), finite_w && !confidence ? B / st.weight_sum : 1.0);
    bool bad = !finite_w || !std::isfinite(st.weighted_loss) || !std::isfinite(gnorm);
    for (double a : align) bad = bad || !std::isfinite(a);
    run.phase("step agreement (all-reduce)", step);
    const StepControl ctl = run.control(bad);
    if (ctl.skip) {
      if (meta) meta->discard_step();
      run.skip_step(step, st.weight_sum > 0 ? st.weighted_loss / st.weight_sum : st.weighted_loss, gnorm, lr);
      if (run.end_step(step, true, ctl, tm.seconds())) return kExitCheckpointed;
      continue;
    }
    double t_opt = phase.seconds();
    phase.reset();
    run.phase("MetaPO meta update", step);
    if (meta) meta->end_step(step, meta_step ? &align : nullptr, cfg.batch_size, st.weight_sum);
    t_meta = phase.seconds();
    phase.reset();
    run.phase("optimizer (ZeRO-1 all-gather)", step);
    opt.apply(run.opt_params(), run.opt_grads(), lr, gnorm, cfg.max_grad_norm);
    run.update_done();
    t_opt += phase.seconds();

    const double secs = tm.seconds();
    nlohmann::json j = stats_json(st, "");
    if (confidence) j["loss"] = st.loss / st.n;  // the mean of the ℓ(a_i) the step descended
    const double wmean = st.weight_sum / st.n;
    j["step"] = step + 1, j["epoch"] = double(step + 1) * B / double(train.size());
    j["lr"] = lr, j["grad_norm"] = gnorm, j["tokens_per_s"] = tokens / secs, j["step_time"] = secs;
    j["tokens"] = tokens, j["scored_tokens"] = scored;
    j["weights/mean"] = wmean, j["weights/std"] = std::sqrt(std::max(0.0, st.w_sq / st.n - wmean * wmean));
    j["weights/min"] = st.w_min, j["weights/max"] = st.w_max;
    // Effective sample size (Σa)² / Σa² of the global batch: B for equal weights, 1 when one pair
    // carries all the weight.
    const double ess = st.w_sq > 0 ? st.weight_sum * st.weight_sum / st.w_sq : 0.0;
    j["weights/ess"] = ess;
    if (meta_step) {
      double mg = meta ? meta->last_meta_grad_norm() : 0.0;  // the last stage's (zero elsewhere)
      if (topo.pp > 1) pp->allreduce_sum(&mg, 1);
      j["meta/grad_norm"] = mg;
      if (cfg.meta.gate > 0) {
        // The significance gate after this step (the last stage's; zero elsewhere): its T and the
        // exponent γ of the next step's weights.
        double gt[2] = {meta ? meta->gate().t : 0.0, meta ? meta->gate().gamma : 0.0};
        if (topo.pp > 1) pp->allreduce_sum(gt, 2);
        j["meta/gate_t"] = gt[0], j["meta/gamma"] = gt[1];
      }
    }
    j["time/train"] = t_train, j["time/optimizer"] = t_opt;
    if (use_meta) j["time/refresh"] = t_refresh, j["time/val_grad"] = t_val, j["time/meta_update"] = t_meta;
    run.phase("step report", step);
    run.report(j, step);
    char line[320];
    std::snprintf(line, sizeof line,
                  "step %5lld/%lld | loss %.4f | acc %.3f | margin %+.3f | w %.2f±%.2f ess %.1f | lr %.2e | gnorm %.3f | %.0f tok/s",
                  (long long)(step + 1), (long long)total, j["loss"].get<double>(),
                  j["rewards/accuracies"].get<double>(), j["rewards/margins"].get<double>(), wmean,
                  j["weights/std"].get<double>(), ess, lr, gnorm, tokens / secs);
    log.step(step, j, line);
    run.phase("evaluation", step);
    if (cfg.eval_every > 0 && ((step + 1) % cfg.eval_every == 0 || step + 1 == total)) run_eval(step);
    run.phase("trajectories", step);
    if (!tracked.empty() && cfg.track_every > 0 && ((step + 1) % cfg.track_every == 0 || step + 1 == total))
      write_trajectories(model, pp, mparams, train, tracked, cfg.loss, step + 1, cfg.micro(), topo, traj_path);
    if (run.end_step(step, false, ctl, tm.seconds())) return kExitCheckpointed;
  }
  cleanup.started();
  // metapo.json before final/: a run is complete once final/ exists (--resume auto then has nothing
  // to do), so everything else it writes at its end must already be there.
  if (use_meta) {
    // The weight net must be bit-identical on every rank that holds one, the last pipeline stage's
    // (same reduced gradients, same Adam; the TP ranks of a replica run the same meta computations on
    // the same inputs): check it element by element over those ranks (max == min) and fail loudly if
    // not. The split is collective over the world.
    std::unique_ptr<Comm> holders = topo.world_comm().split(meta ? 0 : Comm::kNoColor, topo.world_rank);
    if (meta) {
      std::vector<double> hi = meta->net().params(), lo = hi;
      const int n_holders = holders->size();
      holders->allreduce_max(hi.data(), hi.size());
      holders->allreduce_min(lo.data(), lo.size());
      holders.reset();
      MP_CHECK(hi == lo, "MetaPO: the weight net differs between ranks");
      if (topo.is_last_stage_root() && n_holders > 1) {
        if (topo.tp == 1 && topo.pp == 1)
          std::printf("weight net identical on all %d data-parallel ranks (%lld parameters)\n", topo.dp,
                      (long long)hi.size());
        else if (topo.pp == 1)
          std::printf("weight net identical on all %d ranks (DP %d x TP %d, %lld parameters)\n", n_holders,
                      topo.dp, topo.tp, (long long)hi.size());
        else
          std::printf("weight net identical on all %d ranks of the last pipeline stage (DP %d x TP %d, %lld parameters)\n",
                      n_holders, topo.dp, topo.tp, (long long)hi.size());
        std::fflush(stdout);
      }
      // What `metapo analyze` needs: the weight net, the feature statistics and the final pair table
      // (the logical [N, S] array, gathered from its owners), written by the last stage.
      const std::vector<double> table = meta->table().gather_all();
      if (topo.is_last_stage_root()) {
        MetaRun run;
        run.net.n_features = kNumFeatures, run.net.hidden = cfg.meta.hidden, run.net.a_min = cfg.meta.a_min;
        run.params = meta->net().params(), run.standardizer = meta->standardizer().state();
        run.stat_rows = meta->table().rows(), run.pair_stats = table, run.features_used = cfg.meta.features;
        write_meta_run(cfg.out_dir, run);
      }
    }
    topo.world_comm().barrier();  // metapo.json is complete before final/ is begun
  }
  run.save();
  if (topo.is_root()) std::printf("wrote %s/final and %s/metrics.jsonl\n", cfg.out_dir.c_str(), cfg.out_dir.c_str());
  return 0;
}

int run_sft(const Topology& topo, const TrainConfig& cfg) {
  install_stop_handlers();  // from the start: a SIGUSR1 during the load stops the run after its first step
  check_batching(cfg, topo);
  const RunDirPlan plan = plan_run_dir(cfg, topo, "sft");
  if (plan.complete) return 0;
  StartupCleanup cleanup(plan, cfg, topo);
  std::unique_ptr<HangWatchdog> watch = make_watchdog(cfg, topo, "sft");
  const ProgressTicks ticks(*watch);
  watch->set_loading(true);
  watch->phase("start-up (model and data)", 0);
  const HfModelReader initial(cfg.model_dir);
  const DatasetInfo info = read_dataset_info(cfg.data_path);
  check_compatible(initial.config(), info, cfg.data_path);
  SftSplit train = read_sft_split(cfg.data_path);
  check_same_on_every_rank(topo, fingerprint(train), cfg.data_path + ": /sft");
  check_same_on_every_rank(topo, model_fingerprint(initial), "--model " + cfg.model_dir);
  const int64_t cut = truncate_sft(train, cfg.truncation, cfg.data_path + ": /sft");
  note_past_context(train, initial.config().max_position_embeddings, cfg.data_path + ": /sft", topo.is_root());
  if (cut > 0 && topo.is_root())
    std::printf("sft: %lld of %lld examples cut by %s\n", (long long)cut, (long long)train.size(),
                cfg.truncation.describe().c_str());
  const TokensOf train_tokens = [&](int64_t i) { return sft_tokens(train, i); };
  check_token_budget(train.size(), train_tokens, train.sample_id, cfg.micro(), cfg.data_path + ": /sft");
  MemoryHandle data_mem(Mem::Data);
  data_mem.set(memory_bytes(train));
  const int64_t total = total_steps(cfg, train.size());
  const LrSchedule sched = make_schedule(cfg, total);
  TrainRun run(cfg, topo, load_sharded_model(initial, topo, cfg.pp_layers, zero_padded_size(initial.config(), topo, cfg.pp_layers)), "sft", total, plan.restarts,
               std::move(watch));
  LlamaModel<float>& model = *run.sm.model;
  ZeroAdamW& opt = run.opt;
  Buffer<float>& grads = run.grads;
  run.start(plan, {{"metrics.jsonl", cfg.out_dir + "/metrics.jsonl"}}, fingerprint(train), false, nullptr);
  MetricsLog& log = *run.log;
  run.begin();

  const int64_t first_step = run.state.step;
  for (int64_t step = run.state.step; step < total; ++step) {
    if (step > first_step) cleanup.started();  // a first step that fails leaves nothing behind either
    Timer tm;
    run.begin_step(step);
    const std::vector<int64_t> global = global_batch(train.size(), cfg.batch_size, cfg.seed, step);
    // Every rank reads the whole dataset, so the global count of answer tokens (the loss is their
    // mean, as in TRL's SFT) needs no communication.
    double n_answer = 0;
    for (int64_t i : global) n_answer += double(train.answer.len(i));
    MP_CHECK(n_answer > 0, "SFT batch ", step, " has no answer tokens");
    const std::vector<int64_t> mine = dp_share(global, topo.dp_rank, topo.dp, train_tokens, cfg.micro());
    double nll = 0, tokens = 0;
    std::vector<PipeMicro> mbs;
    for (const std::vector<int64_t>& chunk : micro_batches(mine, train_tokens, cfg.micro())) {
      PipeMicro mb;
      mb.batch = make_sft_batch(train, chunk, mb.targets);
      tokens += double(mb.batch.n_tokens());
      mbs.push_back(std::move(mb));
    }
    pipeline_train(model, run.pipe(), run.sm.model_params(), run.sm.model_grads(grads.data()), mbs,
                   [&](size_t m, const std::vector<float>& logp) {
      std::vector<float> dlogp(logp.size(), 0.0f);
      for (size_t t = 0; t < logp.size(); ++t)
        if (mbs[m].targets[t] >= 0) nll -= double(logp[t]), dlogp[t] = float(-1.0 / n_answer);
      return dlogp;
    });
    run.backward_done();
    double sums[2] = {nll, tokens};
    run.phase("loss all-reduce", step);
    topo.dp_comm().allreduce_sum(sums, 2);
    if (topo.pp > 1) run.pipe()->allreduce_sum(sums, 1);  // the NLL is the last stage's (0 elsewhere)
    const double lr = sched.at(step);
    run.phase("gradient reduction (ZeRO-1 reduce-scatter)", step);
    const double gnorm = opt.reduce(run.opt_grads(), 1.0);
    run.phase("step agreement (all-reduce)", step);
    const StepControl ctl = run.control(!std::isfinite(sums[0]) || !std::isfinite(gnorm));
    if (ctl.skip) {
      run.skip_step(step, sums[0] / n_answer, gnorm, lr);
      if (run.end_step(step, true, ctl, tm.seconds())) return kExitCheckpointed;
      continue;
    }
    run.phase("optimizer (ZeRO-1 all-gather)", step);
    opt.apply(run.opt_params(), run.opt_grads(), lr, gnorm, cfg.max_grad_norm);
    run.update_done();
    const double secs = tm.seconds();
    run.phase("step report", step);
    nlohmann::json j;
    j["step"] = step + 1, j["loss"] = sums[0] / n_answer, j["lr"] = lr, j["grad_norm"] = gnorm;
    j["tokens_per_s"] = sums[1] / secs, j["step_time"] = secs;
    run.report(j, step);
    char line[256];
    std::snprintf(line, sizeof line, "sft %5lld/%lld | loss %.4f | lr %.2e | gnorm %.3f | %.0f tok/s",
                  (long long)(step + 1), (long long)total, sums[0] / n_answer, lr, gnorm, sums[1] / secs);
    log.step(step, j, line);
    if (run.end_step(step, false, ctl, tm.seconds())) return kExitCheckpointed;
  }
  cleanup.started();
  run.save();
  if (topo.is_root()) std::printf("wrote %s/final and %s/metrics.jsonl\n", cfg.out_dir.c_str(), cfg.out_dir.c_str());
  return 0;
}

}  // namespace metapo
