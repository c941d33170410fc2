// The CUDA backend's launchers (src/kernels/cuda/<op>.cu, one op per file): plain pointers into device
// memory (index arrays too: positions, rows, targets, segment offsets), shapes in elements, and the
// stream to queue on (a cudaStream_t passed as void*, so this header needs no CUDA headers; null is the
// default stream). Each returns once the work is queued, except the few that return a value to the
// host (sum_squares, all_finite), which wait for it. An error of the launch throws metapo::Error naming
// the op. The ops dispatch (src/kernels/dispatch.cpp) calls them for ops whose context is Device::CUDA;
// tests/gpu checks each against the CPU op.
//
// Determinism: no kernel here adds floats with atomics; every reduction has a fixed tree or a fixed
// sequential order, and the GEMMs use the algorithm cached per shape in the Blas object, so the same
// binary, device, shapes and data give bit-identical results.
#pragma once
#include <cstddef>
#include <cstdint>

namespace metapo::cuda {

// Whether this process sees a CUDA device (false, not an error, on a machine without one).
bool device_available();
// The name of the current device ("" without one), for logs.
const char* device_name();
// Makes device local_rank mod (the visible devices) this process's current device: one GPU per rank
// of a node, several ranks on one GPU when there are more ranks than GPUs. Call before any other CUDA
// work of the process.
void select_device(int local_rank);
// Waits for the work queued on the stream.
void synchronize(void* stream);

// Device memory (tensor.cu): cudaMalloc'd bytes (256-byte aligned), and their release.
void* device_alloc(size_t bytes);
void device_free(void* p);
// Host <-> device copies on the stream, waited for.
void to_device(void* dst, const void* src, size_t bytes, void* stream);
void to_host(void* dst, const void* src, size_t bytes, void* stream);

// ---- GEMMs through cuBLASLt (gemm.cu) ----

// The cuBLASLt handle, its workspace and the algorithm chosen per shape (so that every call of a shape
// runs the same algorithm: determinism): what ops::Context::blas points to on a CUDA context. cuBLASLt
// itself is loaded on first use (dlopen of libcublasLt.so.13), so a binary built with CUDA runs on a
// machine without it until a GEMM is asked of the GPU.
void* blas_create();
void blas_destroy(void* blas);

// What a launcher's GEMMs run with: the Blas object, and whether they may round their fp32 inputs to
// bf16 (CUBLAS_COMPUTE_32F_FAST_16BF: tensor cores at the bf16 rate, fp32 accumulation). With bf16
// storage (parameters and activations already rounded to bf16) that is exact for them and rounds only
// the gradient operands, as a bf16 training run stores them; with fp32 storage it stays off.
struct BlasCall {
  BlasCall(void* h, bool bf16 = false) : handle(h), bf16_math(bf16) {}  // NOLINT: a handle is a call
  void* handle;
  bool bf16_math;
};

// C[M, N] = alpha op(A) op(B) + beta C, row-major, fp32 in and out with fp32 arithmetic (no TF32:
// the checking precision) unless blas.bf16_math; bias (may be null) adds bias[N] to every row
// (cuBLASLt's bias epilogue).
void gemm(const BlasCall& blas, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc, const float* bias, void* stream);
// The same with bf16 A and B (raw 16 bits) and fp32 accumulation; C is bf16 when c_bf16, else fp32.
void gemm_bf16(const BlasCall& blas, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const uint16_t* A,
               int64_t lda, const uint16_t* B, int64_t ldb, float beta, void* C, int64_t ldc, bool c_bf16,
               void* stream);

// ---- linear layers (linear.cu) ----

// y[rows, out] = x[rows, in] w[out, in]^T (+ b).
void linear_forward(const BlasCall& blas, float* y, const float* x, const float* w, const float* b, int64_t rows, int64_t in,
                    int64_t out, void* stream);
// dx = dy w (skipped when dx is null); dw (+)= dy^T x; db (+)= column sums of dy in row order.
void linear_backward(const BlasCall& blas, float* dx, float* dw, float* db, const float* dy, const float* x, const float* w,
                     int64_t rows, int64_t in, int64_t out, bool accumulate, void* stream);
// The ghost dot products of the weight gradient (ops::LinearGrad): for every segment s of rows
// [seg[s], seg[s+1]), rdot[seg[s]] += Σ_{t∈s} ⟨dy_t, Ĝ x_t + ĝ_b⟩, from one GEMM P = x Ĝ^T and a
// row-wise dot in double, summed per segment in row order.
void linear_ghost_dots(const BlasCall& blas, const float* x, const float* dy, const float* ghat_w, const float* ghat_b,
                       int64_t rows, int64_t in, int64_t out, const int64_t* seg, int64_t n_seg, double* rdot,
                       void* stream);

// ---- normalization, position and activation (rmsnorm.cu, rope.cu, swiglu.cu) ----
void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int64_t n, int64_t C, double eps,
                     void* stream);
