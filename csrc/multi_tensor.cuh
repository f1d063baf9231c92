// fastmtl multi-tensor infrastructure: the pointer/size table shared by every kernel, the launch
// entry points the binding (ops.cpp) calls, and the device helpers the kernels share.
//
// This header includes no torch headers, so the .cu files compile in seconds. ops.cpp (compiled by
// the host C++ compiler) sees only the plain C++ part; the device helpers are behind __CUDACC__.
//
// ----------------------------------------------------------------------------------------------
// The table
// ----------------------------------------------------------------------------------------------
// The K task gradients arrive as K x P tensors g[k][p] (P parameters, any sizes, some missing).
// Nothing is concatenated: every kernel reads the tensors in place through one int64 table built on
// the host, copied to the device once and cached by the binding (key: device, stream, dtypes and
// the table contents themselves, i.e. every address and size; never object identity).
//
//   word range                       content
//   [0, K*P)                         ptr[k*P + p]   address of g[k][p] (0 = task k has no gradient)
//   [K*P, K*P + P + 1)               chunk_start[p] prefix sum of chunks; chunk_start[P] = C
//   next P words                     numel[p]       elements of parameter p
//   next P words                     flat_off[p]    where p starts in a flat output (padded to kOutPad)
//   next P words                     flags[p]       bit 0: every address of column p (outputs too
//                                                   when present) is 16-byte aligned
//   next P words (optional)          out_ptr[p]     destination of parameter p (weighted sum, out=)
//
// Work decomposition: parameter p is cut into ceil(numel[p] / kChunk) chunks of kChunk elements
// (the last one shorter). Chunks are numbered 0..C-1 in parameter order; a block finds the
// parameter of chunk c by binary search over chunk_start (log2 P cached loads per kChunk elements).
// The grids are persistent (about one wave of blocks, each sweeping chunks c = b, b + nb, ...), so
// the number of parameters and their sizes are unbounded: P only sets the table length, and the
// per-block Gram partials are bounded by the grid size, not by C.
//
// Hazards handled by the binding, documented here because the kernels depend on them:
// * tensors reached through the table are arguments of the op, so the dispatcher keeps them alive
//   while the launch is enqueued; same-stream allocator reuse after the call is stream-ordered;
// * a cached device table is only used on the stream it was created on (the stream is part of the
//   key), so evicting it returns memory to the caching allocator in stream order;
// * under CUDA graph capture the cache is bypassed: the table is written by fill_table_async (values
//   travel as kernel parameters, which the graph copies at capture time) into memory from the
//   graph's private pool, so replays never depend on host memory or on an evictable cache entry.
#pragma once

#include <cstdint>
#include <type_traits>
#include <cuda_runtime.h>

#ifdef __CUDACC__
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#define FASTMTL_HD __host__ __device__ __forceinline__ constexpr
#else
#define FASTMTL_HD inline constexpr
#endif

