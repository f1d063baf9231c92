// Gram matrix G[i][j] = sum_p <g[i][p], g[j][p]> of K task gradients read in place through the
// multi-tensor table (multi_tensor.cuh).
//
// Stage 1 (gram_partials_kernel): a persistent grid; each block sweeps chunks c = b, b + nb, ...
// Every thread loads the K rows of its elements once (16-byte vectors when the host flagged the
// parameter as aligned, coalesced scalars otherwise), converts them to the accumulation type and
// updates all K(K+1)/2 pair sums held in registers. At the end the block reduces each pair sum
// (warp shuffles, then one shared-memory row per warp summed in warp order) and writes one row of
// per-block partials. No atomics: the partial of block b only depends on the chunks b visits, in
// the order it visits them.
//
// Stage 2 (gram_finalize_kernel): one small block per Gram entry sums the per-block partials in a
// fixed order and writes G[i][j] and G[j][i] from the same value (exactly symmetric).
//
// The result is bitwise reproducible for the same values, shapes, device and build, wherever the
// tensors live as long as each parameter keeps its 16-byte alignment (which selects the vector or the
// scalar element-to-thread mapping): the grid size depends only on the device's multiprocessor count,
// the kernel's occupancy and the number of chunks.
//
// K <= kMaxSymTasks: one symmetric pass with KT >= K rows (KT is the smallest instantiated size;
// rows K..KT-1 are treated as missing: never loaded, their pair sums are discarded).
// K > kMaxSymTasks: tasks are grouped in tiles of kCrossTile; blockIdx.x selects a tile pair
// (ta <= tb) and the block accumulates the kCrossTile x kCrossTile cross products of the two tiles.
// blockIdx.x varies fastest, so the blocks of all tile pairs for the same chunks run together and
// share the loaded rows through L2: DRAM traffic stays close to one read of the K rows.
//
// Accumulation is in float (double for float64 inputs).
//
// Missing entries (a task without a gradient for a parameter, a null table entry) are never read,
// and they take no part in that parameter's products: the pair (i, j) gains <g_i[p], g_j[p]> only
// when both tasks have a gradient for p, exactly as the reference (gramian_ref stacks only the
// present tasks). Reading a missing row as zeros and multiplying through would be wrong for
// non-finite inputs: one Inf/NaN in task i's entry would turn the pairs of i with the tasks that do
// not touch p into NaN (0 * Inf) where the reference leaves them untouched. A chunk lies in one
// parameter, so its presence pattern is uniform across the block; the host flags the parameters
// with a missing entry (kFlagMissing). Two instantiations of the partials kernel split the chunks:
// the plain one takes the unflagged chunks with no per-pair test, the MASKED one the flagged ones,
// skipping the products of pairs with a missing row. They write separate partial slots (the
// masked ones after the plain ones of the same tile pair) that the finalize kernel sums in slot
// order, so the result stays bitwise repeatable. The masked kernel is launched only when the host
// saw a missing entry; a separate kernel keeps its per-pair tests from costing the plain kernel
// registers (inlined into one kernel they made several variants spill). Padding rows (task >= K)
// read as missing; their pairs are discarded by the finalize kernel either way.
#include "multi_tensor.cuh"

#include <algorithm>
#include <utility>