// dx (+)= dL/dx (accumulate: add); dw += dL/dw, each column summed over chunks of 64 rows and then
// over the chunks, in a fixed order (no atomics: the result does not depend on the launch).
void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, const float* rstd,
                      int64_t n, int64_t C, bool accumulate, void* stream);
// rdot[row] += ⟨ĝ_w, this row's term of dL/dw⟩ = Σ_c ĝ_w[c] dy[c] x[c] rstd (double).
void rmsnorm_ghost_dots(const float* dy, const float* x, const float* rstd, const float* ghat_w, int64_t n,
                        int64_t C, double* rdot, void* stream);
// Rotary embedding in place on rows of [heads, D] (row stride ld), token t at position pos[t]; cos and
// sin are the device copy of a RopeTable [max_pos, D/2]; inverse rotates back (the backward).
void rope(float* x, int64_t rows, int64_t heads, int64_t D, int64_t ld, const int32_t* pos, const float* cos,
          const float* sin, bool inverse, void* stream);
void swiglu_forward(float* h, const float* gu, int64_t n, int64_t I, void* stream);
void swiglu_backward(float* dgu, const float* dh, const float* gu, int64_t n, int64_t I, void* stream);

// ---- attention (attention.cu): the plain reference kernels, also the fallback ----

// The layout of ops::Attention (kernels/attention.h): q, k, v column ranges of the fused qkv rows,
// packed sequences by cu_seqlens, grouped-query heads, lse [heads, n].
struct AttentionArgs {
  const float *q, *k, *v;
  int64_t ld_qkv;
  float* out;
  int64_t ld_out;
  float* lse;
  const int64_t* cu_seqlens;  // device memory, [n_seqs + 1]
  int64_t n_seqs, n_tokens, n_heads, n_kv_heads, head_dim;
  float scale;
  int64_t max_seqlen = 0;  // 0: found from a host copy of cu_seqlens (which waits for the stream)
};
void attention_forward(const AttentionArgs& a, void* stream);
// dq, dk, dv overwritten (stride ld_dqkv); dk and dv sum over the query heads of their group and the
// queries of the sequence in a fixed order (no atomics).
void attention_backward(const AttentionArgs& a, const float* dout, float* dq, float* dk, float* dv, int64_t ld_dqkv,
                        void* stream);

// ---- attention through cuDNN's fused SDPA (attention_cudnn.cpp; helpers in attention_cudnn.cu) ----
// For bf16 training: q, k, v (and in the backward out and dout) rounded to bf16 into packed copies,
// cuDNN's flash attention over the packed sequences (ragged offsets, a causal and a padding mask,
// grouped-query heads), the results written back in fp32 at the caller's strides, and lse in this
// backend's [n_heads, n_tokens] layout (cuDNN's statistics are the same log-sum-exp of the scaled
// scores, so either implementation can run the backward of the other's forward). The backward is
// cuDNN's deterministic algorithm (bit-identical reruns). Each returns false, having done nothing,
// where cuDNN cannot take the shape (library not found, a head dimension, GPU or cuDNN version it
// does not support, offsets past int32); the caller then runs the plain kernel.
bool cudnn_attention_built();
// What the last call used, for logs: "cuDNN <version>", or the plain kernel and why.
const char* cudnn_attention_status();
bool cudnn_attention_forward(const AttentionArgs& a, void* stream);
bool cudnn_attention_backward(const AttentionArgs& a, const float* dout, float* dq, float* dk, float* dv,
                              int64_t ld_dqkv, void* stream);
