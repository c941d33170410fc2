// Attention through cuDNN's fused SDPA (flash attention) for bf16 training, built with the cuDNN
// front end's graph API (header-only; tools/setup.sh fetches it from PyPI's nvidia-cudnn-frontend
// wheel). The plain kernel of attention.cu stays the reference and the fallback.
//
// cuDNN is loaded at run time (the front end's dynamic loading, with the handle set here): a CUDA
// build of metapo starts where cuDNN is not installed, and there the attention runs on the plain
// kernel, with one note on stderr.
//
// The packed micro-batch is cuDNN's THD layout: Q, K, V, O of logical shape [b, h, s, d] with a
// token stride of h * d and a ragged offset per sequence (its first token times h * d), the lengths
// as a padding mask, the causal mask top-left aligned (equal query and key lengths). The statistics
// cuDNN keeps for the backward are the log-sum-exp of each row's scaled scores, as the plain kernel's
// lse; cuDNN writes them token-major ([tokens, heads]) and this file transposes them to and from the
// backend's head-major layout (TransformerEngine's THD layout uses the same token-major statistics).
// Graphs are built once per (sequences rounded up to a power of two, the extra ones empty; longest
// sequence rounded up to 128; heads, KV heads, head dimension, scale, device) and reused; the backward is
// cuDNN's deterministic algorithm.
//
// Where cuDNN is used: cuDNN 9.6 or newer (ragged statistics, grouped-query heads over ragged
// sequences) on sm_90 and newer (cuDNN has no deterministic backward over ragged sequences on sm_8x,
// and its ragged statistics are not used there). The backward's workspace is held to a quarter of the
// free device memory: with cuDNN >= 9.25 the front end then takes its linear-workspace deterministic
// path (CUDNN_FRONTEND_ATTN_DP_WORKSPACE_LIMIT, unless the user set it), before that a graph over the
// budget falls back. Every refusal before the first kernel is queued falls back to the plain kernel.
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include <cudnn_frontend.h>

#include "metapo/core/error.h"
#include "metapo/kernels/cuda.h"

namespace cudnn_frontend {
// The front end's dynamic loading resolves cuDNN's symbols through this handle (set by load()).
void* cudnn_dlhandle = nullptr;
}  // namespace cudnn_frontend

