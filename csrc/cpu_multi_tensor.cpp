// fastmtl CPU multi-tensor kernels: Gram matrix and weighted sum over K x P task gradients read in
// place through a pointer table (no concatenation, no up-cast copies of low-precision inputs).
//
// Ops (namespace fastmtl; "tensors" is task-major: tensors[k * P + p] is task k's gradient of
// parameter p, None where task k does not touch parameter p), CPU tensors only:
//
//   gramian_cpu(Tensor?[] tensors, int num_tasks) -> Tensor
//       [K, K] Gram matrix, float32 (float64 for float64 inputs). A None entry takes no part in any
//       product (also when the other operand holds Inf/NaN).
//   weighted_sum_cpu(Tensor?[] tensors, int num_tasks, Tensor weights) -> Tensor[]
//       sum_k weights[k] * g[k][p] for every parameter p, shaped like the parameter, in the inputs'
//       dtype, one allocation each (custom-op outputs must not alias one another). A parameter no
//       task touches gets an empty 1-D tensor (fastmtl.cpu_ops turns it into None).
//   weighted_sum_cpu_out(Tensor?[] tensors, int num_tasks, Tensor weights, Tensor(a!)[] out) -> ()
//       writes parameter p into out[p] (any supported dtype). out[p] may be exactly one of parameter
//       p's inputs; any other overlap with an input or another out tensor is an error.
//
// Work split: every parameter is cut into fixed chunks of kChunk elements; chunks are grouped into
// at most kMaxGroups groups of consecutive chunks, a group size that depends on the shapes only.
// at::parallel_for runs over groups; each group writes its own partial Gram, and the partials are
// added in group order on one thread. The result therefore does not depend on the thread count.
// Accumulation: float32 for float16/bfloat16/float32 inputs (float64 for float64) inside a chunk,
// float64 across chunks and groups.
//
// The hot loops are compiled twice (baseline x86-64 and Haswell: AVX2 + FMA + F16C) and picked at
// run time from the CPU's features. Hazard: a lambda does not inherit a function's target
// attribute, so the parallel_for bodies call the target-specific functions, never the reverse.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include "cpu_kernels.h"
#include "cpu_pointer_table.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

namespace {

using namespace fastmtl_cpu;

constexpr int64_t kMaxGroups = 512; // partial Gram matrices (bounded memory for large K)

// ---- Gram ---------------------------------------------------------------------------------------

// Four dot products <x, y[q]> in one pass, each exactly as dot_lanes<A>(x, y[q], n) computes it
// (same lanes, same tail, same final combination), so the Gram matrix keeps its bits. Why: one
// dot_lanes is a single chain of dependent multiply-adds (one vector accumulator), which runs at
// the latency of an FMA, not its throughput; four independent chains keep the units busy and read
// x once for four products.
template <typename A>
FASTMTL_INLINE void dot_lanes4(const A* x, const A* const* y, int64_t n, A* out) {
  // Eight lanes of A as one GCC vector (a YMM register for float, two for double); lane l holds
  // exactly dot_lanes' acc[l]. Unaligned loads go through memcpy.
  typedef A Lanes8 __attribute__((vector_size(8 * sizeof(A))));
  const A* y0 = y[0];
  const A* y1 = y[1];
  const A* y2 = y[2];
  const A* y3 = y[3];
  Lanes8 a0 = {}, a1 = {}, a2 = {}, a3 = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    Lanes8 xv, v0, v1, v2, v3;
    std::memcpy(&xv, x + i, sizeof(Lanes8));
    std::memcpy(&v0, y0 + i, sizeof(Lanes8));
    std::memcpy(&v1, y1 + i, sizeof(Lanes8));
    std::memcpy(&v2, y2 + i, sizeof(Lanes8));
    std::memcpy(&v3, y3 + i, sizeof(Lanes8));
    a0 += xv * v0;
    a1 += xv * v1;
    a2 += xv * v2;
    a3 += xv * v3;
  }
  const Lanes8* accs[4] = {&a0, &a1, &a2, &a3};
  for (int q = 0; q < 4; ++q) {
    A tail = A(0);
    for (int64_t t = i; t < n; ++t) tail += x[t] * y[q][t];
    const Lanes8& a = *accs[q];
    out[q] = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7])) + tail;
  }
}