// seq_len [n_pad] = cu[s + 1] - cu[s], then 0 for the padding sequences s >= n_seqs (empty, at the end);
// q_off, kv_off, stats_off [n_pad + 1] = cu (cu[n_seqs] past n_seqs) times the strides (elements per
// token), as int32.
void ragged_offsets(const int64_t* cu_seqlens, int64_t n_seqs, int64_t n_pad, int64_t q_stride, int64_t kv_stride,
                    int64_t stats_stride, int32_t* seq_len, int32_t* q_off, int32_t* kv_off, int32_t* stats_off,
                    void* stream);
// dst [rows, width] packed bf16 (raw bits) = src rows of stride ld_src, rounded to nearest even; and back.
void cast_f32_to_bf16_2d(uint16_t* dst, const float* src, int64_t ld_src, int64_t width, int64_t rows, void* stream);
void cast_bf16_to_f32_2d(float* dst, int64_t ld_dst, const uint16_t* src, int64_t width, int64_t rows, void* stream);
// dst [cols, rows] = src [rows, cols] transposed.
void transpose_f32(float* dst, const float* src, int64_t rows, int64_t cols, void* stream);

// ---- the decode step (decode.cu; kernels/decode.h has the CPU ops) ----

// Y[m, out] = X[m, in] W[out, in]^T (+ b[out]), one warp per output element (lane l sums k = l, l + 32,
// ... in order, then a fixed butterfly): row i's result depends only on row i of X, on W and on b,
// never on m or on the other rows (batch invariance), and is the same bits on every run.
void linear_rows(float* Y, const float* X, const float* W, const float* b, int64_t m, int64_t in, int64_t out,
                 void* stream);

// The layout of ops::DecodeAttention: row i's query attends over its n_keys[i] cached keys and values,
// key j of row i at k[i] + j * ld_kv (KV heads of head_dim side by side). k, v: device arrays of m device
// pointers; n_keys: a device array of m counts (at least 1 each).
struct DecodeAttentionArgs {
  const float* q;
  int64_t ld_q;
  float* out;
  int64_t ld_out;
  const float* const* k;
  const float* const* v;
  int64_t ld_kv;
  const int64_t* n_keys;
  int64_t m, n_heads, n_kv_heads, head_dim;
  float scale;
  int64_t max_keys = 0;  // the largest n_keys when the caller knows it (0: found from a host copy, which waits)
};
// One block per (row, head), the scores in shared memory (up to 48k keys on sm_80/90) and every sum in a
// fixed order: a row's output does not depend on m (batch invariance).
void decode_attention(const DecodeAttentionArgs& a, void* stream);

// ---- embedding (embedding.cu) ----
// Tokens outside [row_begin, row_end) (row_end < 0: no upper bound) give zero rows / add nothing.
void embedding_forward(float* x, const float* E, const int32_t* tokens, int64_t n, int64_t C, int64_t row_begin,
                       int64_t row_end, void* stream);
// dE[tokens[t] - row_begin] += dx[t]: the tokens are sorted (stably) by id, and each table row adds its
// tokens' rows in token order, as the CPU op does: bit-identical to it, and no atomics.
void embedding_backward(float* dE, const float* dx, const int32_t* tokens, int64_t n, int64_t C, int64_t row_begin,
                        int64_t row_end, void* stream);
void embedding_ghost_dots(const float* dx, const int32_t* tokens, const float* ghat, int64_t n, int64_t C,
                          double* rdot, int64_t row_begin, int64_t row_end, void* stream);

