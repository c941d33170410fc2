// The ops dispatch (ops/ops.h): each op goes to the backend of its context's device. The CPU backend is
// kernels/cpu; the CUDA backend (kernels/cuda, built when nvcc is found: METAPO_HAVE_CUDA) has a kernel
// for every op in fp32 (MP_DISPATCH_CUDA); fp64 (the CPU's finite-difference checks) is refused on a
// CUDA context with one line naming the op. On a CUDA context every pointer an op takes is device
// memory (index arrays included, and the decode attention's arrays of cache-row pointers), except
// blocks_to_columns' column table and the rope table (a host RopeTable whose device copy the dispatch
// makes on first use).
#include <algorithm>
#include <cstring>
#include <type_traits>

#include "metapo/core/error.h"
#include "metapo/kernels/attention.h"
#include "metapo/kernels/decode.h"
#include "metapo/kernels/embedding.h"
#include "metapo/kernels/gemm.h"
#include "metapo/kernels/logprob.h"
#include "metapo/kernels/optim.h"
#include "metapo/kernels/rmsnorm.h"
#include "metapo/kernels/rope.h"
#include "metapo/kernels/swiglu.h"
#include "metapo/kernels/tensor.h"
#include "metapo/ops/ops.h"
#ifdef METAPO_HAVE_CUDA
#include <memory>

#include "metapo/kernels/cuda.h"
#endif

namespace metapo::ops {

const char* backends() {
#ifdef METAPO_HAVE_CUDA
  return "cpu, cuda";
#else
  return "cpu";
#endif
}

void require_device(Device d, const char* option) {
  if (d == Device::CPU) return;
#ifdef METAPO_HAVE_CUDA
  MP_CHECK(cuda::device_available(), option, " ", device_name(d), ": no CUDA device is visible to this process");
#else
  fail(option, " ", device_name(d), ": this build has no ", device_name(d), " backend (built with: ", backends(), ")");
#endif
}

void select_device(Device d, int local_rank) {
#ifdef METAPO_HAVE_CUDA
  if (d == Device::CUDA) cuda::select_device(local_rank);
#else
  (void)d, (void)local_rank;
#endif
}

std::string device_description(Device d) {
#ifdef METAPO_HAVE_CUDA
  if (d == Device::CUDA) return cuda::device_name();
#endif
  return device_name(d);
}

double bf16_peak_flops(const std::string& card) {
  auto has = [&card](const char* s) { return card.find(s) != std::string::npos; };
  if (has("H100")) return has("PCIe") ? 756e12 : 989e12;
  if (has("H200")) return 989e12;
  if (has("A100")) return 312e12;
  return 0;
}

void synchronize(const Context& ctx) {
#ifdef METAPO_HAVE_CUDA
  if (ctx.device == Device::CUDA) cuda::synchronize(ctx.stream);
#else
  (void)ctx;
#endif
}

DeviceContext::DeviceContext(Device d) {
  require_device(d);
  ctx_.device = d;
#ifdef METAPO_HAVE_CUDA
  if (d == Device::CUDA) ctx_.blas = cuda::blas_create();
#endif
}

DeviceContext::~DeviceContext() {
#ifdef METAPO_HAVE_CUDA
  if (ctx_.blas) cuda::blas_destroy(ctx_.blas);
#endif
}

namespace {

[[noreturn]] void no_backend(const Context& ctx, const char* op) {
#ifdef METAPO_HAVE_CUDA
  if (ctx.device == Device::CUDA) fail("op ", op, ": the cuda backend has no kernel for it (or for this element type) yet");
#endif
  fail("op ", op, ": this build has no ", device_name(ctx.device), " backend (built with: ", backends(), ")");
}

#ifdef METAPO_HAVE_CUDA
cuda::BlasCall blas_call(const Context& ctx) { return {ctx.blas, ctx.gemm_inputs == DType::BF16}; }
#endif

}  // namespace

// Runs `cpu_call` on the CPU; any other device has no kernel for the op.
#define MP_DISPATCH(op, cpu_call)  \
  switch (ctx.device) {            \
    case Device::CPU:              \
      cpu_call;                    \
      return;                      \
    default:                       \
      no_backend(ctx, op);         \
  }

// Runs `cpu_call` on the CPU and `cuda_call` on a CUDA device when the element type T is float (the
// CUDA kernels are fp32 and bf16; fp64 is the CPU's, for the tests).
#ifdef METAPO_HAVE_CUDA
#define MP_DISPATCH_CUDA(op, cpu_call, cuda_call)  \
  switch (ctx.device) {                            \
    case Device::CPU:                              \
      cpu_call;                                    \
      return;                                      \
    case Device::CUDA:                             \
      if constexpr (std::is_same_v<T, float>) {    \
        cuda_call;                                 \
        return;                                    \
      }                                            \
      no_backend(ctx, op);                         \
    default:                                       \
      no_backend(ctx, op);                         \
  }
#else
#define MP_DISPATCH_CUDA(op, cpu_call, cuda_call) MP_DISPATCH(op, cpu_call)
#endif

// ---- device buffers and the arena ----

DeviceBuffer::DeviceBuffer(Device device, size_t bytes, Mem category) : device_(device), category_(category) {
  resize_for_overwrite(bytes);
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    release();
    device_ = o.device_, category_ = o.category_, data_ = o.data_, bytes_ = o.bytes_;
    o.data_ = nullptr, o.bytes_ = 0;
  }
  return *this;
}

