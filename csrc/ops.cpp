// fastmtl._C: the CUDA ops of fastmtl, registered with the PyTorch dispatcher (no pybind11).
//
// This is the only translation unit that includes torch headers. It validates the inputs, builds
// the multi-tensor table (multi_tensor.cuh) on the host, caches its device copy, and calls the
// launchers defined in the .cu files on the current CUDA stream of the inputs' device.
//
// Ops (namespace fastmtl; "entries" are the K x P task gradients, task-major: tensors[k * P + p]
// is task k's gradient of parameter p, None where task k does not touch parameter p):
//
//   gramian_cuda(Tensor?[] tensors, int num_tasks) -> Tensor
//       [K, K] Gram matrix, float32 (float64 for float64 inputs).
//   weighted_sum_cuda(Tensor?[] tensors, int num_tasks, Tensor weights) -> Tensor
//       sum_k weights[k] * g[k][p] for every parameter, in ONE flat 1-D tensor of the inputs' dtype:
//       parameter p occupies [off_p, off_p + numel_p) with off_p = sum_{q<p} round_up(numel_q, 16),
//       in row-major order; the padding between parameters holds zeros. One allocation instead of
//       P, and 16-byte aligned stores for every parameter. fastmtl.cuda splits it into views.
//   weighted_sum_cuda_out(Tensor?[] tensors, int num_tasks, Tensor weights, Tensor(a!)[] out) -> ()
//       writes parameter p into out[p] (any supported dtype, the same for every out tensor; numel
//       equal to the parameter's). out[p] may be the very same tensor as one of parameter p's inputs;
//       partial overlaps are rejected. Columns without any tensor leave out[p] untouched.
//   table_cache_stats() -> int[]      [entries, hits, misses, capacity]
//   table_cache_clear() -> ()
//
// Registration uses TORCH_LIBRARY_FRAGMENT: the fastmtl namespace is shared with the Triton ops,
// which are defined from Python (torch.library), so no single block owns the namespace.
//
// Loading: importing fastmtl._C loads this library (a valid, empty Python extension module, see
// PyInit__C in module.cpp), which runs the static registrations below. The fake (meta) kernels are
// registered in Python by fastmtl.cuda, named here with set_python_module so that torch imports
// that module when it needs them.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <list>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include "multi_tensor.cuh"

namespace {

using OptTensorList = c10::List<std::optional<at::Tensor>>;

// Largest K: the weighted sum keeps lam and the row pointers in shared memory (<= 48 KiB), and the
// Gram's tile pairs must fit the grid's y dimension. fastmtl.cuda.MAX_TASKS mirrors it.
constexpr int64_t kMaxTasks = 2048;

bool supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

fastmtl::DType kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return fastmtl::kFloat16;
    case at::kBFloat16: return fastmtl::kBFloat16;
    case at::kDouble: return fastmtl::kFloat64;
    default: return fastmtl::kFloat32;
  }
}

at::ScalarType accumulate_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err),
              " (was fastmtl._C built for this GPU's architecture? see `python -m fastmtl.info`)");
}

// ---- validated inputs -------------------------------------------------------------------------

struct Inputs {
  int64_t K = 0;
  int64_t P = 0;
  at::ScalarType dtype = at::kFloat;
  c10::Device device{c10::kCUDA};
  std::vector<int64_t> numel;     // P; 0 for a column without any tensor
  std::vector<int64_t> addr;      // K * P start addresses, 0 = missing
  std::vector<at::Tensor> keep;   // contiguous copies of strided inputs, alive until the launch is enqueued
};