namespace fastmtl {
namespace {

__device__ __forceinline__ float fma_acc(float a, float b, float c) { return __fmaf_rn(a, b, c); }
__device__ __forceinline__ double fma_acc(double a, double b, double c) { return __fma_rn(a, b, c); }

// Rows held per thread and the vector width: 16-byte loads up to 8 rows, 8-byte loads beyond, which
// keeps the K(K+1)/2 accumulators plus the loaded values within the register file without spills.
template <typename T, int KT, bool TILED>
struct GramShape {
  static constexpr int kRows = TILED ? 2 * kCrossTile : KT;
  static constexpr int kPairs = TILED ? kCrossTile * kCrossTile : KT * (KT + 1) / 2;
  static constexpr int kWant = kRows <= 8 ? 16 : 8;
  static constexpr int kBytes = kWant < T::size ? T::size : kWant;
  static constexpr int kE = kBytes / T::size;  // elements per row per thread per step
  static constexpr int kMinBlocks = kRows <= 4 ? 4 : (kRows <= 8 ? 2 : 1);
};

// Tile pair index -> (ta, tb), ta <= tb, enumerated row by row of the upper triangle.
__device__ __forceinline__ void decode_tile_pair(int t, int tiles, int& ta, int& tb) {
  ta = 0;
  while (t >= tiles - ta) {
    t -= tiles - ta;
    ++ta;
  }
  tb = ta + t;
}

// acc[pair] += x[i][e] * x[j][e] for the E elements of every pair of rows; MASKED skips the pairs
// with a missing row (row[r] == nullptr), see the comment at the top of the file.
template <int KT, bool TILED, bool MASKED, typename A, int NP, int R, int E>
__device__ __forceinline__ void add_pairs(A (&acc)[NP], const A (&x)[R][E], const char* const (&row)[R]) {
#pragma unroll
  for (int e = 0; e < E; ++e) {
    if constexpr (TILED) {
#pragma unroll
      for (int i = 0; i < kCrossTile; ++i)
#pragma unroll
        for (int j = 0; j < kCrossTile; ++j)
          if (!MASKED || (row[i] && row[kCrossTile + j]))
            acc[i * kCrossTile + j] = fma_acc(x[i][e], x[kCrossTile + j][e], acc[i * kCrossTile + j]);
    } else {
      int q = 0;
#pragma unroll
      for (int i = 0; i < KT; ++i)
#pragma unroll
        for (int j = i; j < KT; ++j, ++q)
          if (!MASKED || (row[i] && row[j])) acc[q] = fma_acc(x[i][e], x[j][e], acc[q]);
    }
  }
}

// Block (x, y) writes its partials to slot x * slots + slot0 + y of partials.
template <typename T, int KT, bool TILED, bool MASKED>
__global__ void __launch_bounds__(kThreads, (GramShape<T, KT, TILED>::kMinBlocks))
    gram_partials_kernel(TableArgs a, int tiles, int slots, int slot0, typename T::acc* __restrict__ partials) {
  using A = typename T::acc;
  using S = GramShape<T, KT, TILED>;
  constexpr int R = S::kRows;
  constexpr int NP = S::kPairs;
  constexpr int E = S::kE;
  constexpr int kStep = kThreads * E;
  const TableLayout L{a.K, a.P};

  int task_a = 0, task_b = 0;
  if constexpr (TILED) {
    int ta, tb;
    decode_tile_pair(blockIdx.x, tiles, ta, tb);
    task_a = ta * kCrossTile;
    task_b = tb * kCrossTile;
  }

  A acc[NP];
#pragma unroll
  for (int q = 0; q < NP; ++q) acc[q] = A(0);

  for (int64_t c = blockIdx.y; c < a.C; c += gridDim.y) {
    const ChunkInfo ci = chunk_info(a, L, c);
    if (bool(ci.flags & kFlagMissing) != MASKED) continue;  // the other kernel's chunk (block-uniform)
    const char* row[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t task = TILED ? (r < kCrossTile ? task_a + r : task_b + r - kCrossTile) : r;
      const int64_t addr = task < a.K ? __ldg(a.table + L.ptrs() + task * a.P + ci.p) : 0;
      row[r] = addr ? reinterpret_cast<const char*>(addr) + ci.begin * T::size : nullptr;
    }

    if (ci.flags & kFlagAligned) {
      // Thread t owns elements [o, o + E) with o = t * E + k * kStep: one vector per row.
      for (int o = threadIdx.x * E; o < ci.len; o += kStep) {
        A x[R][E];
        if (o + E <= ci.len) {
#pragma unroll
          for (int r = 0; r < R; ++r) {
            if (row[r]) {
              load_vec<T, A, E, true>(row[r] + int64_t(o) * T::size, x[r]);
            } else {
#pragma unroll
              for (int e = 0; e < E; ++e) x[r][e] = A(0);
            }
          }
        } else {  // the last, partial vector of the chunk
#pragma unroll
          for (int r = 0; r < R; ++r)
#pragma unroll
            for (int e = 0; e < E; ++e)
              x[r][e] = (row[r] && o + e < ci.len) ? load_scalar<T, A, true>(row[r] + int64_t(o + e) * T::size)
                                                   : A(0);
        }
        add_pairs<KT, TILED, MASKED>(acc, x, row);
      }
    } else {
      // Unaligned views: coalesced scalar loads, element base + e * kThreads + t.
      for (int base = 0; base < ci.len; base += kStep) {
        A x[R][E];
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
          for (int e = 0; e < E; ++e) {
            const int idx = base + e * kThreads + threadIdx.x;
            x[r][e] = (row[r] && idx < ci.len) ? load_scalar<T, A, true>(row[r] + int64_t(idx) * T::size) : A(0);
          }
        add_pairs<KT, TILED, MASKED>(acc, x, row);
      }
    }
  }

  // Block reduction in a fixed order: warp butterfly, then warps summed in index order.
  __shared__ A red[kThreads / 32][NP];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
#pragma unroll
  for (int q = 0; q < NP; ++q) {
    const A v = warp_sum(acc[q]);
    if (lane == 0) red[warp][q] = v;
  }
  __syncthreads();
  A* out = partials + (size_t(blockIdx.x) * slots + slot0 + blockIdx.y) * NP;
  for (int q = threadIdx.x; q < NP; q += kThreads) {
    A s = A(0);
#pragma unroll
    for (int w = 0; w < kThreads / 32; ++w) s += red[w][q];
    out[q] = s;
  }
}

constexpr int kFinalThreads = 128;

// One block per (pair q, tile pair tp): sums partials[tp][0..blocks)[q] in a fixed order.
template <typename A>
__global__ void __launch_bounds__(kFinalThreads)
    gram_finalize_kernel(const A* __restrict__ partials, int blocks, int pairs, int kt, int tiled, int tiles,
                         int64_t K, A* __restrict__ G) {
  const int q = blockIdx.x;
  const int tp = blockIdx.y;
  int64_t i, j;
  if (tiled) {
    int ta, tb;
    decode_tile_pair(tp, tiles, ta, tb);
    const int r = q / kCrossTile, s = q % kCrossTile;
    if (ta == tb && r > s) return;  // the lower half of a diagonal tile repeats the upper half
    i = int64_t(ta) * kCrossTile + r;
    j = int64_t(tb) * kCrossTile + s;
  } else {
    int t = q, r = 0;
    while (t >= kt - r) {
      t -= kt - r;
      ++r;
    }
    i = r;
    j = r + t;
  }
  if (i >= K || j >= K) return;  // padding rows (uniform across the block)

  const A* src = partials + size_t(tp) * blocks * pairs + q;
  A s = A(0);
  for (int b = threadIdx.x; b < blocks; b += kFinalThreads) s += src[size_t(b) * pairs];
  __shared__ A red[kFinalThreads / 32];
  s = warp_sum(s);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    A total = A(0);
#pragma unroll
    for (int w = 0; w < kFinalThreads / 32; ++w) total += red[w];
    G[i * K + j] = total;
    G[j * K + i] = total;
  }
}

// Instantiated symmetric sizes; K is rounded up to the next one.
int sym_kt(int64_t K) {
  if (K <= 8) return int(K);
  if (K <= 10) return 10;
  if (K <= 12) return 12;
  return 16;
}

template <int V>
using IntC = std::integral_constant<int, V>;

// Largest symmetric pass per element type: 136 double accumulators would not fit the register file.
template <typename T>
constexpr int max_sym_tasks() { return T::size == 8 ? 12 : kMaxSymTasks; }

// Calls f(IntC<KT>{}, std::bool_constant<TILED>{}) for the kernel variant of a plan.
template <typename T, typename F>
decltype(auto) dispatch_variant(const GramPlan& plan, F&& f) {
  if (plan.tiled || plan.kt > max_sym_tasks<T>()) return f(IntC<kCrossTile>{}, std::true_type{});
  switch (plan.kt) {
    case 1: return f(IntC<1>{}, std::false_type{});
    case 2: return f(IntC<2>{}, std::false_type{});
    case 3: return f(IntC<3>{}, std::false_type{});
    case 4: return f(IntC<4>{}, std::false_type{});
    case 5: return f(IntC<5>{}, std::false_type{});
    case 6: return f(IntC<6>{}, std::false_type{});
    case 7: return f(IntC<7>{}, std::false_type{});
    case 8: return f(IntC<8>{}, std::false_type{});
    case 10: return f(IntC<10>{}, std::false_type{});
    case 12: return f(IntC<12>{}, std::false_type{});
    default:
      if constexpr (max_sym_tasks<T>() >= 16) return f(IntC<16>{}, std::false_type{});
      else return f(IntC<kCrossTile>{}, std::true_type{});
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

// Resident blocks per multiprocessor of one (plain) kernel (queried once per instantiation).
template <typename T, int KT, bool TILED>
int partials_occupancy() {
  static const int occ = [] {
    int n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, gram_partials_kernel<T, KT, TILED, false>, kThreads, 0) !=
        cudaSuccess) {
      (void)cudaGetLastError();
      n = 1;
    }
    return n > 0 ? n : 1;
  }();
  return occ;
}

}  // namespace