namespace metapo::cuda {

namespace {

namespace fe = cudnn_frontend;
using TensorPtr = std::shared_ptr<fe::graph::Tensor_attributes>;

// The tensors of both graphs, by uid.
enum Uid : int64_t {
  kQ = 1, kK, kV, kO, kStats, kDO, kDQ, kDK, kDV,
  kSeqQ, kSeqKV, kOffQ, kOffK, kOffV, kOffO, kOffStats, kOffDO, kOffDQ, kOffDK, kOffDV,
};

struct Shape {
  int64_t b, s, hq, hkv, d;  // b: the sequences rounded up to a power of two (the extra ones empty)
  uint32_t scale_bits;
  int device, sm;
  bool backward;
  auto tie() const { return std::tie(b, s, hq, hkv, d, scale_bits, device, sm, backward); }
  bool operator<(const Shape& o) const { return tie() < o.tie(); }
};

struct Plan {
  std::shared_ptr<fe::graph::Graph> graph;
  int64_t workspace = 0;
  bool ok = false;
  std::string why;  // when not ok
};

struct State {
  std::mutex mu;
  bool tried = false;
  std::string load_error;  // empty once cuDNN is loaded
  size_t version = 0;
  std::map<int, cudnnHandle_t> handles;  // per device
  std::map<int, int> sm;                 // compute capability (major * 10 + minor) per device
  std::map<Shape, Plan> plans;
  std::set<std::string> noted;  // fallback reasons already reported
  void* buf = nullptr;          // the packed copies, statistics, offsets and workspace
  size_t cap = 0;
  std::string status = "plain kernel (cuDNN not tried yet)";
};

State& state() {
  static State* s = new State;  // lives as long as the process (handles and plans are never torn down)
  return *s;
}

void check_cuda(cudaError_t e, const char* what) {
  MP_CHECK(e == cudaSuccess, "CUDA ", what, ": ", cudaGetErrorString(e));
}

bool load(State& st) {
  if (st.tried) return st.load_error.empty();
  st.tried = true;
  // The front end calls a few CUDA runtime functions through its own dlopen of libcudart by name
  // (metapo links the runtime statically): the toolkit's copy loaded first serves that name where the
  // loader's path lacks it.
  for (const char* name : {"libcudart.so.13", "/usr/local/cuda/lib64/libcudart.so.13"})
    if (dlopen(name, RTLD_NOW | RTLD_GLOBAL)) break;
  for (const char* name : {"libcudnn.so.9", "/usr/local/cuda/lib64/libcudnn.so.9", "/usr/lib/x86_64-linux-gnu/libcudnn.so.9"})
    if ((fe::cudnn_dlhandle = dlopen(name, RTLD_NOW | RTLD_LOCAL))) break;
  if (!fe::cudnn_dlhandle) {
    const char* e = dlerror();
    st.load_error = std::string("cannot load libcudnn.so.9 (") + (e ? e : "not found") + ")";
    return false;
  }
  try {
    st.version = fe::detail::get_backend_version();
  } catch (const std::exception& e) {
    st.load_error = std::string("cuDNN: ") + e.what();
    return false;
  }
  if (st.version < 90600) {
    st.load_error = "cuDNN " + std::to_string(st.version) + ": 9.6 or newer needed (ragged statistics)";
    return false;
  }
  return true;
}

// The device's handle on the stream, or null with `why` set.
cudnnHandle_t handle_for(State& st, int device, void* stream, std::string& why) {
  auto it = st.handles.find(device);
  if (it == st.handles.end()) {
    cudnnHandle_t h = nullptr;
    if (fe::detail::create_handle(&h) != CUDNN_STATUS_SUCCESS) {
      why = "cudnnCreate failed on device " + std::to_string(device);
      return nullptr;
    }
    it = st.handles.emplace(device, h).first;
  }
  if (fe::detail::set_stream(it->second, static_cast<cudaStream_t>(stream)) != CUDNN_STATUS_SUCCESS) {
    why = "cudnnSetStream failed";
    return nullptr;
  }
  return it->second;
}

int sm_version(State& st, int device) {
  auto it = st.sm.find(device);
  if (it != st.sm.end()) return it->second;
  int major = 0, minor = 0;
  check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "cudaDeviceGetAttribute");
  check_cuda(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device), "cudaDeviceGetAttribute");
  return st.sm[device] = major * 10 + minor;
}

TensorPtr index_tensor(fe::graph::Graph& g, const char* name, int64_t uid, int64_t n) {
  return g.tensor(fe::graph::Tensor_attributes()
                      .set_name(name)
                      .set_uid(uid)
                      .set_dim({n, 1, 1, 1})
                      .set_stride({1, 1, 1, 1})
                      .set_data_type(fe::DataType_t::INT32));
}

// A [b, h, s, d] tensor over packed rows of h * d elements (THD): its sequences start at `offset`.
fe::graph::Tensor_attributes& thd(fe::graph::Tensor_attributes& t, const Shape& s, int64_t h, const TensorPtr& offset) {
  return t.set_dim({s.b, h, s.s, s.d}).set_stride({s.s * h * s.d, s.d, h * s.d, 1}).set_ragged_offset(offset);
}

TensorPtr thd_input(fe::graph::Graph& g, const char* name, int64_t uid, const Shape& s, int64_t h, const TensorPtr& off) {
  fe::graph::Tensor_attributes t;
  t.set_name(name).set_uid(uid);
  return g.tensor(thd(t, s, h, off));
}

// The statistics, token-major: [b, hq, s, 1] over rows of hq floats.
fe::graph::Tensor_attributes& stats_layout(fe::graph::Tensor_attributes& t, const Shape& s, const TensorPtr& off) {
  return t.set_dim({s.b, s.hq, s.s, 1}).set_stride({s.s * s.hq, 1, s.hq, 1}).set_data_type(fe::DataType_t::FLOAT)
      .set_ragged_offset(off);
}