// acc[idx[i] * K + idx[j]] += <rows[i], rows[j]> for 0 <= i <= j < m (n elements each).
template <typename A>
FASTMTL_INLINE void add_products(int64_t K, int64_t m, const A* const* rows, const int64_t* idx, int64_t n,
                                 double* acc) {
  for (int64_t i = 0; i < m; ++i) {
    int64_t j = i;
    for (; j + 4 <= m; j += 4) {
      A d[4];
      dot_lanes4<A>(rows[i], rows + j, n, d);
      for (int q = 0; q < 4; ++q) acc[idx[i] * K + idx[j + q]] += double(d[q]);
    }
    for (; j < m; ++j) acc[idx[i] * K + idx[j]] += double(dot_lanes<A>(rows[i], rows[j], n));
  }
}

// Per-thread scratch of the Gram loops.
template <typename A>
struct GramScratch {
  std::vector<A> buf;    // K * kBlock: low-precision blocks converted to A
  std::vector<A> pack;   // K * kBlock: small chunks packed task by task
  int64_t fill = 0;      // elements in pack
  std::vector<const A*> rows;
  std::vector<int64_t> present;
  std::vector<int64_t> all;  // 0 .. K-1: the packed block holds every task
  explicit GramScratch(int64_t K, bool convert)
      : buf(convert ? K * kBlock : 0), pack(K * kBlock), rows(K), all(K) { present.reserve(K); }
};

// The products of the packed block, added into acc; the block is then empty.
template <typename A>
FASTMTL_INLINE void flush_pack(int64_t K, double* acc, GramScratch<A>& s) {
  if (s.fill == 0) return;
  for (int64_t k = 0; k < K; ++k) {
    s.rows[k] = s.pack.data() + k * kBlock;
    s.all[k] = k;
  }
  add_products<A>(K, K, s.rows.data(), s.all.data(), s.fill, acc);
  s.fill = 0;
}

// Adds the products of chunks [c0, c1) into acc (K x K, upper triangle, float64).
//
// A chunk shorter than kBlock that every task holds (a small parameter: biases, norms, the
// 200-tensor layout's typical sizes) is copied into the packed block, and the K(K+1)/2 dot products
// run once per full block rather than once per chunk: with 50-element parameters the per-product
// overhead, not the arithmetic, set the time. Hazard: a chunk some task lacks is never packed; a
// zero standing in for the missing tensor would turn 0 * Inf into NaN in a product that must not
// exist. The packing follows the chunk order, so the summation order depends on the shapes only.
template <typename T, typename A>
FASTMTL_INLINE void gram_chunks(const Table& t, int64_t c0, int64_t c1, double* acc, GramScratch<A>& s) {
  const int64_t K = t.K;
  for (int64_t c = c0; c < c1; ++c) {
    const Chunk& ch = t.chunks[c];
    s.present.clear();
    for (int64_t k = 0; k < K; ++k) {
      if (t.ptr[k * t.P + ch.p] != nullptr) s.present.push_back(k);
    }
    const int64_t m = int64_t(s.present.size());
    if (m == K && ch.len < kBlock) {
      for (int64_t done = 0; done < ch.len;) {
        const int64_t take = std::min(ch.len - done, kBlock - s.fill);
        for (int64_t k = 0; k < K; ++k) {
          const T* src = static_cast<const T*>(t.ptr[k * t.P + ch.p]) + ch.start + done;
          A* dst = s.pack.data() + k * kBlock + s.fill;
          if constexpr (std::is_same_v<T, A>) {
            std::memcpy(dst, src, size_t(take) * sizeof(A));
          } else {
            load_block<T, A>(src, dst, take);
          }
        }
        s.fill += take;
        done += take;
        if (s.fill == kBlock) flush_pack<A>(K, acc, s);
      }
      continue;
    }
    for (int64_t b = 0; b < ch.len; b += kBlock) {
      const int64_t n = std::min(kBlock, ch.len - b);
      for (int64_t i = 0; i < m; ++i) {
        const T* src = static_cast<const T*>(t.ptr[s.present[i] * t.P + ch.p]) + ch.start + b;
        if constexpr (std::is_same_v<T, A>) {
          s.rows[i] = src;
        } else {
          load_block<T, A>(src, s.buf.data() + i * kBlock, n);
          s.rows[i] = s.buf.data() + i * kBlock;
        }
      }
      add_products<A>(K, m, s.rows.data(), s.present.data(), n, acc);
    }
  }
  flush_pack<A>(K, acc, s);  // a group's products stay in its own partial sum
}

