// The ops seam (docs/architecture.md): everything the model, generation, the vocab-parallel pieces and
// the optimizers compute goes through these calls. Each op takes the context it runs in and one
// argument struct; the dispatch (src/kernels/dispatch.cpp) sends it to the backend of ctx.device:
// kernels/cpu (the reference, OpenBLAS and OpenMP) or a device backend. Pointers are in the context's
// device memory; shapes are in elements; every op is deterministic for a given backend, shape and
// thread count (most are also independent of the thread count).
//
// T is the element type of parameters, activations and gradients of the call (float; double for the
// finite-difference tests). Reductions that must not lose precision (ghost dots, per-sequence sums,
// norms) are in double whatever T is.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "metapo/core/buffer.h"
#include "metapo/core/dtype.h"
#include "metapo/core/memory.h"
#include "metapo/core/timer.h"
#include "metapo/kernels/rope.h"  // RopeTable

namespace metapo::ops {

// Bytes in one device's memory, counted by the memory accountant under a category and freed with the
// object: a buffer that knows its device. The CPU's come from the huge-page allocator (core/buffer.h),
// a CUDA device's from cudaMalloc. Not zeroed. Move-only.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(Device device, size_t bytes, Mem category = Mem::Workspace);
  DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { release(); }
  Device device() const { return device_; }
  Mem category() const { return category_; }
  size_t size() const { return bytes_; }
  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  // At least `bytes` for a caller that overwrites them: when it must grow, the old memory is freed
  // first (never both held) and exactly `bytes` are allocated.
  void resize_for_overwrite(size_t bytes);

 private:
  void release();
  Device device_ = Device::CPU;
  Mem category_ = Mem::Workspace;
  uint8_t* data_ = nullptr;
  size_t bytes_ = 0;
};

// n elements of T in a DeviceBuffer: the model's activations, on the context's device. data() is
// device memory there (host memory on the CPU). Move-only.
template <typename T>
class DeviceArray {
 public:
  explicit DeviceArray(Device device = Device::CPU, Mem category = Mem::Activations) : buf_(device, 0, category) {}
  Device device() const { return buf_.device(); }
  size_t size() const { return n_; }
  bool empty() const { return n_ == 0; }
  T* data() { return reinterpret_cast<T*>(buf_.data()); }
  const T* data() const { return reinterpret_cast<const T*>(buf_.data()); }
  // n elements for a caller that overwrites them: the memory grows (old freed first, exactly n
  // allocated) only past what it holds, so once shapes settle nothing is allocated.
  void resize_for_overwrite(size_t n) {
    buf_.resize_for_overwrite(n * sizeof(T));
    n_ = n;
  }

 private:
  DeviceBuffer buf_;
  size_t n_ = 0;
};

// A bump allocator for per-call temporaries on one device: alloc() hands out 16-byte aligned pieces of
// one block, reset() takes them all back. What does not fit gets a block of its own until the next
// reset, which makes one block of what the last sequence of calls needed; so once shapes settle a
// step allocates nothing, and the arena holds at most what one sequence of calls needs. Its bytes
// count as workspace (core/memory.h).
class Arena {
 public:
  explicit Arena(Device device = Device::CPU) : device_(device) {}
  Device device() const { return device_; }
  template <typename T>
  T* alloc(size_t n) {
    return static_cast<T*>(alloc_bytes(n * sizeof(T)));
  }
  void reset();
  // Right after reset(): makes room for pieces of these sizes in bytes in the one block (growing it,
  // the old one freed first), so a sequence of calls that reserves what it will take never overflows
  // and the arena never holds more than the largest such sequence.
  void reserve(std::initializer_list<size_t> piece_bytes);
  size_t capacity() const;

 private:
  void* alloc_bytes(size_t bytes);
  DeviceBuffer& main();
  Device device_;
  std::vector<DeviceBuffer> blocks_;  // blocks_[0] the main block, later ones overflow
  size_t used_ = 0, overflow_ = 0;
};

