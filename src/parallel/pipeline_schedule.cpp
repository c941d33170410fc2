#include "metapo/parallel/pipeline_schedule.h"

#include <algorithm>

#include "metapo/core/buffer.h"

namespace metapo {

namespace {

// A stage's place in the pipeline and the four message buffers (counted as comm by the accountant):
// the input received and the output sent forward, the gradient received and the one sent backward.
struct Stage {
  explicit Stage(Comm* p) : pp(p && p->size() > 1 ? p : nullptr), P(pp ? pp->size() : 1), s(pp ? pp->rank() : 0) {}
  Comm* pp;
  int P, s;
  bool first() const { return s == 0; }
  bool last() const { return s == P - 1; }
  Buffer<float> xin = tagged_buffer<float>(Mem::Comm), xout = tagged_buffer<float>(Mem::Comm);
  Buffer<float> dy = tagged_buffer<float>(Mem::Comm), dx = tagged_buffer<float>(Mem::Comm);

  void forward(const StageFns& f, size_t m, int slot) {
    const size_t n = f.boundary(m);
    if (!first()) resize_for_overwrite(xin, n), pp->recv(xin.data(), n, s - 1);
    if (!last()) resize_for_overwrite(xout, n);
    f.forward(m, slot, first() ? nullptr : xin.data(), last() ? nullptr : xout.data());
    if (!last()) pp->send(xout.data(), n, s + 1);
  }
  void backward(const StageFns& f, size_t m, int slot) {
    const size_t n = f.boundary(m);
    if (!last()) resize_for_overwrite(dy, n), pp->recv(dy.data(), n, s + 1);
    if (!first()) resize_for_overwrite(dx, n);
    f.backward(m, slot, last() ? nullptr : dy.data(), first() ? nullptr : dx.data());
    if (!first()) pp->send(dx.data(), n, s - 1);
  }
};

}  // namespace

int pipeline_slots(int P, int s, size_t M) { return int(std::max<size_t>(1, std::min(size_t(P - s), M))); }

void run_1f1b(Comm* pp, size_t M, const StageFns& fns) {
  Stage st(pp);
  const size_t warm = std::min(size_t(st.P - st.s - 1), M);
  const int slots = pipeline_slots(st.P, st.s, M);
  auto slot = [&](size_t m) { return int(m % size_t(slots)); };
  for (size_t i = 0; i < warm; ++i) st.forward(fns, i, slot(i));
  for (size_t i = 0; i + warm < M; ++i) st.forward(fns, warm + i, slot(warm + i)), st.backward(fns, i, slot(i));
  for (size_t i = M - warm; i < M; ++i) st.backward(fns, i, slot(i));
  if (st.pp) st.pp->wait_sends();
}

void run_forward_only(Comm* pp, size_t M, const StageFns& fns) {
  Stage st(pp);
  for (size_t m = 0; m < M; ++m) st.forward(fns, m, 0);
  if (st.pp) st.pp->wait_sends();
}

}  // namespace metapo