template <typename T, typename A>
void gram_range_default(const Table& t, int64_t c0, int64_t c1, double* acc, GramScratch<A>& s) {
  gram_chunks<T, A>(t, c0, c1, acc, s);
}

template <typename T, typename A>
FASTMTL_FAST_TARGET void gram_range_fast(const Table& t, int64_t c0, int64_t c1, double* acc, GramScratch<A>& s) {
  gram_chunks<T, A>(t, c0, c1, acc, s);
}

template <typename T, typename A>
at::Tensor gram_impl(const Table& t) {
  const int64_t K = t.K;
  const int64_t C = int64_t(t.chunks.size());
  const int64_t per_group = std::max<int64_t>(1, (C + kMaxGroups - 1) / kMaxGroups);
  const int64_t groups = (C + per_group - 1) / per_group;
  std::vector<double> partial(std::max<int64_t>(groups, 1) * K * K, 0.0);
  const bool fast = fast_cpu();
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    GramScratch<A> scratch(K, !std::is_same_v<T, A>);
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t c0 = g * per_group, c1 = std::min(C, c0 + per_group);
      double* acc = partial.data() + g * K * K;
      if (fast) gram_range_fast<T, A>(t, c0, c1, acc, scratch);
      else gram_range_default<T, A>(t, c0, c1, acc, scratch);
    }
  });
  std::vector<double> total(K * K, 0.0);
  for (int64_t g = 0; g < groups; ++g) {  // fixed order: independent of the thread count
    const double* src = partial.data() + g * K * K;
    for (int64_t i = 0; i < K * K; ++i) total[i] += src[i];
  }
  at::Tensor G = at::empty({K, K}, at::TensorOptions().dtype(c10::CppTypeToScalarType<A>::value));
  A* g = G.data_ptr<A>();
  for (int64_t i = 0; i < K; ++i) {
    for (int64_t j = i; j < K; ++j) {
      g[i * K + j] = g[j * K + i] = static_cast<A>(total[i * K + j]);
    }
  }
  return G;
}

at::Tensor gramian_entries(const Entries& tensors, int64_t num_tasks) {
  const Table t = make_table(tensors, num_tasks, "fastmtl::gramian_cpu");
  switch (t.dtype) {
    case at::kDouble: return gram_impl<double, double>(t);
    case at::kHalf: return gram_impl<c10::Half, float>(t);
    case at::kBFloat16: return gram_impl<c10::BFloat16, float>(t);
    default: return gram_impl<float, float>(t);
  }
}

// ---- weighted sum -------------------------------------------------------------------------------

// Elements ahead of the current position, per input stream. Prefetching past the end of a tensor is
// harmless: a prefetch never faults.
constexpr int64_t kPrefetch = 512;
constexpr int64_t kGroup = 8;          // tasks summed in registers in one pass
constexpr int64_t kGroupBlock = 1024;  // elements per block when there are more tasks (L1-resident sums)

// Per-thread scratch of the weighted sum.
template <typename A>
struct WsumScratch {
  A block[kBlock];              // one block's sums before a cast (low-precision inputs or outputs)
  A partial[kGroupBlock];       // the running sums of more than kGroup tasks
  std::vector<const void*> src;  // the chunk's present tasks, in task order
  std::vector<A> w;              // their weights
  explicit WsumScratch(int64_t K) { src.reserve(K), w.reserve(K); }
};