void DeviceBuffer::release() {
  if (!data_) return;
  switch (device_) {
    case Device::CPU:
      HugePageAllocator<uint8_t>(category_).deallocate(data_, bytes_);
      break;
    case Device::CUDA:
#ifdef METAPO_HAVE_CUDA
      cuda::device_free(data_);
      mem_add(category_, -int64_t(bytes_));
#endif
      break;
  }
  data_ = nullptr, bytes_ = 0;
}

void DeviceBuffer::resize_for_overwrite(size_t bytes) {
  if (bytes <= bytes_ && data_) return;
  release();
  if (bytes == 0) return;
  switch (device_) {
    case Device::CPU:
      data_ = HugePageAllocator<uint8_t>(category_).allocate(bytes);  // counts itself
      break;
    case Device::CUDA:
#ifdef METAPO_HAVE_CUDA
      data_ = static_cast<uint8_t*>(cuda::device_alloc(bytes));
      mem_add(category_, int64_t(bytes));
      break;
#else
      fail("a cuda buffer: this build has no cuda backend (built with: ", backends(), ")");
#endif
  }
  bytes_ = bytes;
}

namespace {
constexpr size_t kAlign = 16;  // CPU blocks come from malloc (16-byte aligned), CUDA ones from cudaMalloc (256)
size_t aligned(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }
}  // namespace

DeviceBuffer& Arena::main() {
  if (blocks_.empty()) blocks_.emplace_back(device_, 0);
  return blocks_[0];
}

void Arena::reserve(std::initializer_list<size_t> piece_bytes) {
  MP_CHECK(used_ == 0 && overflow_ == 0, "Arena::reserve after pieces were handed out");
  size_t total = 0;
  for (size_t b : piece_bytes) total += aligned(b);
  main().resize_for_overwrite(total);
}

void* Arena::alloc_bytes(size_t bytes) {
  bytes = aligned(bytes);
  DeviceBuffer& m = main();
  // Nothing handed out since the last reset: the main block may simply grow (its old bytes are freed
  // first, so the two are never held together).
  if (used_ == 0 && overflow_ == 0) m.resize_for_overwrite(bytes);
  if (used_ + bytes <= m.size()) {
    void* p = m.data() + used_;
    used_ += bytes;
    return p;
  }
  // Overflow: a block of its own (the main block's pieces handed out stay valid), merged at reset().
  blocks_.emplace_back(device_, bytes);
  overflow_ += bytes;
  return blocks_.back().data();
}

void Arena::reset() {
  if (overflow_ > 0) {  // one block for all that the last sequence of calls needed
    const size_t want = used_ + overflow_;
    blocks_.resize(1);
    blocks_[0].resize_for_overwrite(want);
  }
  used_ = overflow_ = 0;
}

