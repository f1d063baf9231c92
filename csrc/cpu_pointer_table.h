// Shared by the CPU pointer-table kernels (cpu_multi_tensor.cpp, cpu_graddrop.cpp): the table of K x P
// task gradients read in place, its fixed chunks, block conversion of low-precision inputs, the
// run-time choice of the AVX2/FMA/F16C build, and the out= overlap check.
//
// "tensors" is task-major: tensors[k * P + p] is task k's gradient of parameter p, None where task k
// does not touch parameter p. Every parameter is cut into fixed chunks of kChunk elements (the work
// items of at::parallel_for); a parameter no task touches has no elements and no chunks.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

namespace fastmtl_cpu {


using OptTensorList = c10::List<std::optional<at::Tensor>>;

// The call's K x P entries, task-major; nullptr = None (or an undefined tensor). Borrowed: the
// tensors belong to the op's argument list or to Python objects the direct entry points hold for
// the call, so building the table costs no reference-count traffic and no allocation per tensor.
using Entries = std::vector<const at::Tensor*>;

inline Entries entries_of(const OptTensorList& tensors) {
  Entries e;
  e.reserve(tensors.size());
  // Through the list's IValues: its element accessors return optional<Tensor> copies.
  for (auto it = tensors.begin(); it != tensors.end(); ++it) {
    const c10::IValue& v = (*it).get();
    e.push_back(v.isTensor() && v.toTensor().defined() ? &v.toTensor() : nullptr);
  }
  return e;
}

constexpr int64_t kChunk = 16384;   // elements of one parameter per work item
constexpr int64_t kBlock = 256;     // elements converted to the accumulation type at once

#if defined(__GNUC__) && (defined(__x86_64__) || defined(_M_X64))
#define FASTMTL_X86_CLONES 1
#define FASTMTL_FAST_TARGET __attribute__((target("avx2,fma,f16c")))
#else
#define FASTMTL_X86_CLONES 0
#define FASTMTL_FAST_TARGET
#endif
#define FASTMTL_INLINE inline __attribute__((always_inline))

// FASTMTL_CPU_BASELINE=1 (read once) selects the baseline build on any CPU: how the tests check
// that both builds give the same bits on a machine that has AVX2.
inline bool fast_cpu() {
#if FASTMTL_X86_CLONES
  static const bool ok = [] {
    const char* env = std::getenv("FASTMTL_CPU_BASELINE");
    if (env != nullptr && env[0] == '1') return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  }();
  return ok;
#else
  return false;
#endif
}

inline bool supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

// ---- element conversion -------------------------------------------------------------------------

template <typename T, typename A>
FASTMTL_INLINE void load_block(const T* src, A* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<A>(static_cast<float>(src[i]));
}

template <>
FASTMTL_INLINE void load_block<c10::BFloat16, float>(const c10::BFloat16* src, float* dst, int64_t n) {
  // bfloat16 is the top half of a float32: a shift, which the compiler vectorises.
  const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t bits = uint32_t(s[i]) << 16;
    std::memcpy(dst + i, &bits, sizeof(float));
  }
}

#if FASTMTL_X86_CLONES && defined(__FLT16_MAX__)
template <>
FASTMTL_INLINE void load_block<c10::Half, float>(const c10::Half* src, float* dst, int64_t n) {
  // _Float16 -> float: vcvtph2ps in the F16C build, a libgcc call in the baseline build.
  const _Float16* s = reinterpret_cast<const _Float16*>(src);
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(s[i]);
}
#endif

template <typename A>
FASTMTL_INLINE A dot_lanes(const A* x, const A* y, int64_t n) {
  // Eight independent partial sums in a fixed order: vectorisable without -ffast-math.
  A acc[8] = {A(0), A(0), A(0), A(0), A(0), A(0), A(0), A(0)};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int l = 0; l < 8; ++l) acc[l] += x[i + l] * y[i + l];
  }
  A tail = A(0);
  for (; i < n; ++i) tail += x[i] * y[i];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail;
}

// The K values of a small floating tensor (weights, GradDrop's leak) as A, rounded as .to(A) rounds
// (to nearest). Read in place when contiguous: an ATen conversion op per call costs more than the
// kernels at small sizes.
template <typename A>
inline std::vector<A> values_as(const at::Tensor& x) {
  const at::Tensor c = x.is_contiguous() ? x : x.contiguous();
  const int64_t n = c.numel();
  std::vector<A> v(static_cast<size_t>(n));
  const void* data = c.const_data_ptr();
  switch (c.scalar_type()) {
    case at::kDouble: for (int64_t i = 0; i < n; ++i) v[i] = static_cast<A>(static_cast<const double*>(data)[i]); break;
    case at::kFloat: for (int64_t i = 0; i < n; ++i) v[i] = static_cast<A>(static_cast<const float*>(data)[i]); break;
    case at::kHalf:
      for (int64_t i = 0; i < n; ++i) v[i] = static_cast<A>(static_cast<float>(static_cast<const c10::Half*>(data)[i]));
      break;
    case at::kBFloat16:
      for (int64_t i = 0; i < n; ++i) {
        v[i] = static_cast<A>(static_cast<float>(static_cast<const c10::BFloat16*>(data)[i]));
      }
      break;
    default: {  // other floating types: through ATen
      const at::Tensor d = c.to(at::kDouble);
      for (int64_t i = 0; i < n; ++i) v[i] = static_cast<A>(d.const_data_ptr<double>()[i]);
    }
  }
  return v;
}