// Checks every entry and collects addresses. With dense_ok, a column whose tensors are all
// non-overlapping and dense with identical strides is read in place in storage order (the Gram
// matrix does not depend on the element order, only on the correspondence across tasks); otherwise
// every tensor that is not contiguous is copied (a cost on a cold path, never an error).
Inputs validate(const OptTensorList& tensors, int64_t num_tasks, const char* op, bool dense_ok) {
  TORCH_CHECK(num_tasks >= 1, op, ": num_tasks must be at least 1, got ", num_tasks);
  const int64_t n = int64_t(tensors.size());
  TORCH_CHECK(n > 0 && n % num_tasks == 0, op, ": expected num_tasks * P entries (entry k * P + p is task k's ",
              "gradient of parameter p), got ", n, " entries for num_tasks = ", num_tasks);
  Inputs in;
  in.K = num_tasks;
  in.P = n / num_tasks;
  in.numel.assign(in.P, 0);
  in.addr.assign(n, 0);
  std::vector<at::Tensor> col(in.P);   // first tensor of each column
  std::vector<int64_t> owner(in.P, -1);
  std::vector<char> col_dense(in.P, 1);    // every tensor of the column dense, with identical strides
  std::vector<char> col_strided(in.P, 0);  // the column holds a non-contiguous tensor
  bool have_ref = false;
  int64_t ref_k = 0, ref_p = 0;

  for (int64_t k = 0; k < in.K; ++k) {
    for (int64_t p = 0; p < in.P; ++p) {
      const std::optional<at::Tensor> opt = tensors.get(k * in.P + p);
      if (!opt.has_value() || !opt->defined()) continue;
      const at::Tensor& t = *opt;
      TORCH_CHECK(t.is_cuda(), op, ": task ", k, ", parameter ", p, ": expected a CUDA tensor, got one on ",
                  t.device(), "; fastmtl's CUDA ops run on CUDA tensors only (use backend=\"reference\" on CPU)");
      TORCH_CHECK(t.layout() == at::kStrided, op, ": task ", k, ", parameter ", p,
                  ": sparse or non-strided tensors are not supported (layout ", t.layout(), ")");
      TORCH_CHECK(supported_dtype(t.scalar_type()), op, ": task ", k, ", parameter ", p, ": dtype ",
                  t.scalar_type(), " is not supported (float32, float16, bfloat16 or float64)");
      if (!have_ref) {
        have_ref = true;
        in.dtype = t.scalar_type();
        in.device = t.device();
        ref_k = k;
        ref_p = p;
      } else {
        TORCH_CHECK(t.device() == in.device, op, ": task ", k, ", parameter ", p, ": is on ", t.device(),
                    " but task ", ref_k, ", parameter ", ref_p, " is on ", in.device, "; use one device");
        TORCH_CHECK(t.scalar_type() == in.dtype, op, ": task ", k, ", parameter ", p, ": has dtype ",
                    t.scalar_type(), " but task ", ref_k, ", parameter ", ref_p, " has ", in.dtype,
                    "; all task gradients must share one dtype");
      }
      if (owner[p] < 0) {
        owner[p] = k;
        col[p] = t;
        in.numel[p] = t.numel();
      } else {
        TORCH_CHECK(t.sizes().equals(col[p].sizes()), op, ": task ", k, ", parameter ", p, ": shape ", t.sizes(),
                    " differs from task ", owner[p], "'s ", col[p].sizes(), " for the same parameter");
        if (!t.strides().equals(col[p].strides())) col_dense[p] = 0;
      }
      if (t.numel() == 0) continue;
      if (t.is_contiguous()) {
        in.addr[k * in.P + p] = reinterpret_cast<int64_t>(t.data_ptr());
      } else {
        col_strided[p] = 1;  // resolved below, once the whole column is known
        if (!t.is_non_overlapping_and_dense()) col_dense[p] = 0;
      }
    }
  }
  TORCH_CHECK(have_ref, op, ": every entry is None; at least one task gradient is needed");

  // Columns holding a non-contiguous tensor (rare): read in place when the whole column shares one
  // dense layout (and the caller allows it), otherwise copy the non-contiguous tensors.
  for (int64_t p = 0; p < in.P; ++p) {
    if (!col_strided[p]) continue;
    const bool in_place = dense_ok && col_dense[p] && col[p].is_non_overlapping_and_dense();
    for (int64_t k = 0; k < in.K; ++k) {
      const std::optional<at::Tensor> opt = tensors.get(k * in.P + p);
      if (!opt.has_value() || !opt->defined() || opt->numel() == 0) continue;
      const at::Tensor& t = *opt;
      if (in_place || t.is_contiguous()) {
        in.addr[k * in.P + p] = reinterpret_cast<int64_t>(t.data_ptr());
      } else {
        at::Tensor c = t.contiguous();
        in.addr[k * in.P + p] = reinterpret_cast<int64_t>(c.data_ptr());
        in.keep.push_back(std::move(c));
      }
    }
  }
  return in;
}

