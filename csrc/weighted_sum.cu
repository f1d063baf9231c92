// Weighted sum d[p] = sum_k lam[k] g[k][p] over the multi-tensor table (multi_tensor.cuh), in one
// pass: every input element is read once and every output element written once.
//
// Outputs go either to one flat buffer (parameter p at flat_off[p], padded to kOutPad elements, the
// padding written as zeros) or through the table's out_ptr section (existing buffers such as the
// parameters' .grad). The output type may differ from the input type (out= into float32 .grad from
// bfloat16 gradients); accumulation is float (double for float64 inputs), in task order 0..K-1 with
// fused multiply-adds, so results are bitwise reproducible. A task without a gradient for a
// parameter is skipped, exactly like the reference.
//
// Aliasing: an output may be the very same tensor as one of the inputs of its parameter (each
// thread reads all K inputs of its elements before writing them), so coherent loads are used rather
// than the read-only path. Partially overlapping outputs and inputs are rejected by the binding.
#include "multi_tensor.cuh"

#include <algorithm>

namespace fastmtl {
namespace {

__device__ __forceinline__ float fma_acc(float a, float b, float c) { return __fmaf_rn(a, b, c); }
__device__ __forceinline__ double fma_acc(double a, double b, double c) { return __fma_rn(a, b, c); }

constexpr int kUnroll = 4;  // tasks whose loads are issued together

template <typename T>
constexpr int wsum_vec_elems() { return 16 / T::size; }

// Dynamic shared memory: lam[K] (accumulation type), then the K row pointers of the current chunk.
template <typename A>
__host__ __device__ constexpr size_t lam_bytes(int64_t K) { return size_t(round_up(K * int64_t(sizeof(A)), 16)); }

template <typename T, typename O>
__global__ void __launch_bounds__(kThreads)
    weighted_sum_kernel(TableArgs a, const typename T::acc* __restrict__ lam, char* flat_out) {
  using A = typename T::acc;
  constexpr int E = wsum_vec_elems<T>();
  constexpr int kStep = kThreads * E;
  const TableLayout L{a.K, a.P};
  const int K = int(a.K);

  extern __shared__ __align__(16) unsigned char smem[];
  A* s_lam = reinterpret_cast<A*>(smem);
  const char** s_row = reinterpret_cast<const char**>(smem + lam_bytes<A>(a.K));
  for (int k = threadIdx.x; k < K; k += kThreads) s_lam[k] = lam[k];

  for (int64_t c = blockIdx.x; c < a.C; c += gridDim.x) {
    const ChunkInfo ci = chunk_info(a, L, c);
    __syncthreads();  // the previous chunk's row pointers are no longer read (and s_lam is visible)
    for (int k = threadIdx.x; k < K; k += kThreads) {
      const int64_t addr = __ldg(a.table + L.ptrs() + int64_t(k) * a.P + ci.p);
      s_row[k] = addr ? reinterpret_cast<const char*>(addr) + ci.begin * T::size : nullptr;
    }
    char* dst;
    int wlen = ci.len;
    if (flat_out) {
      dst = flat_out + (__ldg(a.table + L.flat_off() + ci.p) + ci.begin) * O::size;
      const int64_t padded = round_up(__ldg(a.table + L.numel() + ci.p), kOutPad) - ci.begin;
      wlen = int(padded < kChunk ? padded : kChunk);
    } else {
      dst = reinterpret_cast<char*>(__ldg(a.table + L.out_ptrs() + ci.p)) + ci.begin * O::size;
    }
    __syncthreads();

    if (ci.flags & kFlagAligned) {
      for (int o = threadIdx.x * E; o < wlen; o += kStep) {
        A acc[E];
#pragma unroll
        for (int e = 0; e < E; ++e) acc[e] = A(0);
        if (o + E <= ci.len) {
          for (int k0 = 0; k0 < K; k0 += kUnroll) {
            A x[kUnroll][E];
            const char* r[kUnroll];
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
              r[u] = k0 + u < K ? s_row[k0 + u] : nullptr;
              if (r[u]) {
                load_vec<T, A, E, false>(r[u] + int64_t(o) * T::size, x[u]);
              } else {
#pragma unroll
                for (int e = 0; e < E; ++e) x[u][e] = A(0);
              }
            }
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
              if (r[u]) {
                const A l = s_lam[k0 + u];
#pragma unroll
                for (int e = 0; e < E; ++e) acc[e] = fma_acc(l, x[u][e], acc[e]);
              }
            }
          }
        } else if (o < ci.len) {  // the last, partial vector of the parameter
          for (int k = 0; k < K; ++k) {
            const char* r = s_row[k];
            if (!r) continue;
            const A l = s_lam[k];
#pragma unroll
            for (int e = 0; e < E; ++e)
              if (o + e < ci.len) acc[e] = fma_acc(l, load_scalar<T, A, false>(r + int64_t(o + e) * T::size), acc[e]);
          }
        }  // else: flat-output padding, zeros
        if (o + E <= wlen) {
          store_vec<O, A, E>(dst + int64_t(o) * O::size, acc);
        } else {
#pragma unroll
          for (int e = 0; e < E; ++e)
            if (o + e < wlen) store_one<O, A>(dst + int64_t(o + e) * O::size, acc[e]);
        }
      }
    } else {
      // Unaligned views: coalesced scalar accesses, element base + e * kThreads + t.
      for (int base = 0; base < wlen; base += kStep) {
        A acc[E];
#pragma unroll
        for (int e = 0; e < E; ++e) acc[e] = A(0);
        for (int k0 = 0; k0 < K; k0 += kUnroll) {
          A x[kUnroll][E];
          const char* r[kUnroll];
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) {
            r[u] = k0 + u < K ? s_row[k0 + u] : nullptr;
#pragma unroll
            for (int e = 0; e < E; ++e) {
              const int idx = base + e * kThreads + threadIdx.x;
              x[u][e] = (r[u] && idx < ci.len) ? load_scalar<T, A, false>(r[u] + int64_t(idx) * T::size) : A(0);
            }
          }
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) {
            if (r[u]) {
              const A l = s_lam[k0 + u];
#pragma unroll
              for (int e = 0; e < E; ++e) acc[e] = fma_acc(l, x[u][e], acc[e]);
            }
          }
        }
#pragma unroll
        for (int e = 0; e < E; ++e) {
          const int idx = base + e * kThreads + threadIdx.x;
          if (idx < wlen) store_one<O, A>(dst + int64_t(idx) * O::size, acc[e]);
        }
      }
    }
  }
}