// ---- the work list --------------------------------------------------------------------------------

struct Chunk {
  int64_t p;      // parameter
  int64_t start;  // first element
  int64_t len;    // elements
};

struct Table {
  int64_t K = 0, P = 0;
  at::ScalarType dtype = at::kFloat;
  const at::Tensor* const* in = nullptr;  // K * P, the call's Entries
  std::vector<const void*> ptr;  // K * P, nullptr = missing or empty
  std::vector<int64_t> numel;    // P
  std::vector<const at::Tensor*> owner;  // P: the first task's tensor (its shape), nullptr if none
  std::vector<at::Tensor> keep;  // contiguous copies of strided inputs
  std::vector<Chunk> chunks;

  c10::IntArrayRef shape(int64_t p) const { return owner[p]->sizes(); }
};

inline Table make_table(const Entries& tensors, int64_t num_tasks, const char* op) {
  TORCH_CHECK(num_tasks >= 1, op, ": num_tasks must be at least 1, got ", num_tasks);
  const int64_t n = int64_t(tensors.size());
  TORCH_CHECK(n > 0 && n % num_tasks == 0, op, ": expected num_tasks * P entries (entry k * P + p is task k's ",
              "gradient of parameter p), got ", n, " entries for num_tasks = ", num_tasks);
  Table t;
  t.K = num_tasks;
  t.P = n / num_tasks;
  t.in = tensors.data();
  t.ptr.assign(n, nullptr);
  t.numel.assign(t.P, 0);
  std::vector<int64_t> owner(t.P, -1);
  t.owner.assign(t.P, nullptr);
  bool have_ref = false;
  int64_t ref_k = 0, ref_p = 0;
  for (int64_t k = 0; k < t.K; ++k) {
    for (int64_t p = 0; p < t.P; ++p) {
      if (tensors[k * t.P + p] == nullptr) continue;
      const at::Tensor& x = *tensors[k * t.P + p];
      TORCH_CHECK(x.device().is_cpu(), op, ": task ", k, ", parameter ", p, ": expected a CPU tensor, got one on ",
                  x.device());
      TORCH_CHECK(x.layout() == at::kStrided, op, ": task ", k, ", parameter ", p,
                  ": sparse or non-strided tensors are not supported (layout ", x.layout(), ")");
      TORCH_CHECK(supported_dtype(x.scalar_type()), op, ": task ", k, ", parameter ", p, ": dtype ",
                  x.scalar_type(), " is not supported (float32, float16, bfloat16 or float64)");
      if (!have_ref) {
        have_ref = true;
        t.dtype = x.scalar_type();
        ref_k = k;
        ref_p = p;
      } else {
        TORCH_CHECK(x.scalar_type() == t.dtype, op, ": task ", k, ", parameter ", p, ": has dtype ",
                    x.scalar_type(), " but task ", ref_k, ", parameter ", ref_p, " has ", t.dtype,
                    "; all task gradients must share one dtype");
      }
      if (owner[p] < 0) {
        owner[p] = k;
        t.owner[p] = &x;
        t.numel[p] = x.numel();
      } else {
        TORCH_CHECK(x.sizes().equals(t.shape(p)), op, ": task ", k, ", parameter ", p, ": shape ", x.sizes(),
                    " differs from task ", owner[p], "'s ", t.shape(p), " for the same parameter");
      }
      if (x.numel() == 0) continue;
      if (x.is_contiguous()) {
        t.ptr[k * t.P + p] = x.data_ptr();
      } else {  // cold path: one copy, never an error
        at::Tensor c = x.contiguous();
        t.ptr[k * t.P + p] = c.data_ptr();
        t.keep.push_back(std::move(c));
      }
    }
  }
  TORCH_CHECK(have_ref, op, ": every entry is None; at least one task gradient is needed");
  for (int64_t p = 0; p < t.P; ++p) {
    for (int64_t s = 0; s < t.numel[p]; s += kChunk) t.chunks.push_back({p, s, std::min(kChunk, t.numel[p] - s)});
  }
  return t;
}

