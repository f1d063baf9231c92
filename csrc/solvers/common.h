// Shared pieces of the K x K solvers: host/device qualifiers, teams of threads, IEEE helpers with
// PyTorch's NaN semantics, and the small dense linear algebra (Cholesky, LU with partial pivoting).
//
// Header-only and free of torch and CUDA runtime headers: the same templates compile for the host
// (csrc/solver_ops.cpp) and for the device (csrc/solver_kernels.cu), and a plain C++ compiler can
// build them alone (tests/solver_team_check.cpp emulates a CUDA block with std::thread).
//
// Teams. Every routine takes a team `t`: t.rank() in [0, t.size()) and t.sync(), a barrier of the
// team. Loops over independent elements are split across ranks (FMTL_FOR); reductions are done by
// rank 0 in index order and broadcast through a workspace slot, so results do not depend on the
// team size (bitwise) and are the same on the host (a team of one) as on the device.
// Hazards: every rank of a team must reach every t.sync() (branches that contain syncs depend only
// on broadcast values); a value written by one rank is read by another only after a sync.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FMTL_HD __host__ __device__
#define FMTL_INL __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Always inlined on the host: a caller compiled for a wider vector ISA (see solver_ops.cpp's
// target clones) must get these bodies compiled for that ISA, not calls into baseline code.
#define FMTL_HD
#define FMTL_INL inline __attribute__((always_inline))
#else
#define FMTL_HD
#define FMTL_INL inline
#endif