at::Tensor prepare_weights(const at::Tensor& weights, const Inputs& in, const char* op) {
  TORCH_CHECK(weights.defined(), op, ": weights is undefined");
  TORCH_CHECK(weights.device() == in.device, op, ": weights is on ", weights.device(),
              " but the task gradients are on ", in.device, "; move the weights to the gradients' device");
  TORCH_CHECK(weights.numel() == in.K, op, ": weights must hold num_tasks = ", in.K, " values, got shape ",
              weights.sizes());
  TORCH_CHECK(at::isFloatingType(weights.scalar_type()), op, ": weights must be floating point, got ",
              weights.scalar_type());
  // A no-op when already contiguous in the accumulation dtype; otherwise one tiny cast kernel.
  return weights.reshape({in.K}).to(accumulate_dtype(in.dtype)).contiguous();
}

// ---- the table and its cache ------------------------------------------------------------------

struct HostTable {
  std::vector<int64_t> words;
  int64_t C = 0;          // chunks
  int64_t flat_len = 0;   // length of a flat output
  bool missing = false;   // some column with elements has a null entry (kFlagMissing)
};

HostTable build_table(const Inputs& in, const std::vector<int64_t>* out_addr) {
  const fastmtl::TableLayout L{in.K, in.P};
  HostTable h;
  h.words.assign(L.words(out_addr != nullptr), 0);
  int64_t* w = h.words.data();
  std::memcpy(w + L.ptrs(), in.addr.data(), sizeof(int64_t) * in.addr.size());
  int64_t chunks = 0, off = 0;
  for (int64_t p = 0; p < in.P; ++p) {
    const int64_t n = in.numel[p];
    w[L.chunk_start() + p] = chunks;
    chunks += fastmtl::ceil_div(n, fastmtl::kChunk);
    w[L.numel() + p] = n;
    w[L.flat_off() + p] = off;
    off += fastmtl::round_up(n, fastmtl::kOutPad);
    bool aligned = true, missing = false;
    for (int64_t k = 0; k < in.K; ++k) {
      aligned = aligned && (in.addr[k * in.P + p] % 16 == 0);
      missing = missing || (n > 0 && in.addr[k * in.P + p] == 0);
    }
    h.missing = h.missing || missing;
    if (out_addr) {
      w[L.out_ptrs() + p] = (*out_addr)[p];
      aligned = aligned && ((*out_addr)[p] % 16 == 0);
    }
    w[L.flags() + p] = (aligned ? fastmtl::kFlagAligned : 0) | (missing ? fastmtl::kFlagMissing : 0);
  }
  w[L.chunk_start() + in.P] = chunks;
  h.C = chunks;
  h.flat_len = off;
  return h;
}

struct VectorHash {
  size_t operator()(const std::vector<int64_t>& v) const noexcept {
    uint64_t h = 0x9e3779b97f4a7c15ull ^ v.size();
    for (int64_t x : v) {
      uint64_t z = uint64_t(x) + 0x9e3779b97f4a7c15ull;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      h = (h ^ (z ^ (z >> 31))) * 0x100000001b3ull;
    }
    return size_t(h);
  }
};

// LRU cache of device tables. The key is (device, stream, dtypes, mode) followed by the complete
// host table, i.e. every address and size: a hit means the current tensors have exactly these
// addresses and sizes, so the cached table is exact even if the tensors it was built for are gone.
// Object identity is never used (wrappers are recreated every step), and no tensor of the caller is
// stored (no lifetime extension). Entries are bound to the stream they were uploaded on, so the
// caching allocator's stream-ordered reuse covers eviction.
class TableCache {
 public:
  static constexpr size_t kCapacity = 64;