GramPlan gramian_plan(DType dtype, int64_t K, int64_t C, int device, bool missing) {
  GramPlan plan{};
  plan.masked = missing;
  const int64_t max_sym = dtype == kFloat64 ? max_sym_tasks<F64>() : kMaxSymTasks;
  if (K <= max_sym) {
    plan.kt = sym_kt(K);
    plan.tiled = false;
    plan.tiles = 1;
    plan.tile_pairs = 1;
    plan.pairs = plan.kt * (plan.kt + 1) / 2;
  } else {
    plan.kt = kCrossTile;
    plan.tiled = true;
    plan.tiles = int(ceil_div(K, kCrossTile));
    plan.tile_pairs = plan.tiles * (plan.tiles + 1) / 2;
    plan.pairs = kCrossTile * kCrossTile;
  }
  const int occ = dispatch_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    return dispatch_variant<T>(plan, [&](auto kt, auto tiled) {
      return partials_occupancy<T, decltype(kt)::value, decltype(tiled)::value>();
    });
  });
  const int64_t wave = int64_t(device_sm_count(device)) * occ;
  const int64_t per_pair = std::max<int64_t>(1, wave / plan.tile_pairs);
  plan.blocks = int(std::max<int64_t>(1, std::min<int64_t>({per_pair, C, 65535})));
  return plan;
}