template <typename F>
decltype(auto) dispatch_dtype(DType d, F&& f) {
  switch (d) {
    case kFloat16: return f(F16{});
    case kBFloat16: return f(BF16{});
    case kFloat64: return f(F64{});
    default: return f(F32{});
  }
}

template <typename T, typename O>
int wsum_occupancy() {
  static const int occ = [] {
    int n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, weighted_sum_kernel<T, O>, kThreads, 0) != cudaSuccess) {
      (void)cudaGetLastError();
      n = 1;
    }
    return n > 0 ? n : 1;
  }();
  return occ;
}

}  // namespace

cudaError_t weighted_sum_launch(DType in, DType out, TableArgs args, const void* lam, void* flat_out,
                                cudaStream_t stream, int device) {
  if (args.C == 0) return cudaSuccess;
  return dispatch_dtype(in, [&](auto t) {
    using T = decltype(t);
    using A = typename T::acc;
    return dispatch_dtype(out, [&](auto o) {
      using O = decltype(o);
      const size_t smem = lam_bytes<A>(args.K) + size_t(args.K) * sizeof(void*);
      if (smem > 48 * 1024) return cudaErrorInvalidValue;
      const int64_t wave = int64_t(device_sm_count(device)) * wsum_occupancy<T, O>();
      const int blocks = int(std::max<int64_t>(1, std::min<int64_t>(wave, args.C)));
      weighted_sum_kernel<T, O><<<blocks, kThreads, smem, stream>>>(args, static_cast<const A*>(lam),
                                                                   static_cast<char*>(flat_out));
      return cudaGetLastError();
    });
  });
}

}  // namespace fastmtl