// Where and how ops run: passed to every op, as a Comm is passed to every collective.
struct Context {
  Device device = Device::CPU;
  void* stream = nullptr;  // the device stream the ops are queued on (cudaStream_t); unused on the CPU
  void* blas = nullptr;    // the device BLAS object (kernels/cuda.h: cuda::blas_create); the CPU uses OpenBLAS
  Arena* arena = nullptr;  // temporaries of a call sequence (may be null: callers that need one own one)
  OpProfile* profile = nullptr;  // per-op seconds when enabled (may be null)
  // The GEMMs' input precision on a device: BF16 lets them round fp32 inputs to bf16 and run on the
  // tensor cores (exact for bf16-stored operands; the model sets it with bf16 storage). The CPU
  // backend computes in T whatever this says.
  DType gemm_inputs = DType::F32;
  // With BF16 gemm_inputs on CUDA: attention through cuDNN's fused SDPA where it takes the shape
  // (kernels/cuda.h); false, or where it does not: the plain kernel, the reference.
  bool fused_attention = true;
};

// The backends this build has: "cpu", or "cpu, cuda".
const char* backends();

// ---- devices ----

// Throws one line naming `option` unless this build has a backend for the device and one is visible.
void require_device(Device d, const char* option = "--device");
// The device of this rank: on CUDA, GPU local_rank mod (the visible GPUs) of its node (one GPU per
// rank; ranks share GPUs when there are more of them). Nothing to choose on the CPU.
void select_device(Device d, int local_rank);
// "cpu", or the GPU's name.
std::string device_description(Device d);
// The dense bf16 tensor-core peak in FLOP/s of a card by its name (device_description): H100 SXM and
// H200 989e12, H100 PCIe 756e12, A100 312e12; 0 for another (MFU then needs the peak given).
double bf16_peak_flops(const std::string& card);
// Waits for the work queued on the context's stream (nothing to wait for on the CPU).
void synchronize(const Context& ctx);

// A context with what its device needs (on CUDA: the BLAS object, kernels/cuda.h), released with it.
class DeviceContext {
 public:
  explicit DeviceContext(Device d);
  ~DeviceContext();
  DeviceContext(const DeviceContext&) = delete;
  DeviceContext& operator=(const DeviceContext&) = delete;
  const Context& get() const { return ctx_; }

 private:
  Context ctx_;
};

// ---- GEMMs ----

// C[M, N] = alpha op(A) op(B) + beta C, row-major; op(X) = X^T where the flag is set.
template <typename T>
struct Gemm {
  bool ta, tb;
  int64_t M, N, K;
  T alpha;
  const T* A;
  int64_t lda;
  const T* B;
  int64_t ldb;
  T beta;
  T* C;
  int64_t ldc;
};
template <typename T>
void gemm(const Context& ctx, const Gemm<T>& a);

// y[rows, out] = x[rows, in] w[out, in]^T (+ b[out]).
template <typename T>
struct Linear {
  T* y;
  const T* x;
  const T* w;
  const T* b;  // may be null
  int64_t rows, in, out;
};
template <typename T>
void linear_forward(const Context& ctx, const Linear<T>& a);

// dx = dy w; dw (+)= dy^T x; db (+)= Σ_rows dy (accumulate: add to the gradients, else overwrite).
// With ghat_w (a direction in the weight's shape, e.g. a validation gradient): also, for every
// segment k of rows [seg[k], seg[k+1]), rdot[seg[k]] += ⟨ghat, the segment's part of (dw, db)⟩ (the
// ghost dot products, DESIGN §6), fused with the weight-gradient GEMM.
template <typename T>
struct LinearGrad {
  T* dx;
  T* dw;
  T* db;  // may be null
  const T* dy;
  const T* x;
  const T* w;
  int64_t rows, in, out;
  bool accumulate;
  const T* ghat_w = nullptr;  // ghost dots off when null
  const T* ghat_b = nullptr;
  const int64_t* seg = nullptr;  // [n_seg + 1]
  int64_t n_seg = 0;
  double* rdot = nullptr;  // [rows]
};
template <typename T>
void linear_backward(const Context& ctx, const LinearGrad<T>& a);