  std::optional<at::Tensor> find(const std::vector<int64_t>& key) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = map_.find(key);
    if (it == map_.end()) {
      ++misses_;
      return std::nullopt;
    }
    ++hits_;
    lru_.splice(lru_.begin(), lru_, it->second.pos);
    return it->second.table;
  }

  void insert(std::vector<int64_t> key, at::Tensor table) {
    std::lock_guard<std::mutex> lock(mu_);
    auto found = map_.find(key);
    if (found != map_.end()) return;  // another thread inserted the same table
    auto res = map_.emplace(std::move(key), Node{std::move(table), {}});
    lru_.push_front(&res.first->first);
    res.first->second.pos = lru_.begin();
    while (map_.size() > kCapacity) {
      const std::vector<int64_t>* victim = lru_.back();
      lru_.pop_back();
      map_.erase(*victim);
    }
  }

  std::vector<int64_t> stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {int64_t(map_.size()), hits_, misses_, int64_t(kCapacity)};
  }

  void clear() {
    std::lock_guard<std::mutex> lock(mu_);
    lru_.clear();
    map_.clear();
    hits_ = misses_ = 0;
  }

 private:
  struct Node {
    at::Tensor table;
    std::list<const std::vector<int64_t>*>::iterator pos;
  };
  std::mutex mu_;
  std::unordered_map<std::vector<int64_t>, Node, VectorHash> map_;
  std::list<const std::vector<int64_t>*> lru_;
  int64_t hits_ = 0;
  int64_t misses_ = 0;
};

TableCache& table_cache() {
  static TableCache* cache = new TableCache();  // never destroyed: no CUDA frees at interpreter exit
  return *cache;
}

bool stream_is_capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &status) != cudaSuccess) {
    (void)cudaGetLastError();
    return true;  // unknown: take the capture-safe path
  }
  return status != cudaStreamCaptureStatusNone;
}