size_t Arena::capacity() const {
  size_t c = 0;
  for (const DeviceBuffer& b : blocks_) c += b.size();
  return c;
}

// ---- GEMMs ----

template <typename T>
void gemm(const Context& ctx, const Gemm<T>& a) {
  MP_DISPATCH_CUDA("gemm", cpu::gemm<T>(a.ta, a.tb, a.M, a.N, a.K, a.alpha, a.A, a.lda, a.B, a.ldb, a.beta, a.C, a.ldc),
                   cuda::gemm(blas_call(ctx), a.ta, a.tb, a.M, a.N, a.K, a.alpha, a.A, a.lda, a.B, a.ldb, a.beta, a.C, a.ldc,
                              nullptr, ctx.stream));
}

template <typename T>
void linear_forward(const Context& ctx, const Linear<T>& a) {
  MP_DISPATCH_CUDA("linear_forward", cpu::linear_forward(a.y, a.x, a.w, a.b, a.rows, a.in, a.out),
                   cuda::linear_forward(blas_call(ctx), a.y, a.x, a.w, a.b, a.rows, a.in, a.out, ctx.stream));
}

template <typename T>
void linear_backward(const Context& ctx, const LinearGrad<T>& a) {
  if (a.ghat_w) {
    MP_CHECK(a.seg && a.rdot, "linear_backward: ghost dots need segments and rdot");
    MP_DISPATCH_CUDA("linear_backward",
                     cpu::linear_backward_ghost(a.dx, a.dw, a.db, a.dy, a.x, a.w, a.rows, a.in, a.out, a.accumulate,
                                                a.ghat_w, a.ghat_b, a.seg, a.n_seg, a.rdot),
                     {
                       cuda::linear_ghost_dots(blas_call(ctx), a.x, a.dy, a.ghat_w, a.ghat_b, a.rows, a.in, a.out, a.seg,
                                               a.n_seg, a.rdot, ctx.stream);
                       cuda::linear_backward(blas_call(ctx), a.dx, a.dw, a.db, a.dy, a.x, a.w, a.rows, a.in, a.out,
                                             a.accumulate, ctx.stream);
                     });
  }
  MP_DISPATCH_CUDA("linear_backward",
                   cpu::linear_backward(a.dx, a.dw, a.db, a.dy, a.x, a.w, a.rows, a.in, a.out, a.accumulate),
                   cuda::linear_backward(blas_call(ctx), a.dx, a.dw, a.db, a.dy, a.x, a.w, a.rows, a.in, a.out, a.accumulate,
                                         ctx.stream));
}

void linear_rows(const Context& ctx, const Linear<float>& a) {
  using T = float;
  MP_DISPATCH_CUDA("linear_rows", cpu::linear_rows(a.y, a.x, a.w, a.b, a.rows, a.in, a.out),
                   cuda::linear_rows(a.y, a.x, a.w, a.b, a.rows, a.in, a.out, ctx.stream));
}

// ---- normalization, position, activation ----

template <typename T>
void rmsnorm_forward(const Context& ctx, const RmsNorm<T>& a) {
  MP_DISPATCH_CUDA("rmsnorm_forward", cpu::rmsnorm_forward(a.y, a.rstd, a.x, a.w, a.rows, a.C, a.eps),
                   cuda::rmsnorm_forward(a.y, a.rstd, a.x, a.w, a.rows, a.C, a.eps, ctx.stream));
}

template <typename T>
void rmsnorm_backward(const Context& ctx, const RmsNormGrad<T>& a) {
  MP_DISPATCH_CUDA("rmsnorm_backward", cpu::rmsnorm_backward(a.dx, a.dw, a.dy, a.x, a.w, a.rstd, a.rows, a.C, a.accumulate),
                   cuda::rmsnorm_backward(a.dx, a.dw, a.dy, a.x, a.w, a.rstd, a.rows, a.C, a.accumulate, ctx.stream));
}