namespace fastmtl {

// Elements per chunk. A multiple of every per-block tile (kThreads x 16 bytes of the widest vector),
// so chunk starts keep 16-byte alignment of the parameter's base address.
constexpr int64_t kChunk = 4096;
// Flat outputs place parameter p at a multiple of kOutPad elements so that vector stores stay
// 16-byte aligned for every parameter whatever the sizes of the previous ones. The gaps are zeros.
constexpr int64_t kOutPad = 16;
constexpr int kThreads = 256;
// Up to this many tasks the Gram kernel accumulates all K(K+1)/2 pairs in registers in one pass.
// Beyond it, tasks are grouped in tiles of kCrossTile and each block computes one tile pair.
constexpr int kMaxSymTasks = 16;
constexpr int kCrossTile = 8;

enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

FASTMTL_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
FASTMTL_HD int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// Word offsets of the table sections (see the header comment).
struct TableLayout {
  int64_t K, P;
  FASTMTL_HD int64_t ptrs() const { return 0; }
  FASTMTL_HD int64_t chunk_start() const { return K * P; }
  FASTMTL_HD int64_t numel() const { return K * P + P + 1; }
  FASTMTL_HD int64_t flat_off() const { return numel() + P; }
  FASTMTL_HD int64_t flags() const { return flat_off() + P; }
  FASTMTL_HD int64_t out_ptrs() const { return flags() + P; }
  FASTMTL_HD int64_t words(bool with_out) const { return out_ptrs() + (with_out ? P : 0); }
};

constexpr int64_t kFlagAligned = 1;
// Some task has no gradient for this parameter (a null entry in a column with elements): the Gram
// takes such chunks in its masked kernel (gramian.cu, on missing entries).
constexpr int64_t kFlagMissing = 2;

// What every kernel receives: the device table and its dimensions.
struct TableArgs {
  const int64_t* table;
  int64_t K;  // tasks
  int64_t P;  // parameters (table columns)
  int64_t C;  // chunks
};

// ---- host entry points (defined in the .cu files; return the launch status) ------------------

// Shape of one Gram computation: which kernel, how many blocks, the size of the partials buffer.
struct GramPlan {
  int kt;            // tasks per symmetric pass (instantiated size >= K), or kCrossTile when tiled
  bool tiled;        // K > kMaxSymTasks: tile pairs of kCrossTile x kCrossTile tasks
  int tiles;         // number of task tiles (1 when not tiled)
  int tile_pairs;    // tiles * (tiles + 1) / 2
  int pairs;         // accumulators per block: kt (kt + 1) / 2, or kCrossTile^2 when tiled
  int blocks;        // persistent blocks per tile pair
  bool masked;       // some task lacks some parameter: a second (masked) partials kernel runs
  int slots() const { return masked ? 2 * blocks : blocks; }  // partial rows per tile pair
  int64_t partial_elems() const { return int64_t(tile_pairs) * slots() * pairs; }
};

// missing: some (task, parameter) entry with elements is null (see gramian.cu on missing entries).
GramPlan gramian_plan(DType dtype, int64_t K, int64_t C, int device, bool missing);
// partials: plan.partial_elems() accumulators (float, or double for kFloat64); G: K x K, same type.
cudaError_t gramian_launch(const GramPlan& plan, DType dtype, TableArgs args, void* partials, void* G,
                           cudaStream_t stream);

// d[p] = sum_k lam[k] g[k][p]. lam: K accumulators (float, or double for kFloat64 inputs).
// flat_out != nullptr: write parameter p at flat_out + flat_off[p] (gaps zeroed); otherwise write
// through the table's out_ptr section (which must be present).
cudaError_t weighted_sum_launch(DType in, DType out, TableArgs args, const void* lam, void* flat_out,
                                cudaStream_t stream, int device);

// Write n int64 words from host memory into device memory with kernel launches whose parameters carry
// the values (graph-capture safe: no host buffer must outlive the call).
cudaError_t fill_table_async(int64_t* dst, const int64_t* src, int64_t n, cudaStream_t stream);

// Multiprocessor count of a device (cached).
int device_sm_count(int device);

#ifdef __CUDACC__
// ---- device helpers ----------------------------------------------------------------------------

template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};

// Parameter holding chunk c: the largest p with chunk_start[p] <= c (empty parameters own no chunk).
__device__ __forceinline__ int64_t find_param(const int64_t* __restrict__ chunk_start, int64_t P, int64_t c) {
  int64_t lo = 0, hi = P - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) >> 1;
    if (__ldg(chunk_start + mid) <= c) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// One chunk as seen by a block: the parameter, the first element, the element count, the flags.
struct ChunkInfo {
  int64_t p;
  int64_t begin;
  int len;
  int64_t flags;
};

__device__ __forceinline__ ChunkInfo chunk_info(const TableArgs& a, const TableLayout& L, int64_t c) {
  ChunkInfo ci;
  ci.p = find_param(a.table + L.chunk_start(), a.P, c);
  ci.begin = (c - __ldg(a.table + L.chunk_start() + ci.p)) * kChunk;
  const int64_t n = __ldg(a.table + L.numel() + ci.p);
  const int64_t rest = n - ci.begin;
  ci.len = int(rest < kChunk ? rest : kChunk);
  ci.flags = __ldg(a.table + L.flags() + ci.p);
  return ci;
}

// ---- loads: raw words -> accumulator type --------------------------------------------------------
// Addresses come from the table, so the compiler cannot tell they are global and would emit generic
// loads and stores; the global-space forms below avoid that. NC = true uses the read-only
// (non-coherent) path, valid only when nothing the kernel writes can alias the data (the Gram
// kernel). The weighted sum may write in place over an input, so it uses ordinary (weak, coherent)
// ld.global. These asm loads are not volatile: the compiler may schedule them freely, which is safe
// because each thread loads every element it stores before storing it (a data dependency) and never
// touches it again; stores are volatile so they are never dropped.

