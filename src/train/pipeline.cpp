#include "metapo/train/pipeline.h"

#include <algorithm>

#include "metapo/core/error.h"

namespace metapo {

namespace {

struct StageIo {
  LlamaModel<float>& model;
  Comm* pp;
  int P, s;
  size_t C;
  StageIo(LlamaModel<float>& m, Comm* p)
      : model(m), pp(p && p->size() > 1 ? p : nullptr), P(pp ? pp->size() : 1), s(pp ? pp->rank() : 0),
        C(size_t(m.config().hidden_size)) {
    const PipeStage& st = m.stage();
    MP_CHECK(st.first == (s == 0) && st.last == (s == P - 1), "pipeline: the model's stage (layers [",
             st.layer_begin, ", ", st.layer_end, ")) does not match rank ", s, " of ", P, " stages");
  }
  // The stage's forward of micro-batch mb: into logp on the last stage, else into xout, sent on.
  void forward(const float* params, const PipeMicro& mb, std::vector<float>& logp) {
    const size_t n = size_t(mb.batch.n_tokens());
    const PipeStage& st = model.stage();
    if (!st.first) resize_for_overwrite(xin, n * C), pp->recv(xin.data(), n * C, s - 1);
    float* out = nullptr;
    if (st.last)
      logp.resize(n), out = logp.data();
    else
      resize_for_overwrite(xout, n * C), out = xout.data();
    model.forward_stage(params, mb.batch, st.last ? mb.targets.data() : nullptr, xin.data(), out);
    if (!st.last) pp->send(xout.data(), n * C, s + 1);
  }
  // The residual stream in and out of the stage, [n, hidden], and its gradients (counted as comm).
  Buffer<float> xin = tagged_buffer<float>(Mem::Comm), xout = tagged_buffer<float>(Mem::Comm);
  Buffer<float> dy = tagged_buffer<float>(Mem::Comm), dx = tagged_buffer<float>(Mem::Comm);
};

}  // namespace

void pipeline_train(LlamaModel<float>& model, Comm* pp_in, const float* params, float* grads,
                    const std::vector<PipeMicro>& mbs, const PipeLossFn& loss, const float* ghat,
                    std::vector<std::vector<double>>* seq_dots) {
  StageIo io(model, pp_in);
  const PipeStage& st = model.stage();
  const size_t M = mbs.size();
  const size_t warm = std::min(size_t(io.P - io.s - 1), M);
  const int slots = int(std::max<size_t>(1, std::min(size_t(io.P - io.s), M)));
  model.set_slots(slots);
  MP_CHECK(!ghat || seq_dots, "pipeline_train: ghat given without seq_dots");
  if (seq_dots) seq_dots->assign(M, {});
  std::vector<std::vector<float>> dlogp(M);  // last stage: from forward to backward
  std::vector<float> logp;
  Buffer<float>&dy = io.dy, &dx = io.dx;
  auto F = [&](size_t m) {
    model.use_slot(int(m % size_t(slots)));
    io.forward(params, mbs[m], logp);
    if (st.last) dlogp[m] = loss(m, logp);
  };
  auto B = [&](size_t m) {
    model.use_slot(int(m % size_t(slots)));
    const size_t n = size_t(mbs[m].batch.n_tokens());
    const float* dout = dlogp[m].data();
    if (!st.last) resize_for_overwrite(dy, n * io.C), io.pp->recv(dy.data(), n * io.C, io.s + 1), dout = dy.data();
    if (!st.first) resize_for_overwrite(dx, n * io.C);
    model.backward_stage(params, dout, grads, /*accumulate=*/m > 0, ghat, ghat ? &(*seq_dots)[m] : nullptr,
                         st.first ? nullptr : dx.data());
    if (!st.first) io.pp->send(dx.data(), n * io.C, io.s - 1);
    std::vector<float>().swap(dlogp[m]);
  };
  for (size_t i = 0; i < warm; ++i) F(i);
  for (size_t i = 0; i + warm < M; ++i) F(warm + i), B(i);
  for (size_t i = M - warm; i < M; ++i) B(i);
  if (!io.pp) return;
  io.pp->wait_sends();
  if (ghat) {
    // Each stage holds its layers' share of every sequence's dot: one all-reduce sums them.
    std::vector<double> all;
    for (const auto& d : *seq_dots) all.insert(all.end(), d.begin(), d.end());
    io.pp->allreduce_sum(all.data(), all.size());
    size_t at = 0;
    for (auto& d : *seq_dots) std::copy(all.begin() + long(at), all.begin() + long(at + d.size()), d.begin()), at += d.size();
  }
}

void pipeline_forward(LlamaModel<float>& model, Comm* pp_in, const float* params, const std::vector<PipeMicro>& mbs,
                      const PipeLogpFn& on_logp) {
  StageIo io(model, pp_in);
  model.set_slots(1);
  std::vector<float> logp;
  for (size_t m = 0; m < mbs.size(); ++m) {
    io.forward(params, mbs[m], logp);
    if (model.stage().last) on_logp(m, logp);
  }
  if (io.pp) io.pp->wait_sends();
}

}  // namespace metapo