template <typename T>
void rmsnorm_ghost_dots(const Context& ctx, const RmsNormGhost<T>& a) {
  MP_DISPATCH_CUDA("rmsnorm_ghost_dots", cpu::rmsnorm_ghost_dots(a.dy, a.x, a.rstd, a.ghat_w, a.rows, a.C, a.rdot),
                   cuda::rmsnorm_ghost_dots(a.dy, a.x, a.rstd, a.ghat_w, a.rows, a.C, a.rdot, ctx.stream));
}

#ifdef METAPO_HAVE_CUDA
namespace {
// The device copy of a rope table, [cos | sin], made on first use and kept with the table.
const float* device_rope_table(const RopeTable<float>& t, void* stream) {
  if (!t.device_copy) {
    const size_t n = t.cos.size();
    auto* p = static_cast<float*>(cuda::device_alloc(2 * n * sizeof(float)));
    t.device_copy = std::shared_ptr<void>(p, cuda::device_free);
    cuda::to_device(p, t.cos.data(), n * sizeof(float), stream);
    cuda::to_device(p + n, t.sin.data(), n * sizeof(float), stream);
  }
  return static_cast<const float*>(t.device_copy.get());
}
}  // namespace
#endif

template <typename T>
void rope(const Context& ctx, const Rope<T>& a) {
  MP_DISPATCH_CUDA("rope", cpu::rope_apply(a.x, a.rows, a.heads, a.D, a.ld, a.pos, *a.table, a.inverse), {
    const float* tab = device_rope_table(*a.table, ctx.stream);
    cuda::rope(a.x, a.rows, a.heads, a.D, a.ld, a.pos, tab, tab + a.table->cos.size(), a.inverse, ctx.stream);
  });
}

template <typename T>
void swiglu_forward(const Context& ctx, const SwiGlu<T>& a) {
  MP_DISPATCH_CUDA("swiglu_forward", cpu::swiglu_forward(a.h, a.gu, a.rows, a.I),
                   cuda::swiglu_forward(a.h, a.gu, a.rows, a.I, ctx.stream));
}

template <typename T>
void swiglu_backward(const Context& ctx, const SwiGluGrad<T>& a) {
  MP_DISPATCH_CUDA("swiglu_backward", cpu::swiglu_backward(a.dgu, a.dh, a.gu, a.rows, a.I),
                   cuda::swiglu_backward(a.dgu, a.dh, a.gu, a.rows, a.I, ctx.stream));
}

// ---- attention ----

namespace {
template <typename T>
cpu::AttentionParams<T> cpu_attention(const Attention<T>& a) {
  return {a.q,      a.k,          a.v,       a.ld_qkv,  a.out,      a.ld_out,     a.lse,
          a.cu_seqlens, a.n_seqs, a.n_tokens, a.n_heads, a.n_kv_heads, a.head_dim, a.scale};
}

#ifdef METAPO_HAVE_CUDA
cuda::AttentionArgs cuda_attention(const Attention<float>& a) {
  return {a.q,          a.k,      a.v,        a.ld_qkv,  a.out,        a.ld_out,     a.lse,
          a.cu_seqlens, a.n_seqs, a.n_tokens, a.n_heads, a.n_kv_heads, a.head_dim, a.scale, a.max_seqlen};
}

// bf16 training on CUDA: cuDNN's fused attention where it takes the shape, else the plain kernel.
bool fused(const Context& ctx) { return ctx.fused_attention && ctx.gemm_inputs == DType::BF16; }

void cuda_attention_forward(const Context& ctx, const cuda::AttentionArgs& a) {
  if (!(fused(ctx) && cuda::cudnn_attention_forward(a, ctx.stream))) cuda::attention_forward(a, ctx.stream);
}

void cuda_attention_backward(const Context& ctx, const cuda::AttentionArgs& f, const AttentionGrad<float>& a) {
  if (!(fused(ctx) && cuda::cudnn_attention_backward(f, a.dout, a.dq, a.dk, a.dv, a.ld_dqkv, ctx.stream)))
    cuda::attention_backward(f, a.dout, a.dq, a.dk, a.dv, a.ld_dqkv, ctx.stream);
}
#endif
}  // namespace