// The per-parameter results of the weighted sum and GradDrop: shaped like the parameters, in the
// inputs' dtype, an empty 1-D tensor for a parameter no task touches; data[p] is where parameter p's
// elements go. separate: one allocation each, since a custom op's outputs must not alias one
// another (the ops). Otherwise consecutive slices of one allocation (the direct entry points: P
// allocations, frees and their allocator locks cost more than the kernels at small sizes; the GPU
// backends' per-parameter results share one buffer too). Each slice is its own tensor (no autograd
// view, its own version counter); the storage lives until the last of them is freed.
inline std::vector<at::Tensor> allocate_results(const Table& t, bool separate, std::vector<void*>& data) {
  const at::TensorOptions options = at::TensorOptions().dtype(t.dtype);
  std::vector<at::Tensor> parts;
  parts.reserve(t.P);
  data.assign(t.P, nullptr);
  if (separate) {
    for (int64_t p = 0; p < t.P; ++p) {
      parts.push_back(t.owner[p] == nullptr ? at::empty({0}, options) : at::empty(t.shape(p), options));
      data[p] = parts.back().data_ptr();
    }
    return parts;
  }
  int64_t total = 0;
  for (int64_t p = 0; p < t.P; ++p) total += t.numel[p];
  const at::Tensor flat = at::empty({total}, options);
  char* base = static_cast<char*>(flat.data_ptr());
  const int64_t item = flat.element_size();
  int64_t offset = 0;
  for (int64_t p = 0; p < t.P; ++p) {
    // What at::empty builds (CPU key set; autograd keys added by the constructor unless in
    // inference mode), on the shared storage.
    auto impl = c10::make_intrusive<c10::TensorImpl>(c10::Storage(flat.storage()),
                                                     c10::DispatchKeySet(c10::DispatchKey::CPU), flat.dtype());
    impl->set_storage_offset(offset);
    if (t.owner[p] == nullptr) impl->set_sizes_contiguous({0});
    else impl->set_sizes_contiguous(t.shape(p));
    data[p] = base + offset * item;
    offset += t.numel[p];
    parts.emplace_back(std::move(impl));
  }
  return parts;
}

struct Span {
  uintptr_t lo, hi;
};

inline Span span_of(const at::Tensor& x) {
  // Bytes the tensor may touch: [data, data + extent), from its sizes and (non-negative) strides.
  int64_t extent = 1;
  for (int64_t d = 0; d < x.dim(); ++d) {
    if (x.size(d) == 0) return {0, 0};
    extent += (x.size(d) - 1) * std::abs(x.stride(d));
  }
  const uintptr_t lo = reinterpret_cast<uintptr_t>(x.data_ptr());
  return {lo, lo + uintptr_t(extent * x.element_size())};
}

struct Interval {
  Span s;
  int64_t p;     // parameter
  int64_t k;     // task, or -1 for out[p]
  const at::Tensor* x;
};

// out[p] may be exactly one of parameter p's inputs (same storage, strides and dtype, contiguous);
// any other overlap of an out tensor with an input or another out tensor is an error. Inputs may
// overlap each other (they are only read). Sorted sweep: O(n log n + overlapping pairs).
inline void check_out_overlap(const Table& t, at::TensorList out, const char* op) {
  std::vector<Interval> iv;
  iv.reserve(t.K * t.P + t.P);
  for (int64_t k = 0; k < t.K; ++k) {
    for (int64_t p = 0; p < t.P; ++p) {
      const at::Tensor* x = t.in[k * t.P + p];
      if (x == nullptr || x->numel() == 0) continue;
      iv.push_back({span_of(*x), p, k, x});
    }
  }
  for (int64_t p = 0; p < t.P; ++p) {
    if (t.numel[p] > 0) iv.push_back({span_of(out[p]), p, -1, &out[p]});
  }
  std::sort(iv.begin(), iv.end(), [](const Interval& a, const Interval& b) { return a.s.lo < b.s.lo; });
  for (size_t i = 0; i < iv.size(); ++i) {
    for (size_t j = i + 1; j < iv.size() && iv[j].s.lo < iv[i].s.hi; ++j) {
      const Interval& a = iv[i];
      const Interval& b = iv[j];
      if (a.k >= 0 && b.k >= 0) continue;  // two inputs
      TORCH_CHECK(a.k >= 0 || b.k >= 0, op, ": out[", a.p, "] overlaps out[", b.p, "]");
      const Interval& o = a.k < 0 ? a : b;
      const Interval& in = a.k < 0 ? b : a;
      const bool same = in.p == o.p && in.x->data_ptr() == o.x->data_ptr() && in.x->strides().equals(o.x->strides()) &&
                        in.x->scalar_type() == o.x->scalar_type() && o.x->is_contiguous();
      TORCH_CHECK(same, op, ": out[", o.p, "] overlaps task ", in.k, "'s gradient of parameter ", in.p,
                  " without being that very tensor (only an exact alias of one of its own inputs is allowed)");
    }
  }
}

}  // namespace fastmtl_cpu
