// fastmtl CPU GradDrop: sign-purity masks and the masked sum over K x P task gradients in one pass,
// read in place through the pointer table of cpu_pointer_table.h (no concatenation).
//
// Ops (namespace fastmtl; "tensors" task-major as in cpu_multi_tensor.cpp, None = zeros), CPU only:
//
//   graddrop_cpu(Tensor?[] tensors, int num_tasks, Tensor leak, int seed, int offset, float eps)
//       -> Tensor[]
//       d[p] = sum_k (M_k ? g_k[p] : leak[k] * g_k[p]) for every parameter p, shaped like the
//       parameter, in the inputs' dtype, one allocation each; an empty 1-D tensor for a parameter no
//       task touches.
//   graddrop_cpu_out(..., float eps, Tensor(a!)[] out) -> ()
//       writes d[p] into out[p] (any supported dtype, one per parameter). out[p] may be exactly one
//       of parameter p's inputs; any other overlap is an error.
//
// Exactly fastmtl/reference/graddrop.py, bit for bit: per element, in the accumulation type A
// (float32; float64 for float64 inputs), S = sum_k g_k and Abs = sum_k |g_k| in task order over the
// tasks present, U = Philox-4x32-10 uniform of the counter offset + base_p + i (base_p: elements of
// the parameters before p) under the key (seed low word, seed high word), thr = (2U - 1)(Abs + eps),
// keep g_k where (g_k > 0 and S > thr) or (g_k < 0 and S < thr), else leak[k] * g_k, summed in task
// order; one rounding to the output dtype. Every element is independent, so the result does not
// depend on the thread count or the chunking.
//
// Hazard: a fused multiply-add rounds once where the reference rounds twice. The sum
// d + (keep ? 1 : leak) * g must stay a multiply then an add, so contraction is switched off for
// this file (GCC's default for C++ is -ffp-contract=fast, and the AVX2 build has FMA). GCC also gets
// -fno-trapping-math, which changes no result (only whether FP exceptions may be assumed silent):
// with trapping math it refuses to if-convert the per-element comparisons and the loop stays scalar
// and branchy (3-4x slower).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off", "no-trapping-math")
#endif

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu_kernels.h"
#include "cpu_pointer_table.h"

#include <cstdint>
#include <cstring>
#include <limits>
#if FASTMTL_X86_CLONES
#include <immintrin.h>
#endif
#include <memory>
#include <vector>