// ---- target log-probabilities through the LM head (logprob.cu) ----

// ops::Logprob: hidden rows h[rows[i]] against W's V vocabulary rows (from token vocab_begin). The
// logits are made a chunk of rows at a time ([chunk, V], chunk sized to a fixed budget), never
// [tokens, V].
struct LogprobArgs {
  const float* h;
  const float* W;
  int64_t C, V;
  const int32_t* rows;
  const int32_t* targets;
  int64_t n_rows, vocab_begin;
};
void logprob_forward(const BlasCall& blas, const LogprobArgs& a, float* logp, float* lse, float* prob_cache, void* stream);
void logprob_forward_shard(const BlasCall& blas, const LogprobArgs& a, float* row_max, float* row_sumexp, float* target_logit,
                           float* prob_cache, void* stream);
void logprob_shard_partials(const float* row_max, const float* row_sumexp, const float* target_logit,
                            const double* gmax, double* red, int64_t n_rows, void* stream);
void logprob_shard_finish(const float* row_max, const float* row_sumexp, const double* gmax, const double* red,
                          float* lse, float* logp, float* prob_cache, int64_t n_rows, int64_t V, void* stream);
// dh[rows] += coef (onehot - softmax) W; dW (+)= ...; with ghat, row_dot[rows[i]] += ⟨dlogits_i Ĝ, h_i⟩.
void logprob_backward(const BlasCall& blas, const LogprobArgs& a, const float* coef, const float* lse, float* prob_cache,
                      float* dh, float* dW, bool accumulate, const float* ghat, double* row_dot, void* stream);

// ---- data movement (tensor.cu) ----
void copy(float* dst, const float* src, int64_t n, void* stream);
void fill(float* dst, float value, int64_t n, void* stream);
void fill(double* dst, double value, int64_t n, void* stream);  // the ghost dots' row sums
// dst = src rounded to bf16 (nearest even), kept in fp32.
void round_bf16(float* dst, const float* src, int64_t n, void* stream);
// fp32 <-> bf16 storage (bf16 as its raw 16 bits).
void cast_f32_to_bf16(uint16_t* dst, const float* src, int64_t n, void* stream);
void cast_bf16_to_f32(float* dst, const uint16_t* src, int64_t n, void* stream);
void gather(float* dst, const float* src, const int32_t* idx, int64_t n, void* stream);
void scatter(float* dst, int64_t n_dst, const float* src, const int32_t* idx, int64_t n, void* stream);
// out[s] = Σ x[cu[s] .. cu[s+1]) in index order.
void segment_sum(double* out, const double* x, const int64_t* cu, int64_t n_seg, void* stream);
void widen(double* dst, const float* src, int64_t n, void* stream);
void add(float* x, const float* y, int64_t n, void* stream);
// dst[i][0, width) = src[i * ld_src, + width); dst is a device array of n device pointers.
void copy_rows(float* const* dst, const float* src, int64_t ld_src, int64_t width, int64_t n, void* stream);
void copy_2d(float* dst, int64_t ld_dst, const float* src, int64_t ld_src, int64_t width, int64_t rows, void* stream);
// col0 and widths: host arrays of n_blocks entries.
void blocks_to_columns(float* dst, int64_t ld_dst, const float* src, int64_t block, int64_t rows, const int64_t* col0,
                       const int64_t* widths, int64_t n_blocks, void* stream);

// ---- optimizer (optim.cu) ----
void adamw_step(float* p, const float* g, float* m, float* v, const uint8_t* decay, size_t n, float b1, float b2,
                float step_size, float inv_bc2_sqrt, float eps, float wd, void* stream);
void scale(float* x, float f, size_t n, void* stream);
// Σ x² in double over fixed blocks summed in a fixed order (waits for the result).
double sum_squares(const float* x, size_t n, void* stream);
bool all_finite(const float* x, size_t n, void* stream);
void adam_precondition(float* s, const float* v, size_t n, float b2, float b2c, float bc2, float eps, void* stream);

}  // namespace metapo::cuda