std::string attention_description(const Context& ctx) {
#ifdef METAPO_HAVE_CUDA
  if (ctx.device == Device::CUDA) return fused(ctx) ? cuda::cudnn_attention_status() : "plain kernel (fp32)";
#endif
  return device_name(ctx.device);
}

template <typename T>
void attention_forward(const Context& ctx, const Attention<T>& a) {
  MP_DISPATCH_CUDA("attention_forward", cpu::attention_forward(cpu_attention(a)),
                   cuda_attention_forward(ctx, cuda_attention(a)));
}

template <typename T>
void attention_backward(const Context& ctx, const Attention<T>& fwd, const AttentionGrad<T>& a) {
  MP_DISPATCH_CUDA("attention_backward",
                   cpu::attention_backward(cpu_attention(fwd),
                                           cpu::AttentionGradParams<T>{a.dout, a.dq, a.dk, a.dv, a.ld_dqkv}),
                   cuda_attention_backward(ctx, cuda_attention(fwd), a));
}

void decode_attention(const Context& ctx, const DecodeAttention& a) {
  using T = float;
  MP_DISPATCH_CUDA("decode_attention",
                   cpu::decode_attention(cpu::DecodeAttentionParams{a.q, a.ld_q, a.out, a.ld_out, a.k, a.v, a.ld_kv,
                                                                    a.n_keys, a.rows, a.n_heads, a.n_kv_heads,
                                                                    a.head_dim, a.scale}),
                   cuda::decode_attention(cuda::DecodeAttentionArgs{a.q, a.ld_q, a.out, a.ld_out, a.k, a.v, a.ld_kv,
                                                                    a.n_keys, a.rows, a.n_heads, a.n_kv_heads,
                                                                    a.head_dim, a.scale, a.max_keys},
                                          ctx.stream));
}

// ---- embedding ----

template <typename T>
void embedding_forward(const Context& ctx, const Embedding<T>& a) {
  MP_DISPATCH_CUDA("embedding_forward", cpu::embedding_forward(a.x, a.E, a.tokens, a.n, a.C, a.row_begin, a.row_end),
                   cuda::embedding_forward(a.x, a.E, a.tokens, a.n, a.C, a.row_begin, a.row_end, ctx.stream));
}

template <typename T>
void embedding_backward(const Context& ctx, const EmbeddingGrad<T>& a) {
  MP_DISPATCH_CUDA("embedding_backward", cpu::embedding_backward(a.dE, a.dx, a.tokens, a.n, a.C, a.row_begin, a.row_end),
                   cuda::embedding_backward(a.dE, a.dx, a.tokens, a.n, a.C, a.row_begin, a.row_end, ctx.stream));
}

template <typename T>
void embedding_ghost_dots(const Context& ctx, const EmbeddingGhost<T>& a) {
  MP_DISPATCH_CUDA("embedding_ghost_dots",
                   cpu::embedding_ghost_dots(a.dx, a.tokens, a.ghat, a.n, a.C, a.rdot, a.row_begin, a.row_end),
                   cuda::embedding_ghost_dots(a.dx, a.tokens, a.ghat, a.n, a.C, a.rdot, a.row_begin, a.row_end,
                                              ctx.stream));
}

// ---- log-probabilities ----

namespace {
template <typename T>
cpu::LogprobParams<T> cpu_logprob(const Logprob<T>& a) {
  return {a.h, a.W, a.C, a.V, a.rows, a.targets, a.n_rows};
}
#ifdef METAPO_HAVE_CUDA
cuda::LogprobArgs cuda_logprob(const Logprob<float>& a) {
  return {a.h, a.W, a.C, a.V, a.rows, a.targets, a.n_rows, a.vocab_begin};
}
#endif
}  // namespace

template <typename T>
void logprob_forward(const Context& ctx, const Logprob<T>& a, T* logp, T* lse, T* prob_cache) {
  MP_CHECK(a.vocab_begin == 0, "logprob_forward: a vocabulary shard (use logprob_forward_shard)");
  MP_DISPATCH_CUDA("logprob_forward", cpu::logprob_forward(cpu_logprob(a), logp, lse, prob_cache),
                   cuda::logprob_forward(blas_call(ctx), cuda_logprob(a), logp, lse, prob_cache, ctx.stream));
}