namespace {

using namespace fastmtl_cpu;

// Philox-4x32-10 (Salmon et al., SC 2011) as in Triton's tl.rand.
constexpr uint32_t kRoundA = 0xD2511F53u;
constexpr uint32_t kRoundB = 0xCD9E8D57u;
constexpr uint32_t kKeyA = 0x9E3779B9u;
constexpr uint32_t kKeyB = 0xBB67AE85u;

// Triton's uint32 -> [0, 1) scale. The reference rounds the decimal to a double, then to float32
// (torch.tensor(..., dtype=float32)); a float literal rounds the decimal once, which could differ.
const float kUniformScale = static_cast<float>(4.6566127342e-10);

// u[j] = uniform of counter first + j (j < n). Plain 32-bit lanes with 32 x 32 -> 64-bit products:
// the compiler vectorises the loop (vpmuludq in the AVX2 build).
FASTMTL_INLINE void philox_uniforms(uint64_t seed, uint64_t first, int64_t n, float* u) {
  const uint32_t s0 = uint32_t(seed), s1 = uint32_t(seed >> 32);
  for (int64_t j = 0; j < n; ++j) {
    const uint64_t c = first + uint64_t(j);
    uint32_t c0 = uint32_t(c), c1 = uint32_t(c >> 32), c2 = 0, c3 = 0, k0 = s0, k1 = s1;
    for (int r = 0; r < 10; ++r) {
      const uint64_t pb = uint64_t(kRoundB) * c2;
      const uint64_t pa = uint64_t(kRoundA) * c0;
      const uint32_t n0 = uint32_t(pb >> 32) ^ c1 ^ k0;
      const uint32_t n2 = uint32_t(pa >> 32) ^ c3 ^ k1;
      c1 = uint32_t(pb);
      c3 = uint32_t(pa);
      c0 = n0;
      c2 = n2;
      k0 += kKeyA;
      k1 += kKeyB;
    }
    // Reinterpret as int32 and fold negatives onto [0, 2^31 - 1] (-x - 1 == ~x, also for INT32_MIN).
    const int32_t x = int32_t(c0);
    u[j] = float(x < 0 ? ~x : x) * kUniformScale;
  }
}

#if FASTMTL_X86_CLONES
// philox_uniforms with eight counters per AVX2 register. GCC's own vectorisation of the scalar loop
// widens every lane to 64 bits and shuffles back each round; here the 32 x 32 -> 64-bit products of
// the even and odd lanes (vpmuludq) are blended back into high and low words instead.
FASTMTL_FAST_TARGET inline __m256i mulhi_lo(__m256i m, __m256i x, __m256i* lo) {
  const __m256i even = _mm256_mul_epu32(m, x);
  const __m256i odd = _mm256_mul_epu32(m, _mm256_srli_epi64(x, 32));
  *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  return _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

FASTMTL_FAST_TARGET inline void philox_uniforms_avx2(uint64_t seed, uint64_t first, int64_t n, float* u) {
  const __m256i round_a = _mm256_set1_epi32(int32_t(kRoundA));
  const __m256i round_b = _mm256_set1_epi32(int32_t(kRoundB));
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256 scale = _mm256_set1_ps(kUniformScale);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const uint64_t c = first + uint64_t(j);
    if (uint32_t(c) > 0xFFFFFFF8u) {  // the low word wraps inside these eight: the scalar path
      philox_uniforms(seed, c, 8, u + j);
      continue;
    }
    __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(int32_t(uint32_t(c))), lanes);
    __m256i c1 = _mm256_set1_epi32(int32_t(uint32_t(c >> 32)));
    __m256i c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
    uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
    for (int r = 0; r < 10; ++r) {
      __m256i lo_b, lo_a;
      const __m256i hi_b = mulhi_lo(round_b, c2, &lo_b);
      const __m256i hi_a = mulhi_lo(round_a, c0, &lo_a);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi_b, c1), _mm256_set1_epi32(int32_t(k0)));
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi_a, c3), _mm256_set1_epi32(int32_t(k1)));
      c1 = lo_b;
      c3 = lo_a;
      k0 += kKeyA;
      k1 += kKeyB;
    }
    // x < 0 ? ~x : x is x ^ (x >> 31) with an arithmetic shift.
    const __m256i x = _mm256_xor_si256(c0, _mm256_srai_epi32(c0, 31));
    _mm256_storeu_ps(u + j, _mm256_mul_ps(_mm256_cvtepi32_ps(x), scale));
  }
  philox_uniforms(seed, first + uint64_t(j), n - j, u + j);
}
#endif

struct Args {
  const Table* t;
  std::vector<int64_t> base;           // P: counter base of every parameter
  std::vector<void*> out;              // P: contiguous destination (nullptr: no elements)
  std::vector<at::ScalarType> out_dtype;
  uint64_t seed = 0;
  uint64_t offset = 0;
  double eps = 0.0;
  const void* leak = nullptr;          // K values of the accumulation type
};

template <typename A, typename O>
FASTMTL_INLINE void store_as(const A* d, void* dst, int64_t n) {
  O* o = static_cast<O*>(dst);
  if constexpr (std::is_same_v<O, A>) {
    std::memcpy(o, d, n * sizeof(A));
#if FASTMTL_X86_CLONES && defined(__FLT16_MAX__)
  } else if constexpr (std::is_same_v<O, c10::Half>) {
    _Float16* h = reinterpret_cast<_Float16*>(o);  // round to nearest even, as c10::Half
    for (int64_t i = 0; i < n; ++i) h[i] = static_cast<_Float16>(static_cast<float>(d[i]));
#endif
  } else if constexpr (std::is_same_v<O, double>) {
    for (int64_t i = 0; i < n; ++i) o[i] = static_cast<double>(d[i]);
  } else {
    // float, or a 16-bit type through float: PyTorch converts float64 to float16/bfloat16 in two
    // roundings (via float32), and the result must equal its copy_ bit for bit.
    for (int64_t i = 0; i < n; ++i) o[i] = static_cast<O>(static_cast<float>(d[i]));
  }
}