// acc[i] (+)= Σ_j w[j] src[j][off + i] for i < n, j < m <= kGroup in order; first: acc starts at 0.
template <typename A>
FASTMTL_INLINE void weighted_group(const A* const* src, const A* w, int64_t m, int64_t off, int64_t n, bool first,
                                   A* acc_out) {
  typedef A Lanes8 __attribute__((vector_size(8 * sizeof(A))));
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    Lanes8 a0 = {}, a1 = {}, a2 = {}, a3 = {};
    if (!first) {
      std::memcpy(&a0, acc_out + i, sizeof(Lanes8));
      std::memcpy(&a1, acc_out + i + 8, sizeof(Lanes8));
      std::memcpy(&a2, acc_out + i + 16, sizeof(Lanes8));
      std::memcpy(&a3, acc_out + i + 24, sizeof(Lanes8));
    }
    for (int64_t j = 0; j < m; ++j) {
      const A* x = src[j] + off + i;
      __builtin_prefetch(x + kPrefetch);
      __builtin_prefetch(x + kPrefetch + 64 / sizeof(A));
      Lanes8 v0, v1, v2, v3;
      std::memcpy(&v0, x, sizeof(Lanes8));
      std::memcpy(&v1, x + 8, sizeof(Lanes8));
      std::memcpy(&v2, x + 16, sizeof(Lanes8));
      std::memcpy(&v3, x + 24, sizeof(Lanes8));
      const A wj = w[j];
      a0 += wj * v0;
      a1 += wj * v1;
      a2 += wj * v2;
      a3 += wj * v3;
    }
    std::memcpy(acc_out + i, &a0, sizeof(Lanes8));
    std::memcpy(acc_out + i + 8, &a1, sizeof(Lanes8));
    std::memcpy(acc_out + i + 16, &a2, sizeof(Lanes8));
    std::memcpy(acc_out + i + 24, &a3, sizeof(Lanes8));
  }
  for (; i + 8 <= n; i += 8) {
    Lanes8 a0 = {};
    if (!first) std::memcpy(&a0, acc_out + i, sizeof(Lanes8));
    for (int64_t j = 0; j < m; ++j) {
      Lanes8 v0;
      std::memcpy(&v0, src[j] + off + i, sizeof(Lanes8));
      a0 += w[j] * v0;
    }
    std::memcpy(acc_out + i, &a0, sizeof(Lanes8));
  }
  for (; i < n; ++i) {
    A a = first ? A(0) : acc_out[i];
    for (int64_t j = 0; j < m; ++j) a += w[j] * src[j][off + i];
    acc_out[i] = a;
  }
}

// dst[i] = Σ_j w[j] src[j][off + i] for i < n, j in order (the reference's task order; the first
// term is added to zero, so every element rounds exactly as `0 + w0 x0 + w1 x1 + ...`). Up to
// kGroup tasks are summed in registers and each output written once (adding one task at a time
// through memory read and wrote the sums once per task). More tasks go through an L1 block in
// groups of kGroup, the partial sums kept exactly (A throughout), so the bits do not depend on the
// grouping; more than ~8 input streams at once stall the hardware prefetchers. Every input of a
// block is read before the block of dst is written, so dst may be one of the inputs (out= into a
// gradient). partial: kGroupBlock elements of scratch.
template <typename A>
FASTMTL_INLINE void weighted_rows(const A* const* src, const A* w, int64_t m, int64_t off, int64_t n, A* dst,
                                  A* partial) {
  if (m <= kGroup) {  // m = 0 writes zeros
    weighted_group<A>(src, w, m, off, n, true, dst);
    return;
  }
  for (int64_t b = 0; b < n; b += kGroupBlock) {
    const int64_t len = std::min(kGroupBlock, n - b);
    for (int64_t g = 0; g < m; g += kGroup) {
      weighted_group<A>(src + g, w + g, std::min(kGroup, m - g), off + b, len, g == 0, partial);
    }
    std::memcpy(dst + b, partial, size_t(len) * sizeof(A));
  }
}

template <typename T, typename A, typename O>
FASTMTL_INLINE void wsum_chunks(const Table& t, const A* lam, void* const* out, int64_t c0, int64_t c1,
                                WsumScratch<A>& s) {
  for (int64_t c = c0; c < c1; ++c) {
    const Chunk& ch = t.chunks[c];
    O* dst = static_cast<O*>(out[ch.p]);
    // Tasks in order 0..K-1, as the reference; a missing task adds nothing.
    s.src.clear();
    s.w.clear();
    for (int64_t k = 0; k < t.K; ++k) {
      const void* vp = t.ptr[k * t.P + ch.p];
      if (vp == nullptr) continue;
      s.src.push_back(vp);
      s.w.push_back(lam[k]);
    }
    const int64_t m = int64_t(s.src.size());
    if constexpr (std::is_same_v<T, A> && std::is_same_v<O, A>) {
      weighted_rows<A>(reinterpret_cast<const A* const*>(s.src.data()), s.w.data(), m, ch.start, ch.len,
                       dst + ch.start, s.partial);
      continue;
    }
    for (int64_t b = 0; b < ch.len; b += kBlock) {
      const int64_t n = std::min(kBlock, ch.len - b);
      const int64_t off = ch.start + b;
      A* buf = s.block;
      if constexpr (std::is_same_v<T, A>) {
        weighted_rows<A>(reinterpret_cast<const A* const*>(s.src.data()), s.w.data(), m, off, n, buf, s.partial);
      } else {
        for (int64_t i = 0; i < n; ++i) buf[i] = A(0);
        for (int64_t j = 0; j < m; ++j) {
          A tmp[kBlock];
          load_block<T, A>(static_cast<const T*>(s.src[j]) + off, tmp, n);
          const A w = s.w[j];
          for (int64_t i = 0; i < n; ++i) buf[i] += w * tmp[i];
        }
      }
      // Every input of this block is read before it is written: out[p] may be one of the inputs.
      if constexpr (std::is_same_v<O, A>) {
        std::memcpy(dst + off, buf, n * sizeof(A));
#if FASTMTL_X86_CLONES && defined(__FLT16_MAX__)
      } else if constexpr (std::is_same_v<O, c10::Half>) {
        _Float16* h = reinterpret_cast<_Float16*>(dst + off);
        for (int64_t i = 0; i < n; ++i) h[i] = static_cast<_Float16>(buf[i]);
#endif
      } else {
        for (int64_t i = 0; i < n; ++i) dst[off + i] = static_cast<O>(buf[i]);
      }
    }
  }
}