template <typename T>
void logprob_forward_shard(const Context& ctx, const Logprob<T>& a, T* row_max, T* row_sumexp, T* target_logit,
                           T* prob_cache) {
  MP_DISPATCH_CUDA("logprob_forward_shard",
                   cpu::logprob_forward_shard(cpu_logprob(a), a.vocab_begin, row_max, row_sumexp, target_logit,
                                              prob_cache),
                   cuda::logprob_forward_shard(blas_call(ctx), cuda_logprob(a), row_max, row_sumexp, target_logit,
                                               prob_cache, ctx.stream));
}

template <typename T>
void logprob_shard_partials(const Context& ctx, const T* row_max, const T* row_sumexp, const T* target_logit,
                            const double* gmax, double* red, int64_t n_rows) {
  MP_DISPATCH_CUDA("logprob_shard_partials",
                   cpu::logprob_shard_partials(row_max, row_sumexp, target_logit, gmax, red, n_rows),
                   cuda::logprob_shard_partials(row_max, row_sumexp, target_logit, gmax, red, n_rows, ctx.stream));
}

template <typename T>
void logprob_shard_finish(const Context& ctx, const T* row_max, const T* row_sumexp, const double* gmax,
                          const double* red, T* lse, T* logp, T* prob_cache, int64_t n_rows, int64_t V) {
  MP_DISPATCH_CUDA("logprob_shard_finish",
                   cpu::logprob_shard_finish(row_max, row_sumexp, gmax, red, lse, logp, prob_cache, n_rows, V),
                   cuda::logprob_shard_finish(row_max, row_sumexp, gmax, red, lse, logp, prob_cache, n_rows, V,
                                              ctx.stream));
}

template <typename T>
void logprob_backward(const Context& ctx, const Logprob<T>& fwd, const LogprobGrad<T>& a) {
  MP_DISPATCH_CUDA("logprob_backward",
                   cpu::logprob_backward_shard(cpu_logprob(fwd), fwd.vocab_begin, a.coef, a.lse, a.prob_cache, a.dh,
                                               a.dW, a.accumulate, a.ghat, a.row_dot, a.seg, a.n_seg),
                   cuda::logprob_backward(blas_call(ctx), cuda_logprob(fwd), a.coef, a.lse, a.prob_cache, a.dh, a.dW,
                                          a.accumulate, a.ghat, a.row_dot, ctx.stream));
}

int64_t ghost_workspace_bytes() { return cpu::kWeightGradGhostWorkspaceBytes; }

// ---- data movement ----

namespace {
// A copy between the host and the context's device, either way.
void transfer(const Context& ctx, void* dst, const void* src, size_t bytes, bool to_dev) {
  if (bytes == 0) return;
  if (ctx.device == Device::CPU) {
    std::memcpy(dst, src, bytes);
    return;
  }
#ifdef METAPO_HAVE_CUDA
  return to_dev ? cuda::to_device(dst, src, bytes, ctx.stream) : cuda::to_host(dst, src, bytes, ctx.stream);
#else
  no_backend(ctx, to_dev ? "to_device" : "to_host");
#endif
}
}  // namespace

void to_device(const Context& ctx, void* dst, const void* src, size_t bytes) { transfer(ctx, dst, src, bytes, true); }
void to_host(const Context& ctx, void* dst, const void* src, size_t bytes) { transfer(ctx, dst, src, bytes, false); }

