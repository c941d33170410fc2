#include "metapo/train/pipeline.h"

#include <algorithm>
#include <memory>

#include "metapo/core/error.h"
#include "metapo/parallel/pipeline_schedule.h"

namespace metapo {

namespace {

// The pipeline group when it has more than one stage (else null), checked against the model's stage.
Comm* stage_group(const LlamaModel<float>& model, Comm* pp_in) {
  Comm* pp = pp_in && pp_in->size() > 1 ? pp_in : nullptr;
  const int P = pp ? pp->size() : 1, s = pp ? pp->rank() : 0;
  const PipeStage& st = model.stage();
  MP_CHECK(st.first == (s == 0) && st.last == (s == P - 1), "pipeline: the model's stage (layers [",
           st.layer_begin, ", ", st.layer_end, ")) does not match rank ", s, " of ", P, " stages");
  return pp;
}

// The stage callbacks both passes share: the boundary of micro-batch m ([n_tokens, hidden]) and its
// forward, into x_out or, on the last stage, into logp handed to on_logp.
void bind_forward(StageFns& f, LlamaModel<float>& model, const float* params, const std::vector<PipeMicro>& mbs,
                  std::vector<float>& logp, const std::function<void(size_t, const std::vector<float>&)>& on_logp) {
  const size_t C = size_t(model.config().hidden_size);
  const bool last = model.stage().last;
  f.boundary = [&mbs, C](size_t m) { return size_t(mbs[m].batch.n_tokens()) * C; };
  // On a device the log-probs are written there and copied back for on_logp (the pair losses and
  // sums are host arithmetic on a few numbers per sequence).
  auto dev_logp = std::make_shared<ops::DeviceArray<float>>(model.device(), Mem::Activations);
  f.forward = [&model, params, &mbs, &logp, on_logp, last, dev_logp](size_t m, int slot, const float* x_in,
                                                                      float* x_out) {
    model.use_slot(slot);
    if (!last) {
      model.forward_stage(params, mbs[m].batch, nullptr, x_in, x_out);
      return;
    }
    const size_t n = size_t(mbs[m].batch.n_tokens());
    logp.resize(n);
    if (model.device() == Device::CPU) {
      model.forward_stage(params, mbs[m].batch, mbs[m].targets.data(), x_in, logp.data());
    } else {
      dev_logp->resize_for_overwrite(n);
      model.forward_stage(params, mbs[m].batch, mbs[m].targets.data(), x_in, dev_logp->data());
      ops::to_host(model.context(), logp.data(), dev_logp->data(), n * sizeof(float));
    }
    on_logp(m, logp);
  };
}

}  // namespace

void pipeline_train(LlamaModel<float>& model, Comm* pp_in, const float* params, float* grads,
                    const std::vector<PipeMicro>& mbs, const PipeLossFn& loss, const float* ghat,
                    std::vector<std::vector<double>>* seq_dots) {
  Comm* pp = stage_group(model, pp_in);
  const PipeStage& st = model.stage();
  const size_t M = mbs.size();
  model.set_slots(pipeline_slots(pp ? pp->size() : 1, pp ? pp->rank() : 0, M));
  MP_CHECK(!ghat || seq_dots, "pipeline_train: ghat given without seq_dots");
  // On a device (one stage: LlamaModel refuses pipeline stages there) params, grads and ghat are
  // device memory and each micro-batch's dL/dlogp is copied there before its backward.
  const bool on_device = model.device() != Device::CPU;
  if (seq_dots) seq_dots->assign(M, {});
  std::vector<std::vector<float>> dlogp(M);  // last stage: from forward to backward
  ops::DeviceArray<float> dev_dlogp(model.device(), Mem::Activations);
  std::vector<float> logp;
  StageFns f;
  bind_forward(f, model, params, mbs, logp, [&](size_t m, const std::vector<float>& lp) { dlogp[m] = loss(m, lp); });
  f.backward = [&](size_t m, int slot, const float* dy, float* dx) {
    model.use_slot(slot);
    const float* d = st.last ? dlogp[m].data() : dy;
    if (on_device && st.last) {
      dev_dlogp.resize_for_overwrite(dlogp[m].size());
      ops::to_device(model.context(), dev_dlogp.data(), dlogp[m].data(), dlogp[m].size() * sizeof(float));
      d = dev_dlogp.data();
    }
    model.backward_stage(params, d, grads, /*accumulate=*/m > 0, ghat, ghat ? &(*seq_dots)[m] : nullptr, dx);
    std::vector<float>().swap(dlogp[m]);
  };
  run_1f1b(pp, M, f);
  if (pp && ghat) {
    // Each stage holds its layers' share of every sequence's dot: one all-reduce sums them.
    std::vector<double> all;
    for (const auto& d : *seq_dots) all.insert(all.end(), d.begin(), d.end());
    pp->allreduce_sum(all.data(), all.size());
    size_t at = 0;
    for (auto& d : *seq_dots) std::copy(all.begin() + long(at), all.begin() + long(at + d.size()), d.begin()), at += d.size();
  }
}

void pipeline_forward(LlamaModel<float>& model, Comm* pp_in, const float* params, const std::vector<PipeMicro>& mbs,
                      const PipeLogpFn& on_logp) {
  Comm* pp = stage_group(model, pp_in);
  model.set_slots(1);
  std::vector<float> logp;
  StageFns f;
  bind_forward(f, model, params, mbs, logp, on_logp);
  run_forward_only(pp, mbs.size(), f);
}

}  // namespace metapo