template <typename T, typename A, typename O>
void wsum_range_default(const Table& t, const A* lam, void* const* out, int64_t c0, int64_t c1,
                        WsumScratch<A>& s) {
  wsum_chunks<T, A, O>(t, lam, out, c0, c1, s);
}

template <typename T, typename A, typename O>
FASTMTL_FAST_TARGET void wsum_range_fast(const Table& t, const A* lam, void* const* out, int64_t c0, int64_t c1,
                                         WsumScratch<A>& s) {
  wsum_chunks<T, A, O>(t, lam, out, c0, c1, s);
}

template <typename T, typename A, typename O>
void wsum_impl(const Table& t, const A* lam, void* const* out) {
  const bool fast = fast_cpu();
  at::parallel_for(0, int64_t(t.chunks.size()), 1, [&](int64_t c0, int64_t c1) {
    WsumScratch<A> scratch(t.K);
    if (fast) wsum_range_fast<T, A, O>(t, lam, out, c0, c1, scratch);
    else wsum_range_default<T, A, O>(t, lam, out, c0, c1, scratch);
  });
}

template <typename T, typename A>
void wsum_dispatch_out(const Table& t, const A* lam, void* const* out, at::ScalarType out_dtype) {
  switch (out_dtype) {
    case at::kDouble: return wsum_impl<T, A, double>(t, lam, out);
    case at::kHalf: return wsum_impl<T, A, c10::Half>(t, lam, out);
    case at::kBFloat16: return wsum_impl<T, A, c10::BFloat16>(t, lam, out);
    default: return wsum_impl<T, A, float>(t, lam, out);
  }
}

void wsum_run(const Table& t, const at::Tensor& weights, void* const* out, at::ScalarType out_dtype, const char* op) {
  TORCH_CHECK(weights.defined() && weights.device().is_cpu(), op, ": weights must be a CPU tensor");
  TORCH_CHECK(weights.numel() == t.K, op, ": weights must hold num_tasks = ", t.K, " values, got shape ",
              weights.sizes());
  TORCH_CHECK(at::isFloatingType(weights.scalar_type()), op, ": weights must be floating point, got ",
              weights.scalar_type());
  if (t.dtype == at::kDouble) {
    return wsum_dispatch_out<double, double>(t, values_as<double>(weights).data(), out, out_dtype);
  }
  const std::vector<float> lam = values_as<float>(weights);
  switch (t.dtype) {
    case at::kHalf: return wsum_dispatch_out<c10::Half, float>(t, lam.data(), out, out_dtype);
    case at::kBFloat16: return wsum_dispatch_out<c10::BFloat16, float>(t, lam.data(), out, out_dtype);
    default: return wsum_dispatch_out<float, float>(t, lam.data(), out, out_dtype);
  }
}

std::vector<at::Tensor> weighted_sum_entries(const Entries& tensors, int64_t num_tasks, const at::Tensor& weights,
                                             bool separate) {
  const char* op = "fastmtl::weighted_sum_cpu";
  const Table t = make_table(tensors, num_tasks, op);
  std::vector<void*> out;
  std::vector<at::Tensor> parts = allocate_results(t, separate, out);
  wsum_run(t, weights, out.data(), t.dtype, op);
  return parts;
}