// The device table for `h`. Eager: from the cache, or one host-to-device copy from pinned memory
// (asynchronous; the caching host allocator keeps the pinned block until the copy has run), then
// cached. Under graph capture: never cached (a cached table could be evicted and its memory reused
// while the graph still refers to it), written by fill kernels into memory from the graph's pool.
at::Tensor device_table(const HostTable& h, const Inputs& in, int64_t out_dtype, bool cacheable,
                        const c10::cuda::CUDAStream& stream, const char* op) {
  const int64_t n = int64_t(h.words.size());
  const auto dev_opts = at::TensorOptions().dtype(at::kLong).device(in.device);
  if (stream_is_capturing(stream.stream())) {
    at::Tensor table = at::empty({n}, dev_opts);
    check_launch(fastmtl::fill_table_async(table.data_ptr<int64_t>(), h.words.data(), n, stream.stream()), op);
    return table;
  }
  std::vector<int64_t> key;
  if (cacheable) {
    key.reserve(h.words.size() + 5);
    key.push_back(in.device.index());
    key.push_back(int64_t(stream.id()));
    key.push_back(int64_t(in.dtype));
    key.push_back(out_dtype);
    key.push_back(in.K);
    key.insert(key.end(), h.words.begin(), h.words.end());
    if (auto hit = table_cache().find(key)) return *hit;
  }
  at::Tensor host = at::empty({n}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  std::memcpy(host.data_ptr<int64_t>(), h.words.data(), sizeof(int64_t) * size_t(n));
  at::Tensor table = at::empty({n}, dev_opts);
  table.copy_(host, /*non_blocking=*/true);
  if (cacheable) table_cache().insert(std::move(key), table);
  return table;
}

// ---- ops ----------------------------------------------------------------------------------------

at::Tensor gramian_cuda(const OptTensorList& tensors, int64_t num_tasks) {
  constexpr const char* op = "fastmtl::gramian_cuda";
  Inputs in = validate(tensors, num_tasks, op, /*dense_ok=*/true);
  TORCH_CHECK(in.K <= kMaxTasks, op, ": at most ", kMaxTasks, " tasks, got ", in.K);
  const c10::cuda::CUDAGuard guard(in.device);
  const c10::cuda::CUDAStream stream = c10::cuda::getCurrentCUDAStream(in.device.index());
  const auto opts = at::TensorOptions().dtype(accumulate_dtype(in.dtype)).device(in.device);
  const HostTable h = build_table(in, nullptr);
  if (h.C == 0) return at::zeros({in.K, in.K}, opts);
  const at::Tensor table = device_table(h, in, -1, in.keep.empty(), stream, op);
  const fastmtl::DType dt = kernel_dtype(in.dtype);
  const fastmtl::GramPlan plan = fastmtl::gramian_plan(dt, in.K, h.C, in.device.index(), h.missing);
  at::Tensor partials = at::empty({plan.partial_elems()}, opts);
  at::Tensor G = at::empty({in.K, in.K}, opts);
  const fastmtl::TableArgs args{table.data_ptr<int64_t>(), in.K, in.P, h.C};
  check_launch(fastmtl::gramian_launch(plan, dt, args, partials.data_ptr(), G.data_ptr(), stream.stream()), op);
  return G;
}

at::Tensor weighted_sum_cuda(const OptTensorList& tensors, int64_t num_tasks, const at::Tensor& weights) {
  constexpr const char* op = "fastmtl::weighted_sum_cuda";
  Inputs in = validate(tensors, num_tasks, op, /*dense_ok=*/false);
  TORCH_CHECK(in.K <= kMaxTasks, op, ": at most ", kMaxTasks, " tasks, got ", in.K);
  const c10::cuda::CUDAGuard guard(in.device);
  const c10::cuda::CUDAStream stream = c10::cuda::getCurrentCUDAStream(in.device.index());
  const at::Tensor lam = prepare_weights(weights, in, op);
  const HostTable h = build_table(in, nullptr);
  at::Tensor out = at::empty({h.flat_len}, at::TensorOptions().dtype(in.dtype).device(in.device));
  if (h.C == 0) return out;
  TORCH_CHECK(reinterpret_cast<uintptr_t>(out.data_ptr()) % 16 == 0, op, ": internal error: unaligned output");
  const at::Tensor table = device_table(h, in, -1, in.keep.empty(), stream, op);
  const fastmtl::DType dt = kernel_dtype(in.dtype);
  const fastmtl::TableArgs args{table.data_ptr<int64_t>(), in.K, in.P, h.C};
  check_launch(fastmtl::weighted_sum_launch(dt, dt, args, lam.data_ptr(), out.data_ptr(), stream.stream(),
                                            in.device.index()),
               op);
  return out;
}

void weighted_sum_cuda_out(const OptTensorList& tensors, int64_t num_tasks, const at::Tensor& weights,
                           at::TensorList out) {
  constexpr const char* op = "fastmtl::weighted_sum_cuda_out";
  Inputs in = validate(tensors, num_tasks, op, /*dense_ok=*/false);
  TORCH_CHECK(in.K <= kMaxTasks, op, ": at most ", kMaxTasks, " tasks, got ", in.K);
  TORCH_CHECK(int64_t(out.size()) == in.P, op, ": expected one out tensor per parameter (", in.P, "), got ",
              out.size());
  const c10::cuda::CUDAGuard guard(in.device);
  const c10::cuda::CUDAStream stream = c10::cuda::getCurrentCUDAStream(in.device.index());
  const at::Tensor lam = prepare_weights(weights, in, op);

  std::vector<int64_t> out_addr(in.P, 0);
  std::vector<std::pair<int64_t, at::Tensor>> staged;  // non-contiguous outs: written here, copied back
  std::optional<at::ScalarType> out_dtype;
  int64_t out_dtype_p = -1;
  for (int64_t p = 0; p < in.P; ++p) {
    const int64_t n = in.numel[p];
    if (n == 0) continue;  // no tensor (or empty ones) in this column: out[p] is left untouched
    const at::Tensor& o = out[p];
    TORCH_CHECK(o.defined(), op, ": out[", p, "] is undefined");
    TORCH_CHECK(o.device() == in.device, op, ": out[", p, "] is on ", o.device(), " but the task gradients are on ",
                in.device);
    TORCH_CHECK(o.layout() == at::kStrided, op, ": out[", p, "] must be a strided tensor");
    TORCH_CHECK(o.numel() == n, op, ": out[", p, "] has ", o.numel(), " elements but parameter ", p, "'s gradients have ",
                n);
    TORCH_CHECK(supported_dtype(o.scalar_type()), op, ": out[", p, "] has unsupported dtype ", o.scalar_type());
    if (!out_dtype) {
      out_dtype = o.scalar_type();
      out_dtype_p = p;
    } else {
      TORCH_CHECK(o.scalar_type() == *out_dtype, op, ": all out tensors must share one dtype; out[", p, "] is ",
                  o.scalar_type(), " but out[", out_dtype_p, "] is ", *out_dtype, " (call once per dtype group)");
    }
    if (o.is_contiguous()) {
      out_addr[p] = reinterpret_cast<int64_t>(o.data_ptr());
    } else {
      at::Tensor tmp = at::empty({n}, o.options().memory_format(at::MemoryFormat::Contiguous));
      out_addr[p] = reinterpret_cast<int64_t>(tmp.data_ptr());
      staged.emplace_back(p, std::move(tmp));
    }
    // Same address as an input is an elementwise in-place update (supported); any other overlap
    // would let one thread overwrite elements another thread has not read yet.
    const int64_t lo = out_addr[p];
    const int64_t hi = lo + n * int64_t(c10::elementSize(o.scalar_type()));
    const int64_t in_bytes = n * int64_t(c10::elementSize(in.dtype));
    for (int64_t k = 0; k < in.K; ++k) {
      const int64_t a = in.addr[k * in.P + p];
      if (a == 0) continue;
      const bool same = a == lo && in.dtype == o.scalar_type();
      TORCH_CHECK(same || a >= hi || a + in_bytes <= lo, op, ": out[", p, "] partially overlaps task ", k,
                  "'s gradient of parameter ", p, "; write into a separate buffer (or exactly in place)");
    }
  }
  if (!out_dtype) return;  // nothing to write
  const HostTable h = build_table(in, &out_addr);
  const at::Tensor table = device_table(h, in, int64_t(*out_dtype), in.keep.empty() && staged.empty(), stream, op);
  const fastmtl::TableArgs args{table.data_ptr<int64_t>(), in.K, in.P, h.C};
  check_launch(fastmtl::weighted_sum_launch(kernel_dtype(in.dtype), kernel_dtype(*out_dtype), args, lam.data_ptr(),
                                            nullptr, stream.stream(), in.device.index()),
               op);
  for (auto& [p, tmp] : staged) out[p].copy_(tmp.view(out[p].sizes()));
}

// CPU tensors reach these (the dispatcher picks the kernel from the tensors' device): a clear error
// instead of "could not run ... with arguments from the CPU backend".
[[noreturn]] void cpu_error(const char* op) {
  TORCH_CHECK(false, op, " runs on CUDA tensors only but got CPU tensors; use backend=\"reference\" (or ",
              "\"triton\") for CPU tensors");
  std::abort();
}

at::Tensor gramian_cpu(const OptTensorList&, int64_t) { cpu_error("fastmtl::gramian_cuda"); }
at::Tensor weighted_sum_cpu(const OptTensorList&, int64_t, const at::Tensor&) {
  cpu_error("fastmtl::weighted_sum_cuda");
}
void weighted_sum_out_cpu(const OptTensorList&, int64_t, const at::Tensor&, at::TensorList) {
  cpu_error("fastmtl::weighted_sum_cuda_out");
}

std::vector<int64_t> table_cache_stats() { return table_cache().stats(); }
void table_cache_clear() { table_cache().clear(); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastmtl, m) {
  m.set_python_module("fastmtl.cuda");
  m.def("gramian_cuda(Tensor?[] tensors, int num_tasks) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def("weighted_sum_cuda(Tensor?[] tensors, int num_tasks, Tensor weights) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  m.def("weighted_sum_cuda_out(Tensor?[] tensors, int num_tasks, Tensor weights, Tensor(a!)[] out) -> ()",
        {at::Tag::pt2_compliant_tag});
  m.def("table_cache_stats() -> int[]", &table_cache_stats);
  m.def("table_cache_clear() -> ()", &table_cache_clear);
}

TORCH_LIBRARY_IMPL(fastmtl, CUDA, m) {
  m.impl("gramian_cuda", &gramian_cuda);
  m.impl("weighted_sum_cuda", &weighted_sum_cuda);
  m.impl("weighted_sum_cuda_out", &weighted_sum_cuda_out);
}

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) {
  m.impl("gramian_cuda", &gramian_cpu);
  m.impl("weighted_sum_cuda", &weighted_sum_cpu);
  m.impl("weighted_sum_cuda_out", &weighted_sum_out_cpu);
}