// The decode step's linear layer (fp32): as linear_forward, but each output element is one dot
// product in a fixed order, so a row's result does not depend on the other rows of the call.
void linear_rows(const Context& ctx, const Linear<float>& a);

// ---- normalization, position, activation ----

// y = x / rms(x) * w per row of C; rstd[row] = 1 / rms.
template <typename T>
struct RmsNorm {
  T* y;
  T* rstd;
  const T* x;
  const T* w;
  int64_t rows, C;
  double eps;
};
template <typename T>
void rmsnorm_forward(const Context& ctx, const RmsNorm<T>& a);

// dx (+)= dL/dx; dw += dL/dw (always accumulated: norm weights are summed over layers' rows).
// accumulate refers to dx.
template <typename T>
struct RmsNormGrad {
  T* dx;
  T* dw;
  const T* dy;
  const T* x;
  const T* w;
  const T* rstd;
  int64_t rows, C;
  bool accumulate;
};
template <typename T>
void rmsnorm_backward(const Context& ctx, const RmsNormGrad<T>& a);

// rdot[row] += ⟨ghat_w, this row's term of dL/dw⟩.
template <typename T>
struct RmsNormGhost {
  const T* dy;
  const T* x;
  const T* rstd;
  const T* ghat_w;
  int64_t rows, C;
  double* rdot;
};
template <typename T>
void rmsnorm_ghost_dots(const Context& ctx, const RmsNormGhost<T>& a);

// In place on rows of [heads, D] (row stride ld), token t at position pos[t]; inverse: the backward.
template <typename T>
struct Rope {
  T* x;
  int64_t rows, heads, D, ld;
  const int32_t* pos;
  const RopeTable<T>* table;
  bool inverse;
};
template <typename T>
void rope(const Context& ctx, const Rope<T>& a);

// h[rows, I] = silu(gu[:, :I]) * gu[:, I:].
template <typename T>
struct SwiGlu {
  T* h;
  const T* gu;
  int64_t rows, I;
};
template <typename T>
void swiglu_forward(const Context& ctx, const SwiGlu<T>& a);

// dgu = d(swiglu)/dgu · dh (overwritten).
template <typename T>
struct SwiGluGrad {
  T* dgu;
  const T* dh;
  const T* gu;
  int64_t rows, I;
};
template <typename T>
void swiglu_backward(const Context& ctx, const SwiGluGrad<T>& a);

// ---- attention ----

// Causal attention over packed sequences (kernels/attention.h has the layout): q, k, v are column
// ranges of the fused qkv rows (stride ld_qkv); lse [heads, n] is kept for the backward.
template <typename T>
struct Attention {
  const T *q, *k, *v;
  int64_t ld_qkv;
  T* out;
  int64_t ld_out;
  T* lse;
  const int64_t* cu_seqlens;
  int64_t n_seqs, n_tokens, n_heads, n_kv_heads, head_dim;
  T scale;
  int64_t max_seqlen = 0;  // the longest sequence when the caller knows it (0: the backend finds it)
};
template <typename T>
void attention_forward(const Context& ctx, const Attention<T>& a);
// Which attention the context's last calls ran, for logs: "cpu", "cuDNN <version>", or the plain
// kernel and why.
std::string attention_description(const Context& ctx);

template <typename T>
struct AttentionGrad {
  const T* dout;  // stride: the forward's ld_out
  T *dq, *dk, *dv;  // overwritten; stride ld_dqkv
  int64_t ld_dqkv;
};
// fwd: the forward's arguments (its out and lse are read).
template <typename T>
void attention_backward(const Context& ctx, const Attention<T>& fwd, const AttentionGrad<T>& a);

