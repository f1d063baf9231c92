// IMTL-G's and Aligned-MTL's weights from one eigen-decomposition: a transcription of
// fastmtl/solvers/eigen_weights.py. The fixed-sweep Jacobi of jacobi.h (the same sweeps and
// rotations as solver_eigh) gives sym(G) = V Λ Vᵀ (ascending, eigenvectors in the columns of V).
// Eigenvalues with λ_j > max(λ_max, 0)·K·eps are kept (eps: that of the dtype G was computed in);
// they are a suffix of the ascending order, `rank` of them. Then
//   IMTL-G:      n_i = sqrt(max(G_ii, 0)), v = V Λ⁺ Vᵀ n, λ = v / Σv, or 0 where |Σv| ≤ 1e-12·Σ|v|;
//   Aligned-MTL: λ = σ·V Λ_r^{-1/2} Vᵀ 1 with σ² the least kept eigenvalue ("min"), the lower
//                median of the kept ones ("median") or their mean ("rmse"); λ = 1 at rank 0.
// Products are summed in index order by one thread each (Vᵀx by columns, V y by rows), the scalar
// reductions by rank 0, so the result does not depend on the team size. A G with a NaN or ±Inf
// entry gives NaN λ (Jacobi's NaN eigenvalues sort last, so λ_max tells).
#pragma once

#include "jacobi.h"

namespace fastmtl {
namespace solvers {

enum EigenWeightsKind : int { kImtlG = 0, kAlignedMin = 1, kAlignedMedian = 2, kAlignedRmse = 3 };

struct EigenWeightsLayout {
  int K;
  FMTL_INL int evals() const { return 0; }
  FMTL_INL int evecs() const { return K; }
  FMTL_INL int rhs() const { return K + K * K; }  // n (IMTL-G), then V·y
  FMTL_INL int y() const { return rhs() + K; }    // diag(d)·Vᵀ rhs
  FMTL_INL int slot() const { return y() + K; }   // 2
  FMTL_INL int jacobi() const { return slot() + 2; }
  FMTL_INL int doubles() const { return jacobi() + JacobiLayout{K}.doubles(); }
};

// out = V diag(d) Vᵀ x with d_j = keep_j ? f(λ_j) : 0 (f = 1/λ, or 1/sqrt(λ) when `rsqrt`), `y` scratch.
// `out` may alias `x`.
template <class B>
FMTL_INL void eigen_apply(const B& t, const double* w, const double* V, int K, double cutoff, bool rsqrt,
                          const double* x, double* y, double* out) {
  FMTL_FOR(t, j, K) {
    double s = 0.0;
    for (int i = 0; i < K; ++i) s += V[i * K + j] * x[i];
    const double e = w[j];
    const double d = e > cutoff ? (rsqrt ? 1.0 / sqrt_(e) : 1.0 / e) : 0.0;
    y[j] = d * s;
  }
  t.sync();
  FMTL_FOR(t, i, K) {
    const double* v = V + i * K;
    double s = 0.0;
    for (int j = 0; j < K; ++j) s += v[j] * y[j];
    out[i] = s;
  }
  t.sync();
}

// σ² of Aligned-MTL from the ascending eigenvalues `w` whose top `rank` are kept (rank > 0).
FMTL_INL double aligned_scale2(const double* w, int K, int rank, int kind) {
  if (kind == kAlignedMin) return w[K - rank];
  if (kind == kAlignedMedian) return w[(K - rank) + (rank - 1) / 2];  // torch.median's lower middle
  double s = 0.0;
  for (int j = K - rank; j < K; ++j) s += w[j];
  return s / double(rank);
}

// One solve: G (K x K, read as float64 after symmetrisation) -> λ (K).
template <class B, class S, class Tin>
FMTL_INL void eigen_weights_solve(const Ctx<B, S>& c, const Tin* G, int K, int sweeps, double eps, int kind,
                                  double* lam, double* ws) {
  const EigenWeightsLayout L{K};
  const B& t = c.block;
  double* w = ws + L.evals();
  double* V = ws + L.evecs();
  double* rhs = ws + L.rhs();
  double* y = ws + L.y();
  double* slot = ws + L.slot();
  jacobi_solve(c, G, K, sweeps, w, V, ws + L.jacobi());  // ends with a sync
  const double top = w[K - 1];
  if (is_nan(top)) {
    fill_nan(t, lam, K);
    return;
  }
  const double cutoff = clamp_min(top, 0.0) * double(K) * eps;
  if (kind == kImtlG) {
    FMTL_FOR(t, i, K) {
      const double gii = double(G[i * K + i]);
      rhs[i] = sqrt_(clamp_min(0.5 * (gii + gii), 0.0));
    }
    t.sync();
    eigen_apply(t, w, V, K, cutoff, false, rhs, y, rhs);
    if (t.rank() == 0) {
      double s = 0.0, a = 0.0;
      for (int i = 0; i < K; ++i) {
        s += rhs[i];
        a += fabs_(rhs[i]);
      }
      slot[0] = s;
      slot[1] = a;
    }
    t.sync();
    const double total = slot[0];
    const bool ok = fabs_(total) > 1e-12 * slot[1];
    FMTL_FOR(t, i, K) lam[i] = ok ? rhs[i] / total : 0.0;
    t.sync();
    return;
  }
  int rank = 0;
  for (int j = 0; j < K; ++j) rank += w[j] > cutoff ? 1 : 0;
  if (rank == 0) {
    FMTL_FOR(t, i, K) lam[i] = 1.0;
    t.sync();
    return;
  }
  const double sigma = sqrt_(aligned_scale2(w, K, rank, kind));
  FMTL_FOR(t, i, K) rhs[i] = 1.0;
  t.sync();
  eigen_apply(t, w, V, K, cutoff, true, rhs, y, rhs);
  FMTL_FOR(t, i, K) lam[i] = sigma * rhs[i];
  t.sync();
}

}  // namespace solvers
}  // namespace fastmtl