std::shared_ptr<fe::graph::Graph> new_graph(const Shape& s) {
  auto g = std::make_shared<fe::graph::Graph>();
  g->set_sm_version(s.sm);  // so the front end need not ask the CUDA runtime
  g->set_io_data_type(fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  return g;
}

struct Qkv {
  TensorPtr q, k, v;
};

Qkv qkv_inputs(fe::graph::Graph& g, const Shape& s) {
  return {thd_input(g, "Q", kQ, s, s.hq, index_tensor(g, "off_q", kOffQ, s.b + 1)),
          thd_input(g, "K", kK, s, s.hkv, index_tensor(g, "off_k", kOffK, s.b + 1)),
          thd_input(g, "V", kV, s, s.hkv, index_tensor(g, "off_v", kOffV, s.b + 1))};
}

// What both passes' options say: the causal mask (top-left diagonal, right bound 0), the scale, and
// the sequence lengths as a padding mask.
template <typename Attributes>
Attributes& masked(Attributes& opt, fe::graph::Graph& g, const Shape& s, float scale) {
  return opt.set_diagonal_alignment(fe::DiagonalAlignment_t::TOP_LEFT)
      .set_diagonal_band_right_bound(0)
      .set_attn_scale(scale)
      .set_padding_mask(true)
      .set_seq_len_q(index_tensor(g, "seq_q", kSeqQ, s.b))
      .set_seq_len_kv(index_tensor(g, "seq_kv", kSeqKV, s.b));
}

std::shared_ptr<fe::graph::Graph> forward_graph(const Shape& s, float scale) {
  auto g = new_graph(s);
  const Qkv in = qkv_inputs(*g, s);
  auto opt = fe::graph::SDPA_attributes().set_name("sdpa").set_generate_stats(true);
  auto [o, stats] = g->sdpa(in.q, in.k, in.v, masked(opt, *g, s, scale));
  thd(o->set_output(true).set_uid(kO), s, s.hq, index_tensor(*g, "off_o", kOffO, s.b + 1));
  stats_layout(stats->set_output(true).set_uid(kStats), s, index_tensor(*g, "off_stats", kOffStats, s.b + 1));
  return g;
}

std::shared_ptr<fe::graph::Graph> backward_graph(const Shape& s, float scale) {
  auto g = new_graph(s);
  const Qkv in = qkv_inputs(*g, s);
  const TensorPtr o = thd_input(*g, "O", kO, s, s.hq, index_tensor(*g, "off_o", kOffO, s.b + 1));
  const TensorPtr dout = thd_input(*g, "dO", kDO, s, s.hq, index_tensor(*g, "off_do", kOffDO, s.b + 1));
  fe::graph::Tensor_attributes st;
  st.set_name("Stats").set_uid(kStats);
  const TensorPtr stats = g->tensor(stats_layout(st, s, index_tensor(*g, "off_stats", kOffStats, s.b + 1)));
  auto opt = fe::graph::SDPA_backward_attributes().set_name("sdpa_backward").set_deterministic_algorithm(true);
  auto [dq, dk, dv] = g->sdpa_backward(in.q, in.k, in.v, o, dout, stats, masked(opt, *g, s, scale));
  thd(dq->set_output(true).set_uid(kDQ), s, s.hq, index_tensor(*g, "off_dq", kOffDQ, s.b + 1));
  thd(dk->set_output(true).set_uid(kDK), s, s.hkv, index_tensor(*g, "off_dk", kOffDK, s.b + 1));
  thd(dv->set_output(true).set_uid(kDV), s, s.hkv, index_tensor(*g, "off_dv", kOffDV, s.b + 1));
  return g;
}

Plan build(cudnnHandle_t h, const Shape& s, float scale, int64_t budget) {
  Plan p;
  try {
    // The deterministic backward's workspace: within the budget (the front end's linear-workspace path
    // on cuDNN >= 9.25; a user's own setting stays).
    if (s.backward) setenv("CUDNN_FRONTEND_ATTN_DP_WORKSPACE_LIMIT", std::to_string(budget).c_str(), 0);
    p.graph = s.backward ? backward_graph(s, scale) : forward_graph(s, scale);
    const char* step = "validate";
    fe::error_t e = p.graph->validate();
    if (e.is_good()) step = "build_operation_graph", e = p.graph->build_operation_graph(h);
    if (e.is_good()) step = "create_execution_plans", e = p.graph->create_execution_plans({fe::HeurMode_t::A});
    if (e.is_good()) step = "check_support", e = p.graph->check_support(h);
    if (e.is_good()) step = "build_plans", e = p.graph->build_plans(h);
    if (e.is_good()) step = "get_workspace_size", e = p.graph->get_workspace_size(p.workspace);
    if (!e.is_good()) {
      p.why = std::string(step) + ": " + e.get_message();
      return p;
    }
    if (p.workspace > budget) {
      p.why = "a workspace of " + std::to_string(p.workspace >> 20) + " MiB, over the budget of " +
              std::to_string(budget >> 20) + " MiB (a quarter of the free device memory)";
      p.graph.reset();
      return p;
    }
    p.ok = true;
  } catch (const std::exception& ex) {
    p.why = ex.what();
  }
  if (!p.ok) p.graph.reset();
  return p;
}

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// The longest sequence: the caller's, or from a host copy of cu_seqlens (which waits for the stream).
int64_t longest(const AttentionArgs& a, void* stream) {
  if (a.max_seqlen > 0) return a.max_seqlen;
  std::vector<int64_t> cu(size_t(a.n_seqs + 1));
  to_host(cu.data(), a.cu_seqlens, sizeof(int64_t) * cu.size(), stream);
  int64_t L = 0;
  for (int64_t i = 0; i < a.n_seqs; ++i) L = std::max(L, cu[size_t(i) + 1] - cu[size_t(i)]);
  return L;
}

// Pieces of one device buffer, each 256-byte aligned; without a base only their total is counted
// (the pointers are null).
class Carve {
 public:
  template <typename T>
  T* take(size_t n) {
    const size_t at = (used_ + 255) / 256 * 256;
    used_ = at + n * sizeof(T);
    return base_ ? reinterpret_cast<T*>(base_ + at) : nullptr;
  }
  size_t used() const { return used_; }
  void set_base(void* b) { base_ = static_cast<char*>(b), used_ = 0; }

 private:
  char* base_ = nullptr;
  size_t used_ = 0;
};

// Records that the plain kernel runs, and why (one stderr line per reason).
void fallback(State& st, const std::string& why) {
  st.status = "plain kernel (" + why + ")";
  if (st.noted.insert(why).second) std::fprintf(stderr, "metapo: attention on the plain kernel: %s\n", why.c_str());
}

int64_t pow2_at_least(int64_t n) {
  int64_t p = 1;
  while (p < n) p *= 2;
  return p;
}

// The plan for a call, or null with the status set (under st.mu); nothing is queued on the stream.
const Plan* plan_for(State& st, const AttentionArgs& a, bool backward, void* stream, cudnnHandle_t* handle,
                     int64_t* b_pad) {
  auto refuse = [&](const std::string& why) -> const Plan* {
    fallback(st, why);
    return nullptr;
  };
  try {
    if (!load(st)) return refuse(st.load_error);
    if (a.head_dim % 8 != 0 || a.head_dim > 256)
      return refuse("head dimension " + std::to_string(a.head_dim) + ": cuDNN's SDPA needs a multiple of 8, at most 256");
    if (a.n_tokens * a.n_heads * a.head_dim >= (int64_t(1) << 31))
      return refuse("a micro-batch of " + std::to_string(a.n_tokens) + " tokens exceeds cuDNN's int32 offsets");
    int device = 0;
    check_cuda(cudaGetDevice(&device), "cudaGetDevice");
    const int sm = sm_version(st, device);
    if (sm < 90)
      return refuse("sm_" + std::to_string(sm) + ": cuDNN's attention over ragged sequences is used on sm_90 and newer");
    uint32_t scale_bits;
    std::memcpy(&scale_bits, &a.scale, sizeof scale_bits);
    *b_pad = pow2_at_least(a.n_seqs);
    const Shape s{*b_pad, round_up(longest(a, stream), 128), a.n_heads, a.n_kv_heads, a.head_dim, scale_bits, device,
                  sm, backward};
    std::string why;
    *handle = handle_for(st, device, stream, why);
    if (!*handle) return refuse(why);
    auto it = st.plans.find(s);
    if (it == st.plans.end()) {
      size_t free_bytes = 0, total = 0;
      check_cuda(cudaMemGetInfo(&free_bytes, &total), "cudaMemGetInfo");
      it = st.plans.emplace(s, build(*handle, s, a.scale, int64_t(free_bytes / 4))).first;
    }
    if (!it->second.ok)
      return refuse(std::string(backward ? "backward" : "forward") + " graph: " + it->second.why);
    st.status = "cuDNN " + std::to_string(st.version);
    return &it->second;
  } catch (const std::exception& e) {
    return refuse(e.what());
  }
}

// The call's device memory: the buffer grown when needed (cudaFree waits for the device); null, with
// the status set, when the device has not that much.
void* reserve(State& st, size_t bytes) {
  if (bytes > st.cap) {
    if (st.buf) check_cuda(cudaFree(st.buf), "cudaFree");
    st.buf = nullptr, st.cap = 0;
    if (cudaMalloc(&st.buf, bytes) != cudaSuccess) {
      cudaGetLastError();  // clear it: the plain kernel runs instead
      st.buf = nullptr;
      fallback(st, "no room for cuDNN's buffers (" + std::to_string(bytes >> 20) + " MiB)");
      return nullptr;
    }
    st.cap = bytes;
  }
  return st.buf;
}

struct Offsets {
  int32_t *seq, *q, *kv, *stats;
};

Offsets take_offsets(Carve& c, int64_t b) {
  Offsets o{};
  o.seq = c.take<int32_t>(size_t(b)), o.q = c.take<int32_t>(size_t(b + 1)), o.kv = c.take<int32_t>(size_t(b + 1));
  o.stats = c.take<int32_t>(size_t(b + 1));
  return o;
}

void execute(const Plan& p, cudnnHandle_t h, std::unordered_map<int64_t, void*>& pack, void* workspace, const char* what) {
  fe::error_t e = p.graph->execute(h, pack, workspace);
  MP_CHECK(e.is_good(), "cuDNN attention ", what, ": ", e.get_message());
}

// One call's packed bf16 copies (dout, dq, dk, dv: the backward's), statistics, offsets and workspace
// (null when the plan needs none), all in the one buffer.
struct Buffers {
  uint16_t *q = nullptr, *k = nullptr, *v = nullptr, *o = nullptr;
  uint16_t *dout = nullptr, *dq = nullptr, *dk = nullptr, *dv = nullptr;
  float* stats = nullptr;
  Offsets off{};
  void* ws = nullptr;
};

// Lays the call's pieces out in two passes (sizes, then pointers into the grown buffer); false, before
// any work is queued, when the device has no room for them.
bool lay_out(State& st, const AttentionArgs& a, int64_t b, int64_t workspace, bool backward, Buffers& u) {
  const size_t T = size_t(a.n_tokens), wq = size_t(a.n_heads * a.head_dim), wkv = size_t(a.n_kv_heads * a.head_dim);
  Carve c;
  void* base = nullptr;
  for (int pass = 0; pass < 2; ++pass) {
    if (pass == 1 && !(base = reserve(st, c.used()))) return false;
    c.set_base(base);
    u = Buffers{};
    u.q = c.take<uint16_t>(T * wq), u.k = c.take<uint16_t>(T * wkv), u.v = c.take<uint16_t>(T * wkv);
    u.o = c.take<uint16_t>(T * wq);
    if (backward) {
      u.dout = c.take<uint16_t>(T * wq), u.dq = c.take<uint16_t>(T * wq);
      u.dk = c.take<uint16_t>(T * wkv), u.dv = c.take<uint16_t>(T * wkv);
    }
    u.stats = c.take<float>(T * size_t(a.n_heads));
    u.off = take_offsets(c, b);
    if (workspace > 0) u.ws = c.take<char>(size_t(workspace));
  }
  return true;
}

// What both graphs read: q, k, v rounded to bf16 and the ragged offsets, queued on the stream; the
// variant pack's entries for them and for O and the statistics.
std::unordered_map<int64_t, void*> shared_inputs(const AttentionArgs& a, int64_t b, const Buffers& u, void* stream) {
  const int64_t T = a.n_tokens, wq = a.n_heads * a.head_dim, wkv = a.n_kv_heads * a.head_dim;
  cast_f32_to_bf16_2d(u.q, a.q, a.ld_qkv, wq, T, stream);
  cast_f32_to_bf16_2d(u.k, a.k, a.ld_qkv, wkv, T, stream);
  cast_f32_to_bf16_2d(u.v, a.v, a.ld_qkv, wkv, T, stream);
  ragged_offsets(a.cu_seqlens, a.n_seqs, b, wq, wkv, a.n_heads, u.off.seq, u.off.q, u.off.kv, u.off.stats, stream);
  return {{kQ, u.q},           {kK, u.k},          {kV, u.v},        {kO, u.o},
          {kStats, u.stats},   {kSeqQ, u.off.seq}, {kSeqKV, u.off.seq}, {kOffQ, u.off.q},
          {kOffK, u.off.kv},   {kOffV, u.off.kv},  {kOffO, u.off.q}, {kOffStats, u.off.stats}};
}

}  // namespace

