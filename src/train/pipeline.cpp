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
  // The stage's forward of micro-batch mb: out is logp (last stage) or sent on.
  void forward(const float* params, const PipeMicro& mb, std::vector<float>& xin, std::vector<float>& out) {
    const size_t n = size_t(mb.batch.n_tokens());
    const PipeStage& st = model.stage();
    if (!st.first) xin.resize(n * C), pp->recv(xin.data(), n * C, s - 1);
    out.resize(st.last ? n : n * C);
    model.forward_stage(params, mb.batch, st.last ? mb.targets.data() : nullptr, xin.data(), out.data());
    if (!st.last) pp->send(out.data(), n * C, s + 1);
  }
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
  std::vector<float> xin, out, dy, dx;
  auto F = [&](size_t m) {
    model.use_slot(int(m % size_t(slots)));
    io.forward(params, mbs[m], xin, out);
    if (st.last) dlogp[m] = loss(m, out);
  };
  auto B = [&](size_t m) {
    model.use_slot(int(m % size_t(slots)));
    const size_t n = size_t(mbs[m].batch.n_tokens());
    const float* dout = dlogp[m].data();
    if (!st.last) dy.resize(n * io.C), io.pp->recv(dy.data(), n * io.C, io.s + 1), dout = dy.data();
    if (!st.first) dx.resize(n * io.C);
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
  std::vector<float> xin, out;
  for (size_t m = 0; m < mbs.size(); ++m) {
    io.forward(params, mbs[m], xin, out);
    if (model.stage().last) on_logp(m, out);
  }
  if (io.pp) io.pp->wait_sends();
}

}  // namespace metapo