// The decode step's attention (fp32): one query row per sequence over its KV cache
// (kernels/decode.h has the layout); like linear_rows, a row's output does not depend on the other rows.
// On a device k and v are device arrays of device pointers, n_keys a device array.
struct DecodeAttention {
  const float* q;
  int64_t ld_q;
  float* out;
  int64_t ld_out;
  const float* const* k;
  const float* const* v;
  int64_t ld_kv;
  const int64_t* n_keys;
  int64_t rows, n_heads, n_kv_heads, head_dim;
  float scale;
  int64_t max_keys = 0;  // the largest n_keys when the caller knows it (0: the backend finds it)
};
void decode_attention(const Context& ctx, const DecodeAttention& a);

// ---- embedding ----

// x[t] = E[tokens[t] - row_begin] where row_begin <= tokens[t] < row_end, else 0 (row_end < 0: the
// whole table, no range). Token ids are checked by the caller.
template <typename T>
struct Embedding {
  T* x;
  const T* E;
  const int32_t* tokens;
  int64_t n, C;
  int64_t row_begin = 0, row_end = -1;
};
template <typename T>
void embedding_forward(const Context& ctx, const Embedding<T>& a);

// dE[tokens[t] - row_begin] += dx[t] for the tokens in the range (deterministic, token order).
template <typename T>
struct EmbeddingGrad {
  T* dE;
  const T* dx;
  const int32_t* tokens;
  int64_t n, C;
  int64_t row_begin = 0, row_end = -1;
};
template <typename T>
void embedding_backward(const Context& ctx, const EmbeddingGrad<T>& a);

// rdot[t] += ⟨ghat[tokens[t] - row_begin], dx[t]⟩ for the tokens in the range.
template <typename T>
struct EmbeddingGhost {
  const T* dx;
  const int32_t* tokens;
  const T* ghat;
  int64_t n, C;
  double* rdot;
  int64_t row_begin = 0, row_end = -1;
};
template <typename T>
void embedding_ghost_dots(const Context& ctx, const EmbeddingGhost<T>& a);

// ---- target log-probabilities over vocabulary chunks (kernels/logprob.h) ----

// The LM head over the rows of h that have a target: W holds V vocabulary rows starting at token
// vocab_begin (a TP shard) or the whole vocabulary (vocab_begin 0).
template <typename T>
struct Logprob {
  const T* h;
  const T* W;
  int64_t C, V;
  const int32_t* rows;
  const int32_t* targets;
  int64_t n_rows;
  int64_t vocab_begin = 0;
};
// The whole vocabulary: logp and lse per row; prob_cache (may be null) keeps the softmax [n_rows, V].
template <typename T>
void logprob_forward(const Context& ctx, const Logprob<T>& a, T* logp, T* lse, T* prob_cache);
// One shard's partial results (row max, Σ exp, the target's logit where owned); prob_cache keeps
// exp(z - row max).
template <typename T>
void logprob_forward_shard(const Context& ctx, const Logprob<T>& a, T* row_max, T* row_sumexp, T* target_logit,
                           T* prob_cache);
// After the TP max of row_max into gmax (double): the partial sums to all-reduce, red [2 n_rows].
template <typename T>
void logprob_shard_partials(const Context& ctx, const T* row_max, const T* row_sumexp, const T* target_logit,
                            const double* gmax, double* red, int64_t n_rows);
// After the TP sum of red: lse, logp, and the cache made softmax.
template <typename T>
void logprob_shard_finish(const Context& ctx, const T* row_max, const T* row_sumexp, const double* gmax,
                          const double* red, T* lse, T* logp, T* prob_cache, int64_t n_rows, int64_t V);