namespace fastmtl {
namespace solvers {

// Largest K of the compiled solvers (fastmtl.solvers.compiled.MAX_K mirrors it).
constexpr int kMaxK = 64;

// A team of one thread: the host, or one device thread working alone.
struct Solo {
  FMTL_INL int rank() const { return 0; }
  FMTL_INL int size() const { return 1; }
  FMTL_INL void sync() const {}
};

#if defined(__CUDACC__)
// Every thread of the block. (The host versions exist only so that host-device templates
// instantiated with these teams compile; they are never called.)
struct BlockTeam {
  FMTL_INL int rank() const {
#if defined(__CUDA_ARCH__)
    return int(threadIdx.x);
#else
    return 0;
#endif
  }
  FMTL_INL int size() const {
#if defined(__CUDA_ARCH__)
    return int(blockDim.x);
#else
    return 1;
#endif
  }
  FMTL_INL void sync() const {
#if defined(__CUDA_ARCH__)
    __syncthreads();
#endif
  }
};
// The 32 lanes of one warp (blockDim.x must be a multiple of 32).
struct WarpTeam {
  FMTL_INL int rank() const {
#if defined(__CUDA_ARCH__)
    return int(threadIdx.x & 31);
#else
    return 0;
#endif
  }
  FMTL_INL int size() const { return 32; }
  FMTL_INL void sync() const {
#if defined(__CUDA_ARCH__)
    __syncwarp();
#endif
  }
};
#endif

#define FMTL_FOR(t, i, n) for (int i = (t).rank(); i < (n); i += (t).size())

// ---- scalar helpers with PyTorch's semantics ------------------------------------------------------

constexpr double kEps = 2.220446049250313e-16;      // torch.finfo(float64).eps
constexpr double kTiny = 2.2250738585072014e-308;   // torch.finfo(float64).tiny
constexpr double kSqrtTiny = 1.4916681462400413e-154;  // math.sqrt(kTiny)
constexpr double kMaxDouble = 1.7976931348623157e308;

FMTL_INL bool is_nan(double x) { return x != x; }
FMTL_INL bool finite(double x) { return x - x == 0.0; }  // false for NaN and +-Inf
#if defined(__CUDA_ARCH__)
FMTL_INL double inf() { return __longlong_as_double(0x7ff0000000000000LL); }
FMTL_INL double nan() { return __longlong_as_double(0x7ff8000000000000LL); }
#else
FMTL_INL double inf() { return __builtin_huge_val(); }
FMTL_INL double nan() { return __builtin_nan(""); }
#endif
// torch.clamp(x, min=lo) / (x, max=hi): NaN stays NaN.
FMTL_INL double clamp_min(double x, double lo) { return x < lo ? lo : x; }
FMTL_INL double clamp_max(double x, double hi) { return x > hi ? hi : x; }
// torch.minimum: NaN if either is NaN.
FMTL_INL double minimum(double a, double b) { return (is_nan(a) || is_nan(b)) ? nan() : (b < a ? b : a); }
// torch.nan_to_num(x, nan=v): NaN -> v, +-Inf -> +-max.
FMTL_INL double nan_to_num(double x, double v = 0.0) {
  if (is_nan(x)) return v;
  if (x == inf()) return kMaxDouble;
  if (x == -inf()) return -kMaxDouble;
  return x;
}
#if defined(__CUDA_ARCH__)
FMTL_INL double sqrt_(double x) { return ::sqrt(x); }
FMTL_INL double log_(double x) { return ::log(x); }
FMTL_INL double fabs_(double x) { return ::fabs(x); }
FMTL_INL double copysign_(double x, double s) { return ::copysign(x, s); }
#else
FMTL_INL double sqrt_(double x) { return __builtin_sqrt(x); }
FMTL_INL double log_(double x) { return __builtin_log(x); }
FMTL_INL double fabs_(double x) { return __builtin_fabs(x); }
FMTL_INL double copysign_(double x, double s) { return __builtin_copysign(x, s); }
#endif

// ---- host SIMD lanes ------------------------------------------------------------------------------
// On the host, independent sub-problems of one size (UPGrad's K QPs) run in lockstep, one per lane
// of a GCC vector (the same arithmetic, element by element, as the scalar code: results are bitwise
// equal as long as the compiler does not contract a*b + c, see setup.py). The device runs the
// scalar code, one sub-problem per team. Generic code is written for S = double or S = Lanes with
// masks M = decltype(S{} < 0.0) (bool, or a vector of 0 / -1) and sel() in place of branches.
FMTL_INL double sel(bool m, double a, double b) { return m ? a : b; }
FMTL_INL bool mask_not(bool m) { return !m; }
template <class S>
FMTL_INL S splat(double v) {
  return v;
}

#if !defined(__CUDACC__) && defined(__GNUC__)
#define FMTL_HOST_LANES 1
constexpr int kLanes = 8;
// Hazard: Lanes arrays must be aligned to sizeof(Lanes) (the compiler uses aligned vector moves).
typedef double Lanes __attribute__((vector_size(kLanes * sizeof(double))));
using LaneMask = decltype(Lanes{} < 0.0);  // a vector of 0 / -1 (64-bit integers)
template <>
FMTL_INL Lanes splat<Lanes>(double v) {
  Lanes r = {};
  return r + v;
}
FMTL_INL Lanes sel(LaneMask m, Lanes a, Lanes b) { return m ? a : b; }
FMTL_INL LaneMask mask_not(LaneMask m) { return ~m; }
FMTL_INL LaneMask is_nan(Lanes x) { return x != x; }
FMTL_INL LaneMask finite(Lanes x) { return (x - x) == 0.0; }
FMTL_INL Lanes clamp_min(Lanes x, double lo) { return sel(x < lo, splat<Lanes>(lo), x); }
FMTL_INL Lanes clamp_max(Lanes x, double hi) { return sel(x > hi, splat<Lanes>(hi), x); }
FMTL_INL Lanes minimum(Lanes a, Lanes b) { return sel(is_nan(a) | is_nan(b), splat<Lanes>(nan()), sel(b < a, b, a)); }
FMTL_INL Lanes nan_to_num(Lanes x, double v = 0.0) {
  Lanes r = sel(x == inf(), splat<Lanes>(kMaxDouble), x);
  r = sel(x == -inf(), splat<Lanes>(-kMaxDouble), r);
  return sel(is_nan(x), splat<Lanes>(v), r);
}
FMTL_INL Lanes sqrt_(Lanes x) {
  Lanes r;
  for (int i = 0; i < kLanes; ++i) r[i] = __builtin_sqrt(x[i]);
  return r;
}
#endif

// ---- team reductions (rank 0 in index order, broadcast through `slot`) ----------------------------
// Each begins with a sync (the inputs are complete, and every rank has read the previous use of the
// slot) and ends with one (the result is visible).

template <class T, class S>
FMTL_INL S team_sum(const T& t, const S* x, int n, S* slot) {
  t.sync();
  if (t.rank() == 0) {
    S s = splat<S>(0.0);
    for (int i = 0; i < n; ++i) s += x[i];
    *slot = s;
  }
  t.sync();
  return *slot;
}

template <class T, class S>
FMTL_INL S team_dot(const T& t, const S* x, const S* y, int n, S* slot) {
  t.sync();
  if (t.rank() == 0) {
    S s = splat<S>(0.0);
    for (int i = 0; i < n; ++i) s += x[i] * y[i];
    *slot = s;
  }
  t.sync();
  return *slot;
}

// amin over i of (dv_i < 0 ? -v_i / dv_i : inf), NaN-propagating (fastmtl.solvers' max_step).
template <class S>
FMTL_INL S max_step(const S* v, const S* dv, int n) {
  using M = decltype(S{} < 0.0);
  S m = splat<S>(inf());
  M saw_nan = M{};
  for (int i = 0; i < n; ++i) {
    const S r = sel(dv[i] < 0.0, -v[i] / dv[i], splat<S>(inf()));
    saw_nan = saw_nan | is_nan(r);
    m = sel(r < m, r, m);
  }
  return sel(saw_nan, splat<S>(nan()), m);
}

// y = A x for a row-major n x n block with leading dimension ld (each row summed in index order).
template <class T>
FMTL_INL void matvec(const T& t, const double* A, int ld, const double* x, double* y, int n) {
  FMTL_FOR(t, i, n) {
    const double* a = A + i * ld;
    double s = 0.0;
    for (int j = 0; j < n; ++j) s += a[j] * x[j];
    y[i] = s;
  }
}

FMTL_INL double quad_form_solo(const double* A, int ld, const double* x, int n) {
  double q = 0.0;
  for (int i = 0; i < n; ++i) {
    const double* a = A + i * ld;
    double s = 0.0;
    for (int j = 0; j < n; ++j) s += a[j] * x[j];
    q += s * x[i];
  }
  return q;
}

// ---- Cholesky ------------------------------------------------------------------------------------
// In place, lower triangle, left-looking by columns: L_jj = sqrt(A_jj − Σ_k L_jk²), then in parallel
// over i > j, L_ij = (A_ij − Σ_{k<j} L_ik L_jk) / L_jj (contiguous row dot products). dinv receives
// 1/L_jj for the solves. Returns 0, or j + 1 for the first column whose pivot is not positive (or
// NaN), like LAPACK's potrf (per lane); the factorisation then goes on with a unit pivot, and the
// caller discards it. `slot` holds the broadcast status.
template <class T, class S>
FMTL_INL S cholesky(const T& t, S* A, int n, int ld, S* dinv, S* slot) {
  S status = splat<S>(0.0);
  for (int j = 0; j < n; ++j) {
    t.sync();
    if (t.rank() == 0) {
      const S* rj = A + j * ld;
      S d = rj[j];
      for (int k = 0; k < j; ++k) d -= rj[k] * rj[k];
      const auto ok = d > 0.0;
      const S l = sqrt_(sel(ok, d, splat<S>(1.0)));
      A[j * ld + j] = l;
      dinv[j] = 1.0 / l;
      status = sel((status == 0.0) & mask_not(ok), splat<S>(double(j + 1)), status);
    }
    t.sync();
    const S inv = dinv[j];
    const S* rj = A + j * ld;
    FMTL_FOR(t, i0, n - j - 1) {
      S* ri = A + (j + 1 + i0) * ld;
      S s = ri[j];
      for (int k = 0; k < j; ++k) s -= ri[k] * rj[k];
      ri[j] = s * inv;
    }
  }
  t.sync();
  if (t.rank() == 0) *slot = status;
  t.sync();
  status = *slot;
  t.sync();  // every rank has read the status before anyone writes the slot again
  return status;
}

// Solves L Lᵀ x = b in place (b overwritten by x), L and dinv from cholesky().
template <class T, class S>
FMTL_INL void cholesky_solve(const T& t, const S* L, const S* dinv, int n, int ld, S* b) {
  for (int j = 0; j < n; ++j) {  // forward: L y = b, by columns
    t.sync();
    const S yj = b[j] * dinv[j];
    t.sync();
    FMTL_FOR(t, i0, n - j - 1) {
      const int i = j + 1 + i0;
      b[i] -= L[i * ld + j] * yj;
    }
    if (t.rank() == 0) b[j] = yj;
  }
  for (int j = n - 1; j >= 0; --j) {  // backward: Lᵀ x = y, by rows of L
    t.sync();
    const S xj = b[j] * dinv[j];
    t.sync();
    const S* rj = L + j * ld;
    FMTL_FOR(t, i, j) b[i] -= rj[i] * xj;
    if (t.rank() == 0) b[j] = xj;
  }
  t.sync();
}

// ---- LU with partial pivoting --------------------------------------------------------------------
// Solves A X = B in place for an n x n row-major A (leading dimension lda) and nrhs right-hand sides
// stored as B[i * nrhs + r]. Pivot: the first row of largest |a| (LAPACK's idamax); returns 0, or
// j + 1 for the first exactly-zero pivot (X is then not computed), like getrf's info.
template <class T>
FMTL_INL int lu_solve(const T& t, double* A, int n, int lda, double* B, int nrhs, double* slot) {
  for (int j = 0; j < n; ++j) {
    t.sync();
    if (t.rank() == 0) {
      int p = j;
      double best = fabs_(A[j * lda + j]);
      for (int i = j + 1; i < n; ++i) {
        const double v = fabs_(A[i * lda + j]);
        if (v > best) {
          best = v;
          p = i;
        }
      }
      if (A[p * lda + j] == 0.0) {
        *slot = double(j + 1);
      } else {
        *slot = 0.0;
        if (p != j) {
          for (int k = 0; k < n; ++k) {
            const double tmp = A[j * lda + k];
            A[j * lda + k] = A[p * lda + k];
            A[p * lda + k] = tmp;
          }
          for (int r = 0; r < nrhs; ++r) {
            const double tmp = B[j * nrhs + r];
            B[j * nrhs + r] = B[p * nrhs + r];
            B[p * nrhs + r] = tmp;
          }
        }
      }
    }
    t.sync();
    const double status = *slot;
    if (status != 0.0) {
      t.sync();
      return int(status);
    }
    const double inv = 1.0 / A[j * lda + j];
    FMTL_FOR(t, i0, n - j - 1) {
      const int i = j + 1 + i0;
      const double l = A[i * lda + j] * inv;
      if (l != 0.0) {
        for (int k = j + 1; k < n; ++k) A[i * lda + k] -= l * A[j * lda + k];
        for (int r = 0; r < nrhs; ++r) B[i * nrhs + r] -= l * B[j * nrhs + r];
      }
    }
  }
  // Back substitution, column by column (the same order for every team size).
  for (int j = n - 1; j >= 0; --j) {
    t.sync();
    if (t.rank() == 0) {
      for (int r = 0; r < nrhs; ++r) B[j * nrhs + r] /= A[j * lda + j];
    }
    t.sync();
    FMTL_FOR(t, i, j) {
      const double a = A[i * lda + j];
      for (int r = 0; r < nrhs; ++r) B[i * nrhs + r] -= a * B[j * nrhs + r];
    }
  }
  t.sync();
  return 0;
}

// Bordered KKT matrix of a support S (sorted indices idx[0..m)) of a K x K matrix Q (leading
// dimension ldq): [[Q_SS, 1], [1ᵀ, 0]] when simplex, else Q_SS; written row-major with leading
// dimension lda. The rows and columns outside S of fastmtl.solvers' full-size system are identity
// rows that decouple exactly (x_i = 0 there), so solving the reduced system is the same algorithm.
FMTL_INL int support_system(const double* Q, int ldq, const int* idx, int m, bool simplex, double ridge,
                            double* A, int lda) {
  for (int a = 0; a < m; ++a) {
    for (int b = 0; b < m; ++b) A[a * lda + b] = Q[idx[a] * ldq + idx[b]];
    if (ridge != 0.0) A[a * lda + a] += ridge;
  }
  if (!simplex) return m;
  for (int a = 0; a < m; ++a) {
    A[a * lda + m] = 1.0;
    A[m * lda + a] = 1.0;
  }
  A[m * lda + m] = 0.0;
  return m + 1;
}

}  // namespace solvers
}  // namespace fastmtl