void weighted_sum_out_entries(const Entries& tensors, int64_t num_tasks, const at::Tensor& weights,
                              at::TensorList out) {
  const char* op = "fastmtl::weighted_sum_cpu_out";
  const Table t = make_table(tensors, num_tasks, op);
  TORCH_CHECK(int64_t(out.size()) == t.P, op, ": expected ", t.P, " out tensors (one per parameter), got ",
              out.size());
  std::optional<at::ScalarType> out_dtype;
  std::vector<void*> dst(t.P, nullptr);
  std::vector<std::pair<int64_t, at::Tensor>> staged;  // non-contiguous out: written here, then copied
  for (int64_t p = 0; p < t.P; ++p) {
    const at::Tensor& o = out[p];
    if (t.numel[p] == 0) continue;  // no task has elements here: out[p] is left untouched
    TORCH_CHECK(o.defined() && o.device().is_cpu(), op, ": out[", p, "] must be a CPU tensor");
    TORCH_CHECK(o.numel() == t.numel[p], op, ": out[", p, "] has ", o.numel(), " elements but parameter ", p,
                " has ", t.numel[p]);
    TORCH_CHECK(supported_dtype(o.scalar_type()), op, ": out[", p, "]: dtype ", o.scalar_type(),
                " is not supported");
    if (!out_dtype) out_dtype = o.scalar_type();
    TORCH_CHECK(o.scalar_type() == *out_dtype, op, ": out[", p, "] has dtype ", o.scalar_type(), " but out[0..] has ",
                *out_dtype, "; every out tensor must share one dtype");
    if (o.is_contiguous()) {
      dst[p] = o.data_ptr();
    } else {
      at::Tensor tmp = at::empty({t.numel[p]}, o.options().memory_format(at::MemoryFormat::Contiguous));
      dst[p] = tmp.data_ptr();
      staged.emplace_back(p, std::move(tmp));
    }
  }
  check_out_overlap(t, out, op);
  if (!out_dtype) return;
  wsum_run(t, weights, dst.data(), *out_dtype, op);
  for (auto& [p, tmp] : staged) out[p].copy_(tmp.view(out[p].sizes()));
}

// The ops' kernels: the same functions over the list's borrowed entries.
at::Tensor gramian_cpu(const OptTensorList& tensors, int64_t num_tasks) {
  return gramian_entries(entries_of(tensors), num_tasks);
}
std::vector<at::Tensor> weighted_sum_cpu(const OptTensorList& tensors, int64_t num_tasks, const at::Tensor& weights) {
  return weighted_sum_entries(entries_of(tensors), num_tasks, weights, /*separate=*/true);
}
void weighted_sum_cpu_out(const OptTensorList& tensors, int64_t num_tasks, const at::Tensor& weights,
                          at::TensorList out) {
  weighted_sum_out_entries(entries_of(tensors), num_tasks, weights, out);
}

}  // namespace

// The same functions for the direct eager entry points (cpu_kernels.h, cpu_direct.cpp).
namespace fastmtl_cpu {
at::Tensor direct_gramian(const Entries& tensors, int64_t num_tasks) { return gramian_entries(tensors, num_tasks); }
std::vector<at::Tensor> direct_weighted_sum(const Entries& tensors, int64_t num_tasks, const at::Tensor& weights) {
  return weighted_sum_entries(tensors, num_tasks, weights, /*separate=*/false);
}
void direct_weighted_sum_out(const Entries& tensors, int64_t num_tasks, const at::Tensor& weights,
                             at::TensorList out) {
  weighted_sum_out_entries(tensors, num_tasks, weights, out);
}
}  // namespace fastmtl_cpu

TORCH_LIBRARY_FRAGMENT(fastmtl, m) {
  m.set_python_module("fastmtl.cpu_ops");
  m.def("gramian_cpu(Tensor?[] tensors, int num_tasks) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def("weighted_sum_cpu(Tensor?[] tensors, int num_tasks, Tensor weights) -> Tensor[]", {at::Tag::pt2_compliant_tag});
  m.def("weighted_sum_cpu_out(Tensor?[] tensors, int num_tasks, Tensor weights, Tensor(a!)[] out) -> ()",
        {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) {
  m.impl("gramian_cpu", &gramian_cpu);
  m.impl("weighted_sum_cpu", &weighted_sum_cpu);
  m.impl("weighted_sum_cpu_out", &weighted_sum_cpu_out);
}
