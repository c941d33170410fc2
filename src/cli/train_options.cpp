#include "metapo/cli/train_options.h"

#include <cmath>

#include "metapo/core/error.h"
#include "metapo/io/hf_model.h"
#include "metapo/train/metapo.h"

namespace metapo::cli {

double parse_duration(const std::string& text, const std::string& option) {
  // [D-]HH:MM:SS, MM:SS, or seconds (Slurm's --time forms, minus its minutes-only reading of a bare number).
  auto fail = [&]() -> double {
    throw Error(option + " " + text + ": not a duration (D-HH:MM:SS, HH:MM:SS, MM:SS or seconds)");
  };
  std::string rest = text;
  double days = 0;
  const size_t dash = rest.find('-');
  auto number = [&](const std::string& t) {
    if (t.empty() || t.find_first_not_of("0123456789.") != std::string::npos) fail();
    return std::stod(t);
  };
  if (dash != std::string::npos) days = number(rest.substr(0, dash)), rest = rest.substr(dash + 1);
  std::vector<double> parts;
  size_t start = 0;
  for (size_t c; (c = rest.find(':', start)) != std::string::npos; start = c + 1) parts.push_back(number(rest.substr(start, c - start)));
  parts.push_back(number(rest.substr(start)));
  if (parts.size() > 3 || (dash != std::string::npos && parts.size() != 3)) fail();
  double secs = 0;
  for (double p : parts) secs = secs * 60 + p;
  return days * 86400 + secs;
}

void add_train_options(po::options_description& desc, TrainConfig& cfg, TrainOptionStrings& s, bool pref) {
  desc.add_options()
    ("model", po::value(&cfg.model_dir)->required(), "initial model directory (Hugging Face layout)")
    ("data", po::value(&cfg.data_path)->required(), "dataset .h5 (tools/prepare_data.py or metapo synth)")
    ("out", po::value(&cfg.out_dir)->required(), "run directory: metrics.jsonl, run.json, final/")
    ("seed", po::value(&cfg.seed)->default_value(0), "data order seed")
    ("batch-size", po::value(&cfg.batch_size)->default_value(pref ? 32 : 32), pref ? "pairs per optimizer step (all ranks)" : "examples per optimizer step (all ranks)")
    ("micro-batch", po::value(&cfg.micro_batch)->default_value(8), "per rank per forward/backward (gradient accumulation covers the rest)")
    ("micro-batch-tokens", po::value(&cfg.micro_batch_tokens)->default_value(0), "> 0: micro-batches of whole examples up to N tokens each (a pair counts its prompt twice), sorted by length, instead of --micro-batch examples; the data-parallel ranks get about equal tokens")
    ("max-length", po::value(&cfg.truncation.max_length)->default_value(0), "prompt + response tokens: longer responses are cut to fit, as tools/prepare_data.py does (0: no limit)")
    ("max-prompt-length", po::value(&cfg.truncation.max_prompt_length)->default_value(0), "prompt tokens kept (0: no limit)")
    ("truncation-mode", po::value(&s.truncation_mode)->default_value("keep_end"), "which end of a long prompt is kept: keep_end or keep_start")
    ("epochs", po::value(&cfg.epochs)->default_value(1), "passes over the training split")
    ("max-steps", po::value(&cfg.max_steps)->default_value(0), "optimizer steps (overrides --epochs when > 0)")
    ("lr", po::value(&cfg.adam.lr)->default_value(pref ? 1e-4 : 1e-3), "peak learning rate (AdamW)")
    ("weight-decay", po::value(&cfg.adam.weight_decay)->default_value(0.0), "decoupled weight decay on matrices")
    ("adam-beta1", po::value(&cfg.adam.beta1)->default_value(0.9), "AdamW beta1")
    ("adam-beta2", po::value(&cfg.adam.beta2)->default_value(0.999), "AdamW beta2")
    ("adam-eps", po::value(&cfg.adam.eps)->default_value(1e-8), "AdamW epsilon")
    ("lr-schedule", po::value(&cfg.sched.kind)->default_value("cosine"), "cosine | linear | constant (after warmup)")
    ("warmup-steps", po::value(&cfg.sched.warmup_steps)->default_value(0), "linear warmup steps")
    ("warmup-ratio", po::value(&cfg.warmup_ratio)->default_value(0.1), "warmup as a fraction of the steps (when --warmup-steps is 0)")
    ("min-lr-ratio", po::value(&cfg.sched.min_lr_ratio)->default_value(0.1), "cosine floor as a fraction of --lr")
    ("max-grad-norm", po::value(&cfg.max_grad_norm)->default_value(1.0), "clip the global gradient norm (0: off)")
    ("save-dtype", po::value(&cfg.save_dtype)->default_value("auto"), "dtype of RUN/final: float32, bfloat16, float16, or auto (the dtype --model's config.json names)")
    ("save-every", po::value(&cfg.save_every)->default_value(0), "write a checkpoint RUN/step_XXXXXXXX.h5 every N steps (0: off)")
    ("save-every-minutes", po::value(&cfg.save_every_minutes)->default_value(30), "and every M minutes of training (0: off)")
    ("keep", po::value(&cfg.keep)->default_value(2), "keep the newest K checkpoints (0: all)")
    ("resume", po::value(&cfg.resume), "auto: continue RUN from its newest valid checkpoint (a new run when it has none); or a checkpoint file / run directory to start from")
    ("max-time", po::value(&s.max_time), "wall-clock budget D-HH:MM:SS (or HH:MM:SS, MM:SS, or seconds): checkpoint and exit with status 124 before it runs out")
    ("max-skipped-steps", po::value(&cfg.max_skipped_steps)->default_value(10), "steps skipped for a non-finite loss or gradient norm before the run stops with an error")
    ("recompute", po::value(&s.recompute)->default_value("none"), "activation recomputation per layer: none (keep everything), selective (redo the norms' outputs and the SwiGLU product: no GEMM), full (keep each layer's input, redo its forward in the backward); results are bit-identical")
    ("precision", po::value(&s.precision)->default_value("fp32"), "storage precision of the model's parameters and activations: fp32, or bf16 (gradients and master weights stay fp32; on the CPU bf16 is emulated by rounding: the numerics of a bf16 GPU run, not its speed)")
    ("hang-timeout", po::value(&s.hang_timeout)->default_value("auto"), "abort the job with exit status 125 when no step completes within this time (seconds or D-HH:MM:SS; 0: off; auto: 20 median step times, at least 10 minutes)");
  if (pref) {
    desc.add_options()
      ("loss", po::value(&s.loss)->default_value("sigmoid"), "sigmoid | ipo | hinge | cdpo | robust | simpo | ... (TRL's formulas)")
      ("beta", po::value(&cfg.loss.beta)->default_value(0.1), "DPO beta")
      ("label-smoothing", po::value(&cfg.loss.label_smoothing)->default_value(0.0), "label smoothing (cdpo, robust)")
      ("simpo-gamma", po::value(&cfg.loss.simpo_gamma)->default_value(0.5), "SimPO target margin gamma")
      ("discopop-tau", po::value(&cfg.loss.discopop_tau)->default_value(0.05), "DiscoPOP temperature")
      ("wpo-alpha", po::value(&cfg.weight_opt.wpo_alpha)->default_value(1.0), "WPO weight exponent scale")
      ("margin-tau", po::value(&cfg.weight_opt.margin_tau)->default_value(1.0), "--weighting margin: w = sigmoid(margin / tau)")
      ("weighting", po::value(&s.weighting)->default_value("uniform"), "uniform | wpo | margin | column | metapo")
      ("weight-column", po::value(&cfg.weight_opt.column)->default_value("weight"), "dataset column for --weighting column")
      ("ref-model", po::value(&cfg.ref_model_dir), "reference model (default: --model): scores the pairs without stored reference log-probs, and must be the model stored ones came from (precompute-ref records it)")
      ("trust-stored-ref", po::bool_switch(&cfg.trust_stored_ref), "use the dataset's stored reference log-probs even when they came from another model than --ref-model")
      ("eval-every", po::value(&cfg.eval_every)->default_value(0), "evaluate on the validation split every N steps (0: never)")
      ("eval-pairs", po::value(&cfg.eval_pairs)->default_value(0), "validation pairs per evaluation (0: all)")
      ("track-pairs", po::value(&cfg.track_pairs)->default_value(4), "margin trajectories of K pairs per group (clean/easy, clean/hard, flipped) into RUN/trajectories.jsonl (0: off)")
      ("track-every", po::value(&cfg.track_every)->default_value(10), "steps between trajectory points")
      ("meta-interval", po::value(&cfg.meta.interval)->default_value(1), "MetaPO: a weight-net update every N steps")
      ("meta-warmup", po::value(&cfg.meta.warmup)->default_value(0), "MetaPO: steps before the first weight-net update (the first is step N+1, then every --meta-interval steps)")
      ("meta-lr", po::value(&cfg.meta.lr)->notifier([](double v) {
         // Not given leaves NaN, "by the run's length"; a given value must be a real one.
         MP_CHECK(std::isfinite(v) && v > 0, "--meta-lr must be finite and positive (got ", v, ")");
       }), "MetaPO: Adam learning rate of the weight net (default: 0.375 / the run's number of meta updates, so the net can move as far in one epoch as in three: 1e-3 for 375 updates, 3e-3 for 125)")
      ("meta-val-batch", po::value(&cfg.meta.val_batch)->default_value(8), "MetaPO: validation pairs per meta update (all ranks)")
      ("meta-apply", po::value(&cfg.meta.apply)->default_value("confidence"), "MetaPO: how the policy uses the weights: confidence (a_i in [0, 1] is the pair's label confidence: its loss mixed with the swapped pair's, (1+a)/2 l + (1-a)/2 l_swapped; a_i near 0 pulls the pair back to no preference instead of dropping it) or scale (the loss weighted by a_i and normalized by their sum, DESIGN 6)")
      ("meta-penalty", po::value(&cfg.meta.penalty)->notifier([](double v) {
         // Not given leaves NaN, "the default of --meta-apply"; a given value must be a real one.
         MP_CHECK(std::isfinite(v) && v >= 0, "--meta-penalty must be finite and >= 0 (got ", v, ")");
       }), "MetaPO: strength rho of the trust region (rho/2B) sum (w - 1)^2 that keeps the weights near uniform unless the alignments say otherwise (0: the plain first-order objective; default 0.2 with --meta-apply confidence, 0.5 with scale)")
      ("meta-precondition", po::value(&cfg.meta.precondition)->default_value(true), "MetaPO: precondition the validation gradient with Adam's second moment (true/false)")
      ("meta-hidden", po::value(&cfg.meta.hidden)->default_value(32), "MetaPO: weight-net hidden width")
      ("meta-gate", po::value(&cfg.meta.gate)->default_value(2), "MetaPO: significance gate Z: the policy trains on uniform weights until T, the t statistic of the running correlation of the weights with the alignments, exceeds Z, then on a^g with g = 1 - 1/T^2 (0: off, g = 1: the weights as learned)")
      ("meta-gate-ema", po::value(&cfg.meta.gate_ema)->default_value(0.02), "MetaPO: EMA rate over meta steps of the gate's correlation statistics, in (0, 1]")
      ("weight-floor", po::value(&cfg.meta.a_min)->default_value(1e-3), "MetaPO: a_min, the floor of the raw weights")
      ("meta-features", po::value(&cfg.meta.features)->default_value("all"), "MetaPO feature ablation: all | temporal | instantaneous")
      ("hypergrad", po::value(&cfg.meta.hypergrad)->default_value("ghost"), "MetaPO: ghost | exact (per-pair backward) | fd (finite difference along the validation gradient)")
      ("stats-ema", po::value(&cfg.meta.ema_rate)->default_value(0.1), "MetaPO: EMA rate of the pair statistics")
      ("stats-refresh-every", po::value(&cfg.meta.refresh_every)->default_value(0), "MetaPO: score a window of training pairs forward-only every N steps (0: off)")
      ("stats-refresh-pairs", po::value(&cfg.meta.refresh_pairs)->default_value(0), "MetaPO: training pairs per refresh (the window rotates through the split)")
      ("meta-trace", po::value(&cfg.meta.trace_path), "MetaPO diagnostics: one JSON line per meta step (every pair's sample id, features, weight, alignment) into this new file; an existing one is refused unless it is this run's own trace, which a resume continues");
  }
}

void finish_train_options(TrainConfig& cfg, const TrainOptionStrings& s, bool pref, int argc, char** argv) {
  // Everything an option alone can get wrong, before the run directory exists or anything is loaded.
  MP_CHECK(!cfg.model_dir.empty(), "--model must not be empty");
  MP_CHECK(!cfg.data_path.empty(), "--data must not be empty");
  MP_CHECK(!cfg.out_dir.empty(), "--out must not be empty");
  const AdamWConfig& a = cfg.adam;
  MP_CHECK(std::isfinite(a.lr) && a.lr > 0, "--lr ", a.lr, ": must be finite and positive");
  MP_CHECK(std::isfinite(a.weight_decay) && a.weight_decay >= 0, "--weight-decay ", a.weight_decay,
           ": must be finite and >= 0");
  MP_CHECK(a.beta1 >= 0 && a.beta1 < 1, "--adam-beta1 ", a.beta1, ": must be in [0, 1)");
  MP_CHECK(a.beta2 >= 0 && a.beta2 < 1, "--adam-beta2 ", a.beta2, ": must be in [0, 1)");
  MP_CHECK(std::isfinite(a.eps) && a.eps > 0, "--adam-eps ", a.eps, ": must be finite and positive");
  MP_CHECK(cfg.sched.kind == "cosine" || cfg.sched.kind == "linear" || cfg.sched.kind == "constant", "--lr-schedule ",
           cfg.sched.kind, ": unknown (valid: cosine, linear, constant)");
  MP_CHECK(cfg.sched.warmup_steps >= 0, "--warmup-steps ", cfg.sched.warmup_steps, ": must be >= 0");
  MP_CHECK(cfg.sched.min_lr_ratio >= 0 && cfg.sched.min_lr_ratio <= 1, "--min-lr-ratio ", cfg.sched.min_lr_ratio,
           ": must be in [0, 1]");
  MP_CHECK(std::isfinite(cfg.max_grad_norm) && cfg.max_grad_norm >= 0, "--max-grad-norm ", cfg.max_grad_norm,
           ": must be finite and >= 0 (0: off)");
  check_save_dtype(cfg.save_dtype, "--save-dtype", true);
  MP_CHECK(cfg.epochs >= 0 && cfg.max_steps >= 0, "--epochs and --max-steps must be >= 0");
  MP_CHECK(cfg.epochs > 0 || cfg.max_steps > 0, "--epochs or --max-steps must be positive");
  MP_CHECK(cfg.warmup_ratio >= 0 && cfg.warmup_ratio < 1, "--warmup-ratio must be in [0, 1)");
  MP_CHECK(cfg.save_every >= 0, "--save-every must be >= 0");
  MP_CHECK(cfg.save_every_minutes >= 0, "--save-every-minutes must be >= 0");
  MP_CHECK(cfg.keep >= 0, "--keep must be >= 0");
  MP_CHECK(cfg.max_skipped_steps >= 0, "--max-skipped-steps must be >= 0");
  MP_CHECK(cfg.micro_batch_tokens >= 0, "--micro-batch-tokens must be >= 0");
  MP_CHECK(cfg.truncation.max_length >= 0, "--max-length must be >= 0");
  MP_CHECK(cfg.truncation.max_prompt_length >= 0, "--max-prompt-length must be >= 0");
  MP_CHECK(s.truncation_mode == "keep_end" || s.truncation_mode == "keep_start", "--truncation-mode ",
           s.truncation_mode, ": unknown (valid: keep_end, keep_start)");
  cfg.truncation.keep_end = s.truncation_mode == "keep_end";
  if (!s.max_time.empty()) {
    cfg.max_time_s = parse_duration(s.max_time, "--max-time");
    MP_CHECK(cfg.max_time_s > 0, "--max-time ", s.max_time, ": must be positive");
  }
  cfg.hang_timeout_s = s.hang_timeout == "auto" ? -1.0 : parse_duration(s.hang_timeout, "--hang-timeout");
  cfg.recompute = parse_recompute(s.recompute);
  cfg.precision = parse_precision(s.precision);
  if (pref) {
    MP_CHECK(cfg.eval_every >= 0, "--eval-every ", cfg.eval_every, ": must be >= 0 (0: never)");
    MP_CHECK(cfg.eval_pairs >= 0, "--eval-pairs ", cfg.eval_pairs, ": must be >= 0 (0: all)");
    MP_CHECK(cfg.track_pairs >= 0, "--track-pairs ", cfg.track_pairs, ": must be >= 0 (0: off)");
    MP_CHECK(cfg.track_every >= 1, "--track-every ", cfg.track_every, ": must be at least 1");
    cfg.loss.type = parse_loss(s.loss);
    cfg.weighting = parse_weighting(s.weighting);
    validate(cfg.loss);
    if (cfg.weighting != Weighting::Metapo) validate(cfg.weighting, cfg.weight_opt);
    if (cfg.weighting == Weighting::Metapo) validate(cfg.meta);
  }
  cfg.command_line = "metapo";
  for (int i = 0; i < argc; ++i) cfg.command_line += std::string(" ") + argv[i];
}

}  // namespace metapo::cli