// dh[rows] += coef · d logp / dh; dW (+)= ...; with ghat, row_dot[rows] += ghost dots of the LM head.
template <typename T>
struct LogprobGrad {
  const T* coef;
  const T* lse;
  T* prob_cache;  // may be null (the logits are recomputed)
  T* dh;
  T* dW;
  bool accumulate;
  const T* ghat = nullptr;
  double* row_dot = nullptr;
  // With ghat: the starts of the groups of h's rows whose dot sum is all that is needed ([n_seg + 1], as
  // LinearGrad::seg); the CPU then fuses the head's weight gradient with the dots. May be null.
  const int64_t* seg = nullptr;
  int64_t n_seg = 0;
};
template <typename T>
void logprob_backward(const Context& ctx, const Logprob<T>& fwd, const LogprobGrad<T>& a);

// Bytes of workspace (Mem::Workspace) that a meta step's fused ghost weight gradients hold beside the
// backward's arena: the CPU kernel's packing buffer, whatever the shapes (the device path needs none;
// the memory plan, which does not know the device, counts it anyway).
int64_t ghost_workspace_bytes();

// ---- data movement and small reductions ----

// Bytes between the host and the context's device (a plain copy on the CPU); waits for the copy.
void to_device(const Context& ctx, void* dst, const void* src, size_t bytes);
void to_host(const Context& ctx, void* dst, const void* src, size_t bytes);

template <typename T>
void copy(const Context& ctx, T* dst, const T* src, int64_t n);
template <typename T>
void fill(const Context& ctx, T* dst, T value, int64_t n);
// dst[i] = src[idx[i]], i < n.
template <typename T>
void gather(const Context& ctx, T* dst, const T* src, const int32_t* idx, int64_t n);
// dst[0, n_dst) = 0, then dst[idx[i]] = src[i].
template <typename T>
void scatter(const Context& ctx, T* dst, int64_t n_dst, const T* src, const int32_t* idx, int64_t n);
// out[s] = Σ x[cu[s] .. cu[s+1]) in index order.
void segment_sum(const Context& ctx, double* out, const double* x, const int64_t* cu, int64_t n_seg);
// dst = double(src).
template <typename T>
void widen(const Context& ctx, double* dst, const T* src, int64_t n);
// dst = src rounded to bf16 (nearest even), stored in fp32: the rounding of bf16 storage.
void round_bf16(const Context& ctx, float* dst, const float* src, int64_t n);
// x += y.
template <typename T>
void add(const Context& ctx, T* x, const T* y, int64_t n);
// dst[i][0, width) = src[i * ld_src, + width): rows into one pointer each (e.g. KV-cache rows).
template <typename T>
void copy_rows(const Context& ctx, T* const* dst, const T* src, int64_t ld_src, int64_t width, int64_t n);
// dst[i * ld_dst, + width) = src[i * ld_src, + width), i < rows.
template <typename T>
void copy_2d(const Context& ctx, T* dst, int64_t ld_dst, const T* src, int64_t ld_src, int64_t width, int64_t rows);
// Block r of src (rows x widths[r], at r * block) into columns [col0[r], + widths[r]) of dst [rows, ld_dst].
template <typename T>
void blocks_to_columns(const Context& ctx, T* dst, int64_t ld_dst, const T* src, int64_t block, int64_t rows,
                       const int64_t* col0, const int64_t* widths, int64_t n_blocks);

// ---- optimizer arithmetic (fp32 master weights) ----

struct AdamW {
  float* p;
  const float* g;
  float *m, *v;
  const uint8_t* decay;  // 1 where weight decay applies
  size_t n;
  float b1, b2, step_size, inv_bc2_sqrt, eps, wd;
};
void adamw_step(const Context& ctx, const AdamW& a);
void scale(const Context& ctx, float* x, float f, size_t n);
// Σ x² in double, in a fixed order whatever the thread count.
double sum_squares(const Context& ctx, const float* x, size_t n);
// Whether no element of x[0, n) is inf or NaN.
bool all_finite(const Context& ctx, const float* x, size_t n);
// s /= √((b2 v + b2c s²) / bc2) + eps: the direction Adam would step along for gradient s.
void adam_precondition(const Context& ctx, float* s, const float* v, size_t n, float b2, float b2c, float bc2,
                       float eps);

}  // namespace metapo::ops