template <typename A>
FASTMTL_INLINE void store_block(const A* d, void* dst, at::ScalarType dtype, int64_t n) {
  switch (dtype) {
    case at::kDouble: return store_as<A, double>(d, dst, n);
    case at::kHalf: return store_as<A, c10::Half>(d, dst, n);
    case at::kBFloat16: return store_as<A, c10::BFloat16>(d, dst, n);
    default: return store_as<A, float>(d, dst, n);
  }
}

// Scratch of one thread: kBlock uniforms and, for low-precision inputs, K converted rows.
template <typename A>
struct Scratch {
  float u[kBlock];
  A S[kBlock], Abs[kBlock], thr[kBlock], d[kBlock];
  std::vector<A> rows_buf;
  std::vector<const A*> rows;
  std::vector<int64_t> present;
};

template <typename T, typename A, bool Fast>
FASTMTL_INLINE void graddrop_chunks(const Args& a, int64_t c0, int64_t c1, Scratch<A>& s) {
  const Table& t = *a.t;
  const A* leak = static_cast<const A*>(a.leak);
  const A eps = static_cast<A>(a.eps);
  for (int64_t c = c0; c < c1; ++c) {
    const Chunk& ch = t.chunks[c];
    s.present.clear();
    for (int64_t k = 0; k < t.K; ++k) {
      if (t.ptr[k * t.P + ch.p] != nullptr) s.present.push_back(k);
    }
    const int64_t m = int64_t(s.present.size());
    char* dst = static_cast<char*>(a.out[ch.p]);
    const at::ScalarType odt = a.out_dtype[ch.p];
    const int64_t osize = int64_t(c10::elementSize(odt));
    for (int64_t b = 0; b < ch.len; b += kBlock) {
      const int64_t n = std::min(kBlock, ch.len - b);
      const int64_t off = ch.start + b;
      const uint64_t first = a.offset + uint64_t(a.base[ch.p] + off);
#if FASTMTL_X86_CLONES
      if constexpr (Fast) philox_uniforms_avx2(a.seed, first, n, s.u);
      else philox_uniforms(a.seed, first, n, s.u);
#else
      philox_uniforms(a.seed, first, n, s.u);
#endif
      for (int64_t i = 0; i < m; ++i) {
        const T* src = static_cast<const T*>(t.ptr[s.present[i] * t.P + ch.p]) + off;
        if constexpr (std::is_same_v<T, A>) {
          s.rows[i] = src;
        } else {
          load_block<T, A>(src, s.rows_buf.data() + i * kBlock, n);
          s.rows[i] = s.rows_buf.data() + i * kBlock;
        }
      }
      // Restrict-qualified, branch-free loops (bitwise & and | on the comparisons, a select): the
      // masks are random, so a branch per element would be mispredicted half the time.
      A* __restrict S = s.S;
      A* __restrict Abs = s.Abs;
      A* __restrict thr = s.thr;
      A* __restrict d = s.d;
      for (int64_t j = 0; j < n; ++j) S[j] = Abs[j] = d[j] = A(0);
      for (int64_t i = 0; i < m; ++i) {
        const A* __restrict g = s.rows[i];
        for (int64_t j = 0; j < n; ++j) {
          S[j] += g[j];
          Abs[j] += std::abs(g[j]);
        }
      }
      const float* __restrict u = s.u;
      for (int64_t j = 0; j < n; ++j) thr[j] = (A(2) * A(u[j]) - A(1)) * (Abs[j] + eps);
      for (int64_t i = 0; i < m; ++i) {
        const A* __restrict g = s.rows[i];
        const A l = leak[s.present[i]];
        for (int64_t j = 0; j < n; ++j) {
          const A x = g[j];
          const bool keep = ((x > A(0)) & (S[j] > thr[j])) | ((x < A(0)) & (S[j] < thr[j]));
          // (keep ? 1 : l) * x is bit for bit the reference's where(keep, x, l * x) (1 * x == x, NaN
          // included). A select of two constants is if-converted; a select of x and l * x is not
          // (GCC sinks the possibly trapping product into a branch and gives up vectorising).
          d[j] += (keep ? A(1) : l) * x;
        }
      }
      // Every input of this block was read above: out[p] may be one of parameter p's inputs.
      store_block<A>(d, dst + off * osize, odt, n);
    }
  }
}