__device__ __forceinline__ uint4 ld_global16(const void* p) {
  uint4 v;
  asm("ld.global.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}
__device__ __forceinline__ uint2 ld_global8(const void* p) {
  uint2 v;
  asm("ld.global.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
  return v;
}
__device__ __forceinline__ unsigned int ld_global4(const void* p) {
  unsigned int v;
  asm("ld.global.u32 %0, [%1];" : "=r"(v) : "l"(p));
  return v;
}
__device__ __forceinline__ unsigned short ld_global2(const void* p) {
  unsigned short v;
  asm("ld.global.u16 %0, [%1];" : "=h"(v) : "l"(p));
  return v;
}
__device__ __forceinline__ unsigned long long ld_global8s(const void* p) {
  unsigned long long v;
  asm("ld.global.u64 %0, [%1];" : "=l"(v) : "l"(p));
  return v;
}
__device__ __forceinline__ void st_global16(void* p, uint4 v) {
  asm volatile("st.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w));
}
__device__ __forceinline__ void st_global8(void* p, uint2 v) {
  asm volatile("st.global.v2.u32 [%0], {%1, %2};" ::"l"(p), "r"(v.x), "r"(v.y));
}
__device__ __forceinline__ void st_global4(void* p, unsigned int v) {
  asm volatile("st.global.u32 [%0], %1;" ::"l"(p), "r"(v));
}
__device__ __forceinline__ void st_global2(void* p, unsigned short v) {
  asm volatile("st.global.u16 [%0], %1;" ::"l"(p), "h"(v));
}
__device__ __forceinline__ void st_global8s(void* p, unsigned long long v) {
  asm volatile("st.global.u64 [%0], %1;" ::"l"(p), "l"(v));
}

template <bool NC>
__device__ __forceinline__ uint4 load16(const void* p) {
  if constexpr (NC) return __ldg(reinterpret_cast<const uint4*>(p));
  else return ld_global16(p);
}
template <bool NC>
__device__ __forceinline__ uint2 load8(const void* p) {
  if constexpr (NC) return __ldg(reinterpret_cast<const uint2*>(p));
  else return ld_global8(p);
}
template <bool NC>
__device__ __forceinline__ unsigned int load4(const void* p) {
  if constexpr (NC) return __ldg(reinterpret_cast<const unsigned int*>(p));
  else return ld_global4(p);
}
template <bool NC>
__device__ __forceinline__ unsigned short load2(const void* p) {
  if constexpr (NC) return __ldg(reinterpret_cast<const unsigned short*>(p));
  else return ld_global2(p);
}
template <bool NC>
__device__ __forceinline__ unsigned long long load8s(const void* p) {
  if constexpr (NC) return __ldg(reinterpret_cast<const unsigned long long*>(p));
  else return ld_global8s(p);
}

// Storage type tags: the kernels are templated on these; conversions go through the raw bits.
struct F32 { using acc = float; static constexpr int size = 4; };
struct F16 { using acc = float; static constexpr int size = 2; };
struct BF16 { using acc = float; static constexpr int size = 2; };
struct F64 { using acc = double; static constexpr int size = 8; };

template <typename T, typename A>
__device__ __forceinline__ A load_one(const char* p);

template <>
__device__ __forceinline__ float load_one<F32, float>(const char* p) { return __uint_as_float(load4<false>(p)); }
template <>
__device__ __forceinline__ float load_one<F16, float>(const char* p) {
  return __half2float(__ushort_as_half(load2<false>(p)));
}
template <>
__device__ __forceinline__ float load_one<BF16, float>(const char* p) {
  return __uint_as_float(static_cast<unsigned int>(load2<false>(p)) << 16);
}
template <>
__device__ __forceinline__ double load_one<F64, double>(const char* p) {
  return __longlong_as_double(static_cast<long long>(load8s<false>(p)));
}

// Read-only-path variant of load_one.
template <typename T, typename A>
__device__ __forceinline__ A load_one_nc(const char* p);
template <>
__device__ __forceinline__ float load_one_nc<F32, float>(const char* p) { return __uint_as_float(load4<true>(p)); }
template <>
__device__ __forceinline__ float load_one_nc<F16, float>(const char* p) {
  return __half2float(__ushort_as_half(load2<true>(p)));
}
template <>
__device__ __forceinline__ float load_one_nc<BF16, float>(const char* p) {
  return __uint_as_float(static_cast<unsigned int>(load2<true>(p)) << 16);
}
template <>
__device__ __forceinline__ double load_one_nc<F64, double>(const char* p) {
  return __longlong_as_double(static_cast<long long>(load8s<true>(p)));
}

template <typename T, typename A, bool NC>
__device__ __forceinline__ A load_scalar(const char* p) {
  if constexpr (NC) return load_one_nc<T, A>(p);
  else return load_one<T, A>(p);
}

// Unpack 32-bit words holding consecutive elements of T.
template <typename T, typename A, int E>
__device__ __forceinline__ void unpack(const unsigned int* w, A (&out)[E]) {
  if constexpr (T::size == 4) {
#pragma unroll
    for (int i = 0; i < E; ++i) out[i] = __uint_as_float(w[i]);
  } else if constexpr (T::size == 8) {
#pragma unroll
    for (int i = 0; i < E; ++i)
      out[i] = __hiloint2double(static_cast<int>(w[2 * i + 1]), static_cast<int>(w[2 * i]));
  } else {
    static_assert(T::size == 2, "unsupported element size");
#pragma unroll
    for (int i = 0; i < E / 2; ++i) {
      const unsigned int lo = w[i] & 0xffffu, hi = w[i] >> 16;
      if constexpr (std::is_same_v<T, F16>) {
        out[2 * i] = __half2float(__ushort_as_half(static_cast<unsigned short>(lo)));
        out[2 * i + 1] = __half2float(__ushort_as_half(static_cast<unsigned short>(hi)));
      } else {
        out[2 * i] = __uint_as_float(lo << 16);
        out[2 * i + 1] = __uint_as_float(hi << 16);
      }
    }
  }
}

// Load E consecutive elements (E * size bytes, 4, 8 or 16, aligned to that size) from p.
template <typename T, typename A, int E, bool NC>
__device__ __forceinline__ void load_vec(const char* p, A (&out)[E]) {
  constexpr int B = E * T::size;
  static_assert(B == 4 || B == 8 || B == 16, "vector width must be 4, 8 or 16 bytes");
  unsigned int w[B / 4];
  if constexpr (B == 16) {
    const uint4 v = load16<NC>(p);
    w[0] = v.x; w[1] = v.y; w[2] = v.z; w[3] = v.w;
  } else if constexpr (B == 8) {
    const uint2 v = load8<NC>(p);
    w[0] = v.x; w[1] = v.y;
  } else {
    w[0] = load4<NC>(p);
  }
  unpack<T, A, E>(w, out);
}

// ---- stores: accumulator -> storage type ----------------------------------------------------------

template <typename T, typename A>
__device__ __forceinline__ void store_one(char* p, A v) {
  if constexpr (std::is_same_v<T, F32>) {
    st_global4(p, __float_as_uint(static_cast<float>(v)));
  } else if constexpr (std::is_same_v<T, F64>) {
    st_global8s(p, static_cast<unsigned long long>(__double_as_longlong(static_cast<double>(v))));
  } else if constexpr (std::is_same_v<T, F16>) {
    st_global2(p, __half_as_ushort(__float2half_rn(static_cast<float>(v))));
  } else {
    st_global2(p, __bfloat16_as_ushort(__float2bfloat16_rn(static_cast<float>(v))));
  }
}

// Store E consecutive elements to p, aligned to min(16, E * size) bytes.
template <typename T, typename A, int E>
__device__ __forceinline__ void store_vec(char* p, const A (&v)[E]) {
  constexpr int B = E * T::size;
  constexpr int W = B / 4;
  static_assert(B % 4 == 0, "vector store of less than 4 bytes");
  unsigned int w[W];
  if constexpr (T::size == 4) {
#pragma unroll
    for (int i = 0; i < E; ++i) w[i] = __float_as_uint(static_cast<float>(v[i]));
  } else if constexpr (T::size == 8) {
#pragma unroll
    for (int i = 0; i < E; ++i) {
      const double d = static_cast<double>(v[i]);
      w[2 * i] = static_cast<unsigned int>(__double2loint(d));
      w[2 * i + 1] = static_cast<unsigned int>(__double2hiint(d));
    }
  } else {
#pragma unroll
    for (int i = 0; i < E / 2; ++i) {
      unsigned int lo, hi;
      if constexpr (std::is_same_v<T, F16>) {
        lo = __half_as_ushort(__float2half_rn(static_cast<float>(v[2 * i])));
        hi = __half_as_ushort(__float2half_rn(static_cast<float>(v[2 * i + 1])));
      } else {
        lo = __bfloat16_as_ushort(__float2bfloat16_rn(static_cast<float>(v[2 * i])));
        hi = __bfloat16_as_ushort(__float2bfloat16_rn(static_cast<float>(v[2 * i + 1])));
      }
      w[i] = lo | (hi << 16);
    }
  }
  if constexpr (W >= 4) {
#pragma unroll
    for (int i = 0; i < W / 4; ++i)
      st_global16(p + 16 * i, make_uint4(w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]));
  } else if constexpr (W == 2) {
    st_global8(p, make_uint2(w[0], w[1]));
  } else {
    st_global4(p, w[0]);
  }
}

// Butterfly warp sum: every lane ends with a sum of the same 32 values, in an order fixed by the
// lane id, so the result is bitwise reproducible.
template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}
#endif  // __CUDACC__

}  // namespace fastmtl