bool cudnn_attention_built() { return true; }

const char* cudnn_attention_status() {
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mu);
  static thread_local std::string copy;
  copy = st.status;
  return copy.c_str();
}

bool cudnn_attention_forward(const AttentionArgs& a, void* stream) {
  if (a.n_tokens <= 0 || a.n_seqs <= 0) return false;
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mu);
  cudnnHandle_t h = nullptr;
  int64_t b = 0;
  const Plan* p = plan_for(st, a, false, stream, &h, &b);
  Buffers u;
  if (!p || !lay_out(st, a, b, p->workspace, false, u)) return false;
  std::unordered_map<int64_t, void*> pack = shared_inputs(a, b, u, stream);
  execute(*p, h, pack, u.ws, "forward");
  cast_bf16_to_f32_2d(a.out, a.ld_out, u.o, a.n_heads * a.head_dim, a.n_tokens, stream);
  transpose_f32(a.lse, u.stats, a.n_tokens, a.n_heads, stream);  // [T, H] -> [H, T]
  return true;
}

bool cudnn_attention_backward(const AttentionArgs& a, const float* dout, float* dq, float* dk, float* dv,
                              int64_t ld_dqkv, void* stream) {
  if (a.n_tokens <= 0 || a.n_seqs <= 0) return false;
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mu);
  cudnnHandle_t h = nullptr;
  int64_t b = 0;
  const Plan* p = plan_for(st, a, true, stream, &h, &b);
  Buffers u;
  if (!p || !lay_out(st, a, b, p->workspace, true, u)) return false;
  const int64_t T = a.n_tokens, wq = a.n_heads * a.head_dim, wkv = a.n_kv_heads * a.head_dim;
  std::unordered_map<int64_t, void*> pack = shared_inputs(a, b, u, stream);
  cast_f32_to_bf16_2d(u.o, a.out, a.ld_out, wq, T, stream);
  cast_f32_to_bf16_2d(u.dout, dout, a.ld_out, wq, T, stream);
  transpose_f32(u.stats, a.lse, a.n_heads, T, stream);  // [H, T] -> [T, H]
  pack.insert({{kDO, u.dout}, {kDQ, u.dq}, {kDK, u.dk}, {kDV, u.dv}, {kOffDO, u.off.q}, {kOffDQ, u.off.q},
               {kOffDK, u.off.kv}, {kOffDV, u.off.kv}});
  execute(*p, h, pack, u.ws, "backward");
  cast_bf16_to_f32_2d(dq, ld_dqkv, u.dq, wq, T, stream);
  cast_bf16_to_f32_2d(dk, ld_dqkv, u.dk, wkv, T, stream);
  cast_bf16_to_f32_2d(dv, ld_dqkv, u.dv, wkv, T, stream);
  return true;
}

}  // namespace metapo::cuda