template <typename T, typename A>
void graddrop_range_default(const Args& a, int64_t c0, int64_t c1, Scratch<A>& s) {
  graddrop_chunks<T, A, false>(a, c0, c1, s);
}

template <typename T, typename A>
FASTMTL_FAST_TARGET void graddrop_range_fast(const Args& a, int64_t c0, int64_t c1, Scratch<A>& s) {
  graddrop_chunks<T, A, true>(a, c0, c1, s);
}

template <typename T, typename A>
void graddrop_impl(const Args& a) {
  const bool fast = fast_cpu();
  const int64_t K = a.t->K;
  at::parallel_for(0, int64_t(a.t->chunks.size()), 1, [&](int64_t c0, int64_t c1) {
    auto s = std::make_unique<Scratch<A>>();
    s->rows_buf.resize(std::is_same_v<T, A> ? 0 : K * kBlock);
    s->rows.resize(K);
    s->present.reserve(K);
    if (fast) graddrop_range_fast<T, A>(a, c0, c1, *s);
    else graddrop_range_default<T, A>(a, c0, c1, *s);
  });
}

void graddrop_run(Args& a, const at::Tensor& leak, int64_t seed, int64_t offset, double eps, const char* op) {
  const Table& t = *a.t;
  TORCH_CHECK(leak.defined() && leak.device().is_cpu(), op, ": leak must be a CPU tensor");
  TORCH_CHECK(leak.numel() == t.K, op, ": leak must hold num_tasks = ", t.K, " values, got shape ", leak.sizes());
  TORCH_CHECK(at::isFloatingType(leak.scalar_type()), op, ": leak must be floating point, got ", leak.scalar_type());
  TORCH_CHECK(seed >= 0, op, ": seed must be in [0, 2^63), got ", seed);
  int64_t total = 0;
  a.base.assign(t.P, 0);
  for (int64_t p = 0; p < t.P; ++p) {
    a.base[p] = total;
    total += t.numel[p];
  }
  TORCH_CHECK(offset >= 0 && offset <= std::numeric_limits<int64_t>::max() - total, op,
              ": offset must be >= 0 and leave every counter below 2^63, got ", offset, " for ", total, " elements");
  a.seed = uint64_t(seed);
  a.offset = uint64_t(offset);
  a.eps = eps;
  // Read in place and converted as .to() rounds (cpu_pointer_table.h); alive until the kernels return.
  std::vector<double> leak64;
  std::vector<float> leak32;
  if (t.dtype == at::kDouble) {
    leak64 = values_as<double>(leak);
    a.leak = leak64.data();
  } else {
    leak32 = values_as<float>(leak);
    a.leak = leak32.data();
  }
  switch (t.dtype) {
    case at::kDouble: return graddrop_impl<double, double>(a);
    case at::kHalf: return graddrop_impl<c10::Half, float>(a);
    case at::kBFloat16: return graddrop_impl<c10::BFloat16, float>(a);
    default: return graddrop_impl<float, float>(a);
  }
}

std::vector<at::Tensor> graddrop_entries(const Entries& tensors, int64_t num_tasks, const at::Tensor& leak,
                                         int64_t seed, int64_t offset, double eps, bool separate) {
  const char* op = "fastmtl::graddrop_cpu";
  const Table t = make_table(tensors, num_tasks, op);
  Args a;
  a.t = &t;
  std::vector<at::Tensor> parts = allocate_results(t, separate, a.out);
  a.out_dtype.assign(t.P, t.dtype);
  graddrop_run(a, leak, seed, offset, eps, op);
  return parts;
}