template <typename T>
void copy(const Context& ctx, T* dst, const T* src, int64_t n) {
  MP_DISPATCH_CUDA("copy", cpu::copy(dst, src, n), cuda::copy(dst, src, n, ctx.stream));
}
template <typename T>
void fill(const Context& ctx, T* dst, T value, int64_t n) {
#ifdef METAPO_HAVE_CUDA
  if constexpr (std::is_same_v<T, double>)  // the per-row ghost dots are double on every backend
    if (ctx.device == Device::CUDA) return cuda::fill(dst, value, n, ctx.stream);
#endif
  MP_DISPATCH_CUDA("fill", cpu::fill(dst, value, n), cuda::fill(dst, value, n, ctx.stream));
}
template <typename T>
void gather(const Context& ctx, T* dst, const T* src, const int32_t* idx, int64_t n) {
  MP_DISPATCH_CUDA("gather", cpu::gather(dst, src, idx, n), cuda::gather(dst, src, idx, n, ctx.stream));
}
template <typename T>
void scatter(const Context& ctx, T* dst, int64_t n_dst, const T* src, const int32_t* idx, int64_t n) {
  MP_DISPATCH_CUDA("scatter", cpu::scatter(dst, n_dst, src, idx, n), cuda::scatter(dst, n_dst, src, idx, n, ctx.stream));
}
void segment_sum(const Context& ctx, double* out, const double* x, const int64_t* cu, int64_t n_seg) {
  using T = float;  // (the CUDA kernel is the double one; T only gates MP_DISPATCH_CUDA)
  MP_DISPATCH_CUDA("segment_sum", cpu::segment_sum(out, x, cu, n_seg), cuda::segment_sum(out, x, cu, n_seg, ctx.stream));
}
template <typename T>
void widen(const Context& ctx, double* dst, const T* src, int64_t n) {
  MP_DISPATCH_CUDA("widen", cpu::widen(dst, src, n), cuda::widen(dst, src, n, ctx.stream));
}
void round_bf16(const Context& ctx, float* dst, const float* src, int64_t n) {
  using T = float;
  MP_DISPATCH_CUDA("round_bf16", cpu::round_bf16(dst, src, n), cuda::round_bf16(dst, src, n, ctx.stream));
}
template <typename T>
void add(const Context& ctx, T* x, const T* y, int64_t n) {
  MP_DISPATCH_CUDA("add", cpu::add(x, y, n), cuda::add(x, y, n, ctx.stream));
}
template <typename T>
void copy_rows(const Context& ctx, T* const* dst, const T* src, int64_t ld_src, int64_t width, int64_t n) {
  MP_DISPATCH_CUDA("copy_rows", cpu::copy_rows(dst, src, ld_src, width, n),
                   cuda::copy_rows(dst, src, ld_src, width, n, ctx.stream));
}
template <typename T>
void copy_2d(const Context& ctx, T* dst, int64_t ld_dst, const T* src, int64_t ld_src, int64_t width, int64_t rows) {
  MP_DISPATCH_CUDA("copy_2d", cpu::copy_2d(dst, ld_dst, src, ld_src, width, rows),
                   cuda::copy_2d(dst, ld_dst, src, ld_src, width, rows, ctx.stream));
}
template <typename T>
void blocks_to_columns(const Context& ctx, T* dst, int64_t ld_dst, const T* src, int64_t block, int64_t rows,
                       const int64_t* col0, const int64_t* widths, int64_t n_blocks) {
  MP_DISPATCH_CUDA("blocks_to_columns", cpu::blocks_to_columns(dst, ld_dst, src, block, rows, col0, widths, n_blocks),
                   cuda::blocks_to_columns(dst, ld_dst, src, block, rows, col0, widths, n_blocks, ctx.stream));
}

// ---- optimizer arithmetic ----

void adamw_step(const Context& ctx, const AdamW& a) {
  using T = float;
  MP_DISPATCH_CUDA("adamw_step",
                   cpu::adamw_step(a.p, a.g, a.m, a.v, a.decay, a.n, a.b1, a.b2, a.step_size, a.inv_bc2_sqrt, a.eps, a.wd),
                   cuda::adamw_step(a.p, a.g, a.m, a.v, a.decay, a.n, a.b1, a.b2, a.step_size, a.inv_bc2_sqrt, a.eps,
                                    a.wd, ctx.stream));
}
void scale(const Context& ctx, float* x, float f, size_t n) {
  using T = float;
  MP_DISPATCH_CUDA("scale", cpu::scale(x, f, n), cuda::scale(x, f, n, ctx.stream));
}
double sum_squares(const Context& ctx, const float* x, size_t n) {
  if (ctx.device == Device::CPU) return cpu::sum_squares(x, n);
#ifdef METAPO_HAVE_CUDA
  if (ctx.device == Device::CUDA) return cuda::sum_squares(x, n, ctx.stream);
#endif
  no_backend(ctx, "sum_squares");
}
bool all_finite(const Context& ctx, const float* x, size_t n) {
  if (ctx.device == Device::CPU) return cpu::all_finite(x, n);
#ifdef METAPO_HAVE_CUDA
  if (ctx.device == Device::CUDA) return cuda::all_finite(x, n, ctx.stream);
#endif
  no_backend(ctx, "all_finite");
}
void adam_precondition(const Context& ctx, float* s, const float* v, size_t n, float b2, float b2c, float bc2,
                       float eps) {
  using T = float;
  MP_DISPATCH_CUDA("adam_precondition", cpu::adam_precondition(s, v, n, b2, b2c, bc2, eps),
                   cuda::adam_precondition(s, v, n, b2, b2c, bc2, eps, ctx.stream));
}

