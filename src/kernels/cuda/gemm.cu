// GEMMs through cuBLASLt: row-major products expressed as the column-major product of the transposes
// (C^T = op(B)^T op(A)^T), fp32 or bf16 inputs with fp32 accumulation, the bias epilogue, a 32 MiB
// workspace, and the algorithm chosen once per shape and alignment and then reused (cuBLASLt's
// heuristic may rank algorithms differently from run to run; a cached choice keeps runs bit-identical).
// One Blas serves one stream: its workspace is not shared safely between streams or threads (cuBLAS
// reproducibility also assumes a workspace per stream).
//
// cuBLASLt is loaded with dlopen on the first GEMM, so the metapo binary (built with CUDA) starts on a
// machine that has no CUDA libraries at all: only asking the GPU for a GEMM needs libcublasLt.so.13.
#include <cublasLt.h>
#include <dlfcn.h>

#include <algorithm>
#include <array>
#include <map>
#include <mutex>

#include "common.cuh"
#include "metapo/kernels/cuda.h"

namespace metapo::cuda {

namespace {

// The cuBLASLt entry points metapo uses, resolved from the shared library.
struct LtApi {
  decltype(&cublasLtCreate) create;
  decltype(&cublasLtDestroy) destroy;
  decltype(&cublasLtGetStatusString) status_string;
  decltype(&cublasLtMatmulDescCreate) desc_create;
  decltype(&cublasLtMatmulDescDestroy) desc_destroy;
  decltype(&cublasLtMatmulDescSetAttribute) desc_set;
  decltype(&cublasLtMatrixLayoutCreate) layout_create;
  decltype(&cublasLtMatrixLayoutDestroy) layout_destroy;
  decltype(&cublasLtMatmulPreferenceCreate) pref_create;
  decltype(&cublasLtMatmulPreferenceDestroy) pref_destroy;
  decltype(&cublasLtMatmulPreferenceSetAttribute) pref_set;
  decltype(&cublasLtMatmulAlgoGetHeuristic) heuristic;
  decltype(&cublasLtMatmul) matmul;
};

template <typename F>
void resolve(void* lib, F& f, const char* name) {
  f = reinterpret_cast<F>(dlsym(lib, name));
  MP_CHECK(f != nullptr, "cuBLASLt: libcublasLt has no ", name);
}

const LtApi& lt() {
  static const LtApi api = [] {
    void* lib = nullptr;
    for (const char* name : {"libcublasLt.so.13", "/usr/local/cuda/lib64/libcublasLt.so.13",
                             "/usr/local/cuda/lib/libcublasLt.so.13", "libcublasLt.so"})
      if ((lib = dlopen(name, RTLD_NOW | RTLD_LOCAL))) break;
    MP_CHECK(lib != nullptr, "cuBLASLt: cannot load libcublasLt.so.13 (", dlerror(),
             "): the GPU GEMMs need CUDA 13's cuBLAS on LD_LIBRARY_PATH");
    LtApi a{};
    resolve(lib, a.create, "cublasLtCreate");
    resolve(lib, a.destroy, "cublasLtDestroy");
    resolve(lib, a.status_string, "cublasLtGetStatusString");
    resolve(lib, a.desc_create, "cublasLtMatmulDescCreate");
    resolve(lib, a.desc_destroy, "cublasLtMatmulDescDestroy");
    resolve(lib, a.desc_set, "cublasLtMatmulDescSetAttribute");
    resolve(lib, a.layout_create, "cublasLtMatrixLayoutCreate");
    resolve(lib, a.layout_destroy, "cublasLtMatrixLayoutDestroy");
    resolve(lib, a.pref_create, "cublasLtMatmulPreferenceCreate");
    resolve(lib, a.pref_destroy, "cublasLtMatmulPreferenceDestroy");
    resolve(lib, a.pref_set, "cublasLtMatmulPreferenceSetAttribute");
    resolve(lib, a.heuristic, "cublasLtMatmulAlgoGetHeuristic");
    resolve(lib, a.matmul, "cublasLtMatmul");
    return a;
  }();
  return api;
}

void lt_check(cublasStatus_t s, const char* what) {
  MP_CHECK(s == CUBLAS_STATUS_SUCCESS, "cuBLASLt ", what, ": ", lt().status_string(s));
}

constexpr size_t kWorkspaceBytes = size_t(32) << 20;

// The shape, types, leading dimensions and operand alignments a cached algorithm was chosen for. (beta
// and the bias do not change which algorithms apply; the bias pointer's alignment might.)
using Key = std::array<int64_t, 14>;

struct Blas {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  std::mutex mutex;
  std::map<Key, cublasLtMatmulAlgo_t> algos;
};

int64_t alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  for (int64_t b : {256, 128, 64, 32, 16, 8, 4, 2})
    if (a % uintptr_t(b) == 0) return b;
  return 1;
}

// One matrix's layout as cuBLASLt sees it (column-major): a row-major X[r, c] with row stride ld is
// the column-major [c, r] with leading dimension ld.
struct Layout {
  cublasLtMatrixLayout_t l = nullptr;
  Layout(cudaDataType t, int64_t rows, int64_t cols, int64_t ld) {
    lt_check(lt().layout_create(&l, t, uint64_t(rows), uint64_t(cols), ld), "matrix layout");
  }
  ~Layout() { lt().layout_destroy(l); }
};

__global__ void scale_2d_kernel(float* C, int64_t ldc, int64_t M, int64_t N, float beta) {
  MP_GRID_LOOP(k, M * N) {
    float& c = C[(k / N) * ldc + k % N];
    c = beta == 0.0f ? 0.0f : beta * c;
  }
}

__global__ void add_bias_kernel(float* C, int64_t ldc, int64_t M, int64_t N, const float* bias) {
  MP_GRID_LOOP(k, M * N) C[(k / N) * ldc + k % N] += bias[k % N];
}

// The descriptors of one call, destroyed however it ends.
struct Desc {
  cublasLtMatmulDesc_t d = nullptr;
  ~Desc() {
    if (d) lt().desc_destroy(d);
  }
};
struct Pref {
  cublasLtMatmulPreference_t p = nullptr;
  ~Pref() {
    if (p) lt().pref_destroy(p);
  }
};

// The row-major C[M, N] = alpha op(A) op(B) + beta C (+ bias[N] per row) with A, B of type ab and C of
// type ct, as the column-major C^T[N, M] = op(B)^T op(A)^T.
void matmul(const BlasCall& blas, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const void* A, int64_t lda,
            const void* B, int64_t ldb, float beta, void* C, int64_t ldc, const float* bias, cudaDataType ab,
            cudaDataType ct, void* stream, const char* op) {
  MP_CHECK(blas.handle != nullptr, "op ", op, ": a CUDA context needs a BLAS handle (ops::Context::blas, cuda::blas_create)");
  if (M <= 0 || N <= 0) return;
  // No products (cuBLASLt rejects k = 0), or a bias less aligned than the epilogue wants: the GEMM
  // without it, then the bias added by a kernel of ours.
  if (K <= 0 || (bias && alignment(bias) < 16)) {
    MP_CHECK(ct == CUDA_R_32F, "op ", op, ": k = 0 or an unaligned bias with a bf16 output");
    if (K <= 0) {
      scale_2d_kernel<<<blocks_for(M * N), 256, 0, as_stream(stream)>>>(static_cast<float*>(C), ldc, M, N, beta);
      check_launch(op);
    } else {
      matmul(blas, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, nullptr, ab, ct, stream, op);
    }
    if (bias) {
      add_bias_kernel<<<blocks_for(M * N), 256, 0, as_stream(stream)>>>(static_cast<float*>(C), ldc, M, N, bias);
      check_launch(op);
    }
    return;
  }
  Blas& b = *static_cast<Blas*>(blas.handle);
  // bf16 math only for fp32 inputs (bf16 inputs are bf16 already).
  const cublasComputeType_t compute =
      blas.bf16_math && ab == CUDA_R_32F ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F;
  const LtApi& api = lt();
  Desc dd;
  lt_check(api.desc_create(&dd.d, compute, CUDA_R_32F), "matmul descriptor");
  cublasLtMatmulDesc_t desc = dd.d;
  const cublasOperation_t opa = tb ? CUBLAS_OP_T : CUBLAS_OP_N, opb = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  lt_check(api.desc_set(desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa), "TRANSA");
  lt_check(api.desc_set(desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb), "TRANSB");
  if (bias) {
    const cublasLtEpilogue_t ep = CUBLASLT_EPILOGUE_BIAS;
    const int32_t bt = CUDA_R_32F;
    lt_check(api.desc_set(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep), "EPILOGUE");
    lt_check(api.desc_set(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias), "BIAS_POINTER");
    lt_check(api.desc_set(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt), "BIAS_DATA_TYPE");
  }
  // Column-major operands: first B (N x K as used), then A (K x M as used), C^T is N x M.
  const Layout la(ab, tb ? K : N, tb ? N : K, ldb), lb(ab, ta ? M : K, ta ? K : M, lda), lc(ct, N, M, ldc);
  // cuBLASLt assumes 256-byte aligned operands unless told otherwise; column ranges and arena pieces are
  // often less aligned, so the preference states each operand's alignment and the key remembers it.
  const int64_t al_a = alignment(B), al_b = alignment(A), al_c = alignment(C);
  const Key key{int64_t(ab) * 1000 + int64_t(compute), int64_t(ct), ta, tb, M, N, K, lda, ldb, ldc, al_a, al_b, al_c,
                bias ? alignment(bias) : 0};
  cublasLtMatmulAlgo_t algo;
  {
    std::lock_guard<std::mutex> lock(b.mutex);
    auto it = b.algos.find(key);
    if (it == b.algos.end()) {
      Pref pp;
      lt_check(api.pref_create(&pp.p), "matmul preference");
      const uint64_t ws = kWorkspaceBytes;
      lt_check(api.pref_set(pp.p, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws), "MAX_WORKSPACE_BYTES");
      const uint32_t align[3] = {uint32_t(al_a), uint32_t(al_b), uint32_t(al_c)};
      lt_check(api.pref_set(pp.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align[0], sizeof align[0]), "ALIGNMENT_A");
      lt_check(api.pref_set(pp.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align[1], sizeof align[1]), "ALIGNMENT_B");
      lt_check(api.pref_set(pp.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align[2], sizeof align[2]), "ALIGNMENT_C");
      lt_check(api.pref_set(pp.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align[2], sizeof align[2]), "ALIGNMENT_D");
      cublasLtMatmulHeuristicResult_t res{};
      int found = 0;
      const cublasStatus_t s = api.heuristic(b.handle, desc, la.l, lb.l, lc.l, lc.l, pp.p, 1, &res, &found);
      if (s != CUBLAS_STATUS_SUCCESS || found == 0) {
        fail("op ", op, ": cuBLASLt has no algorithm for ", M, " x ", N, " x ", K, " (lda ", lda, ", ldb ", ldb, ", ldc ",
             ldc, "): ", api.status_string(s));
      }
      it = b.algos.emplace(key, res.algo).first;
    }
    algo = it->second;
  }
  const cublasStatus_t s = api.matmul(b.handle, desc, &alpha, B, la.l, A, lb.l, &beta, C, lc.l, C, lc.l, &algo,
                                      b.workspace, kWorkspaceBytes, as_stream(stream));
  lt_check(s, op);
}

}  // namespace

void* blas_create() {
  auto* b = new Blas;
  try {
    lt_check(lt().create(&b->handle), "create");
    check(cudaMalloc(&b->workspace, kWorkspaceBytes), "cuBLASLt workspace");
  } catch (...) {
    blas_destroy(b);
    throw;
  }
  return b;
}

void blas_destroy(void* blas) {
  auto* b = static_cast<Blas*>(blas);
  if (!b) return;
  if (b->workspace) cudaFree(b->workspace);
  if (b->handle) lt().destroy(b->handle);
  delete b;
}

void gemm(const BlasCall& blas, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc, const float* bias, void* stream) {
  matmul(blas, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, bias, CUDA_R_32F, CUDA_R_32F, stream, "gemm");
}

void gemm_bf16(const BlasCall& blas, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const uint16_t* A,
               int64_t lda, const uint16_t* B, int64_t ldb, float beta, void* C, int64_t ldc, bool c_bf16,
               void* stream) {
  matmul(blas, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, nullptr, CUDA_R_16BF,
         c_bf16 ? CUDA_R_16BF : CUDA_R_32F, stream, "gemm_bf16");
}

}  // namespace metapo::cuda