cudaError_t gramian_launch(const GramPlan& plan, DType dtype, TableArgs args, void* partials, void* G,
                           cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    using A = typename T::acc;
    return dispatch_variant<T>(plan, [&](auto kt, auto tiled) {
      constexpr int KT = decltype(kt)::value;
      constexpr bool TILED = decltype(tiled)::value;
      const dim3 grid(plan.tile_pairs, plan.blocks);
      const int slots = plan.slots();
      gram_partials_kernel<T, KT, TILED, false>
          <<<grid, kThreads, 0, stream>>>(args, plan.tiles, slots, 0, static_cast<A*>(partials));
      cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) return err;
      if (plan.masked) {
        gram_partials_kernel<T, KT, TILED, true>
            <<<grid, kThreads, 0, stream>>>(args, plan.tiles, slots, plan.blocks, static_cast<A*>(partials));
        err = cudaGetLastError();
        if (err != cudaSuccess) return err;
      }
      const dim3 fgrid(plan.pairs, plan.tile_pairs);
      gram_finalize_kernel<A><<<fgrid, kFinalThreads, 0, stream>>>(static_cast<const A*>(partials), slots,
                                                                   plan.pairs, plan.kt, plan.tiled ? 1 : 0,
                                                                   plan.tiles, args.K, static_cast<A*>(G));
      return cudaGetLastError();
    });
  });
}

}  // namespace fastmtl