void graddrop_out_entries(const Entries& tensors, int64_t num_tasks, const at::Tensor& leak, int64_t seed,
                          int64_t offset, double eps, at::TensorList out) {
  const char* op = "fastmtl::graddrop_cpu_out";
  const Table t = make_table(tensors, num_tasks, op);
  TORCH_CHECK(int64_t(out.size()) == t.P, op, ": expected ", t.P, " out tensors (one per parameter), got ",
              out.size());
  Args a;
  a.t = &t;
  a.out.assign(t.P, nullptr);
  a.out_dtype.assign(t.P, t.dtype);
  std::vector<std::pair<int64_t, at::Tensor>> staged;  // non-contiguous out: written here, then copied
  for (int64_t p = 0; p < t.P; ++p) {
    const at::Tensor& o = out[p];
    if (t.numel[p] == 0) continue;  // no elements here: out[p] is left untouched
    TORCH_CHECK(o.defined() && o.device().is_cpu(), op, ": out[", p, "] must be a CPU tensor");
    TORCH_CHECK(o.numel() == t.numel[p], op, ": out[", p, "] has ", o.numel(), " elements but parameter ", p,
                " has ", t.numel[p]);
    TORCH_CHECK(supported_dtype(o.scalar_type()), op, ": out[", p, "]: dtype ", o.scalar_type(),
                " is not supported");
    a.out_dtype[p] = o.scalar_type();
    if (o.is_contiguous()) {
      a.out[p] = o.data_ptr();
    } else {
      at::Tensor tmp = at::empty({t.numel[p]}, o.options().memory_format(at::MemoryFormat::Contiguous));
      a.out[p] = tmp.data_ptr();
      staged.emplace_back(p, std::move(tmp));
    }
  }
  check_out_overlap(t, out, op);
  graddrop_run(a, leak, seed, offset, eps, op);
  for (auto& [p, tmp] : staged) out[p].copy_(tmp.view(out[p].sizes()));
}

// The ops' kernels: the same functions over the list's borrowed entries.
std::vector<at::Tensor> graddrop_cpu(const OptTensorList& tensors, int64_t num_tasks, const at::Tensor& leak,
                                     int64_t seed, int64_t offset, double eps) {
  return graddrop_entries(entries_of(tensors), num_tasks, leak, seed, offset, eps, /*separate=*/true);
}
void graddrop_cpu_out(const OptTensorList& tensors, int64_t num_tasks, const at::Tensor& leak, int64_t seed,
                      int64_t offset, double eps, at::TensorList out) {
  graddrop_out_entries(entries_of(tensors), num_tasks, leak, seed, offset, eps, out);
}

}  // namespace

// The same functions for the direct eager entry points (cpu_kernels.h, cpu_direct.cpp).
namespace fastmtl_cpu {
std::vector<at::Tensor> direct_graddrop(const Entries& tensors, int64_t num_tasks, const at::Tensor& leak,
                                        int64_t seed, int64_t offset, double eps) {
  return graddrop_entries(tensors, num_tasks, leak, seed, offset, eps, /*separate=*/false);
}
void direct_graddrop_out(const Entries& tensors, int64_t num_tasks, const at::Tensor& leak, int64_t seed,
                         int64_t offset, double eps, at::TensorList out) {
  graddrop_out_entries(tensors, num_tasks, leak, seed, offset, eps, out);
}
}  // namespace fastmtl_cpu

TORCH_LIBRARY_FRAGMENT(fastmtl, m) {
  m.set_python_module("fastmtl.cpu_ops");
  m.def("graddrop_cpu(Tensor?[] tensors, int num_tasks, Tensor leak, int seed, int offset, float eps) -> Tensor[]",
        {at::Tag::pt2_compliant_tag});
  m.def("graddrop_cpu_out(Tensor?[] tensors, int num_tasks, Tensor leak, int seed, int offset, float eps, "
        "Tensor(a!)[] out) -> ()",
        {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) {
  m.impl("graddrop_cpu", &graddrop_cpu);
  m.impl("graddrop_cpu_out", &graddrop_cpu_out);
}