#undef MP_DISPATCH
#undef MP_DISPATCH_CUDA

// ---- instantiations: fp32 (the engine) and fp64 (the finite-difference checks) ----

#define MP_INSTANTIATE(T)                                                                                    \
  template void gemm<T>(const Context&, const Gemm<T>&);                                                    \
  template void linear_forward<T>(const Context&, const Linear<T>&);                                        \
  template void linear_backward<T>(const Context&, const LinearGrad<T>&);                                   \
  template void rmsnorm_forward<T>(const Context&, const RmsNorm<T>&);                                      \
  template void rmsnorm_backward<T>(const Context&, const RmsNormGrad<T>&);                                 \
  template void rmsnorm_ghost_dots<T>(const Context&, const RmsNormGhost<T>&);                              \
  template void rope<T>(const Context&, const Rope<T>&);                                                    \
  template void swiglu_forward<T>(const Context&, const SwiGlu<T>&);                                        \
  template void swiglu_backward<T>(const Context&, const SwiGluGrad<T>&);                                   \
  template void attention_forward<T>(const Context&, const Attention<T>&);                                  \
  template void attention_backward<T>(const Context&, const Attention<T>&, const AttentionGrad<T>&);        \
  template void embedding_forward<T>(const Context&, const Embedding<T>&);                                  \
  template void embedding_backward<T>(const Context&, const EmbeddingGrad<T>&);                             \
  template void embedding_ghost_dots<T>(const Context&, const EmbeddingGhost<T>&);                          \
  template void logprob_forward<T>(const Context&, const Logprob<T>&, T*, T*, T*);                          \
  template void logprob_forward_shard<T>(const Context&, const Logprob<T>&, T*, T*, T*, T*);                \
  template void logprob_shard_partials<T>(const Context&, const T*, const T*, const T*, const double*,      \
                                          double*, int64_t);                                                \
  template void logprob_shard_finish<T>(const Context&, const T*, const T*, const double*, const double*,   \
                                        T*, T*, T*, int64_t, int64_t);                                      \
  template void logprob_backward<T>(const Context&, const Logprob<T>&, const LogprobGrad<T>&);              \
  template void copy<T>(const Context&, T*, const T*, int64_t);                                             \
  template void fill<T>(const Context&, T*, T, int64_t);                                                    \
  template void gather<T>(const Context&, T*, const T*, const int32_t*, int64_t);                           \
  template void scatter<T>(const Context&, T*, int64_t, const T*, const int32_t*, int64_t);                 \
  template void widen<T>(const Context&, double*, const T*, int64_t);                                       \
  template void add<T>(const Context&, T*, const T*, int64_t);                                              \
  template void copy_rows<T>(const Context&, T* const*, const T*, int64_t, int64_t, int64_t);               \
  template void copy_2d<T>(const Context&, T*, int64_t, const T*, int64_t, int64_t, int64_t);               \
  template void blocks_to_columns<T>(const Context&, T*, int64_t, const T*, int64_t, int64_t, const int64_t*, \
                                     const int64_t*, int64_t);
MP_INSTANTIATE(float)
MP_INSTANTIATE(double)
#undef MP_INSTANTIATE

}  // namespace metapo::ops
