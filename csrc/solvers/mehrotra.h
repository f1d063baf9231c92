// Mehrotra primal-dual interior point for min ½xᵀQx + cᵀx over the orthant (x ≥ 0) or the simplex
// (x ≥ 0, 1ᵀx = 1), followed by the support polish: a transcription of
// fastmtl/solvers/interior_point.py (mehrotra_qp, newton_direction, support_polish) with the same
// starting point, step rules, safeguards and fixed iteration count. See that file for the method.
#pragma once

#include "common.h"

namespace fastmtl {
namespace solvers {

// Workspace of one QP of size K (or of kLanes QPs in lockstep, S = Lanes): 11 K-vectors, the Newton
// / KKT matrix ((K + 1)², also used by the polish), its right-hand side, scalar slots and the
// support indices.
template <class S>
struct QpWorkT {
  S *z, *rd, *dxa, *dza, *dx, *dz, *h, *m1, *rc, *xinv, *dinv, *M, *rhs, *sc;
  int* idx;
  static FMTL_INL int count(int K) { return 11 * K + (K + 1) * (K + 1) + (K + 1) + 8 + K; }  // in S
  static FMTL_INL int doubles(int K) { return count(K) * int(sizeof(S) / sizeof(double)); }
  FMTL_INL QpWorkT(S* w, int K) {
    z = w;
    rd = z + K;
    dxa = rd + K;
    dza = dxa + K;
    dx = dza + K;
    dz = dx + K;
    h = dz + K;
    m1 = h + K;
    rc = m1 + K;
    xinv = rc + K;
    dinv = xinv + K;
    M = dinv + K;
    rhs = M + (K + 1) * (K + 1);
    sc = rhs + K + 1;
    idx = reinterpret_cast<int*>(sc + 8);  // K ints in K slots of room
  }
};
using QpWork = QpWorkT<double>;

// Scalar slots of QpWork::sc.
enum QpSlot { kSum = 0, kStatus = 1, kY = 2, kRp = 3, kMu = 4, kTarget = 5, kAlpha = 6, kValid = 7 };

FMTL_INL double qp_objective(const double* Q, int ldq, const double* c, const double* x, int K) {
  double cx = 0.0;
  for (int i = 0; i < K; ++i) cx += c[i] * x[i];
  return 0.5 * quad_form_solo(Q, ldq, x, K) + cx;
}

// out_i = (Q x)_i + c_i.
template <class T>
FMTL_INL void qx_plus_c(const T& t, const double* Q, int ldq, const double* x, const double* c, double* out, int K) {
  FMTL_FOR(t, i, K) {
    const double* q = Q + i * ldq;
    double s = 0.0;
    for (int j = 0; j < K; ++j) s += q[j] * x[j];
    out[i] = s + c[i];
  }
}

// Crossover step: solve the KKT system on S = {x_i > z_i}; keep it when it is feasible and not
// worse than the iterate (renormalised onto the simplex there). Result written into x.
template <class T>
FMTL_INL void support_polish(const T& t, const double* Q, int ldq, const double* c, double* x, int K, bool simplex,
                             QpWork& W) {
  double* x_it = W.dx;
  double* xp = W.dz;
  t.sync();
  if (t.rank() == 0) {
    int m = 0;
    for (int i = 0; i < K; ++i)
      if (x[i] > W.z[i]) W.idx[m++] = i;
    double total = 0.0;
    if (simplex) {
      for (int i = 0; i < K; ++i) total += x[i];
    }
    for (int i = 0; i < K; ++i) x_it[i] = simplex ? x[i] / total : x[i];
    const int n = support_system(Q, ldq, W.idx, m, simplex, 0.0, W.M, K + 1);
    for (int a = 0; a < m; ++a) W.rhs[a] = -c[W.idx[a]];
    if (simplex) W.rhs[m] = 1.0;
    W.sc[kRp] = double(m);
    W.sc[kMu] = double(n);
  }
  t.sync();
  const int m = int(W.sc[kRp]);
  const int n = int(W.sc[kMu]);
  const int status = lu_solve(t, W.M, n, K + 1, W.rhs, 1, W.sc + kStatus);
  if (t.rank() == 0) {
    for (int i = 0; i < K; ++i) xp[i] = 0.0;
    for (int a = 0; a < m; ++a) xp[W.idx[a]] = W.rhs[a];
    bool ok = status == 0;
    double amax = 0.0;
    for (int i = 0; i < K && ok; ++i) {
      if (!finite(xp[i])) ok = false;
      const double v = fabs_(xp[i]);
      if (v > amax) amax = v;
    }
    if (ok) {
      const double tol = 1e-12 * clamp_min(amax, 1.0);
      for (int i = 0; i < K; ++i)
        if (!(xp[i] >= -tol)) ok = false;
    }
    if (ok) {
      for (int i = 0; i < K; ++i) xp[i] = clamp_min(xp[i], 0.0);
      if (simplex) {
        double total = 0.0;
        for (int i = 0; i < K; ++i) total += xp[i];
        if (total > 0.0) {
          for (int i = 0; i < K; ++i) xp[i] = xp[i] / total;
        } else {
          ok = false;
        }
      }
    }
    const bool take = ok && qp_objective(Q, ldq, c, xp, K) <= qp_objective(Q, ldq, c, x_it, K);
    for (int i = 0; i < K; ++i) x[i] = take ? xp[i] : x_it[i];
  }
  t.sync();
}

// The interior-point iterations (no polish): x and W.z hold the final iterate. Q is read only and
// may be shared by several teams; c and x are per problem (per lane for S = Lanes).
template <class T, class S>
FMTL_INL void mehrotra_iterate(const T& t, const double* Q, int ldq, const S* c, int K, bool simplex, int iterations,
                               S* x, QpWorkT<S>& W) {
  using M = decltype(S{} < 0.0);
  const double floor = kSqrtTiny;     // keeps x, z > 0 so that z/x and r_c/x stay finite
  const double delta = 1e3 * kEps;    // shift that keeps M numerically positive definite
  const double mu_min = (10.0 * kEps) * (10.0 * kEps);
  const double invK = 1.0 / double(K);

  S y = splat<S>(0.0);
  t.sync();
  FMTL_FOR(t, i, K) x[i] = splat<S>(simplex ? invK : 1.0);
  t.sync();
  FMTL_FOR(t, i, K) {
    const double* q = Q + i * ldq;
    S s = splat<S>(0.0);
    for (int j = 0; j < K; ++j) s += q[j] * x[j];
    W.rd[i] = s + c[i];  // g = Qx + c
  }
  t.sync();
  if (simplex) {
    if (t.rank() == 0) {
      S g_min = W.rd[0];
      M saw_nan = M{};
      for (int i = 0; i < K; ++i) {
        saw_nan = saw_nan | is_nan(W.rd[i]);
        g_min = sel(W.rd[i] < g_min, W.rd[i], g_min);
      }
      W.sc[kY] = sel(saw_nan, splat<S>(nan()), g_min) - invK;
    }
    t.sync();
    y = W.sc[kY];
    FMTL_FOR(t, i, K) W.z[i] = W.rd[i] - y;
  } else {
    FMTL_FOR(t, i, K) W.z[i] = clamp_min(W.rd[i], 0.0) + 1.0;
  }

  for (int it = 0; it < iterations; ++it) {
    t.sync();
    // Residuals and the Newton matrix M = Q + diag(z/x) + δI (lower triangle).
    FMTL_FOR(t, i, K) {
      const double* q = Q + i * ldq;
      S s = splat<S>(0.0);
      for (int j = 0; j < K; ++j) s += q[j] * x[j];
      S r = s + c[i] - W.z[i];
      if (simplex) r = r - y;
      W.rd[i] = r;
      // Divisions by x are multiplications by 1/x (within an ulp of the reference's quotients).
      const S xi = 1.0 / x[i];
      W.xinv[i] = xi;
      S* mrow = W.M + i * K;
      for (int j = 0; j < i; ++j) mrow[j] = splat<S>(q[j]);
      mrow[i] = (q[i] + W.z[i] * xi) + delta;
    }
    if (t.rank() == 0) {
      S sx = splat<S>(0.0), sxz = splat<S>(0.0);
      for (int i = 0; i < K; ++i) sx += x[i];
      for (int i = 0; i < K; ++i) sxz += x[i] * W.z[i];
      W.sc[kRp] = sx - 1.0;
      W.sc[kMu] = sxz / double(K);
    }
    t.sync();
    const S r_p = W.sc[kRp];
    const S mu = W.sc[kMu];
    const M ok = cholesky(t, W.M, K, K, W.dinv, W.sc + kStatus) == 0.0;

    // Predictor (affine scaling); on the simplex M⁻¹1 too.
    FMTL_FOR(t, i, K) {
      const S rca = -x[i] * W.z[i];
      W.h[i] = -W.rd[i] + rca * W.xinv[i];
      if (simplex) W.m1[i] = splat<S>(1.0);
    }
    cholesky_solve(t, W.M, W.dinv, K, K, W.h);
    S sum_m1 = splat<S>(0.0), dy_a = splat<S>(0.0);
    if (simplex) {
      cholesky_solve(t, W.M, W.dinv, K, K, W.m1);
      sum_m1 = team_sum(t, W.m1, K, W.sc + kSum);
      const S sum_mh = team_sum(t, W.h, K, W.sc + kSum);
      dy_a = (-r_p - sum_mh) / sum_m1;
    }
    FMTL_FOR(t, i, K) {
      const S dxa = simplex ? W.h[i] + W.m1[i] * dy_a : W.h[i];
      W.dxa[i] = dxa;
      W.dza[i] = (-x[i] * W.z[i] - W.z[i] * dxa) * W.xinv[i];
    }
    t.sync();
    if (t.rank() == 0) {
      S a_a = clamp_max(minimum(max_step(x, W.dxa, K), max_step(W.z, W.dza, K)), 1.0);
      a_a = sel(is_nan(a_a), splat<S>(0.0), a_a);
      S s = splat<S>(0.0);
      for (int i = 0; i < K; ++i) s += (x[i] + a_a * W.dxa[i]) * (W.z[i] + a_a * W.dza[i]);
      const S mu_a = s / double(K);
      S ratio = clamp_max(clamp_min(mu_a / mu, 0.0), 1.0);
      ratio = sel(is_nan(ratio), splat<S>(1.0), ratio);
      const S sigma = ratio * ratio * ratio;
      W.sc[kTarget] = clamp_min(sigma * mu, mu_min);
    }
    t.sync();
    const S target = W.sc[kTarget];

    // Corrector with the second-order term and the centring target.
    FMTL_FOR(t, i, K) {
      const S rc = (-x[i] * W.z[i] - nan_to_num(W.dxa[i] * W.dza[i])) + target;
      W.rc[i] = rc;
      W.h[i] = -W.rd[i] + rc * W.xinv[i];
    }
    cholesky_solve(t, W.M, W.dinv, K, K, W.h);
    S dy = splat<S>(0.0);
    if (simplex) {
      const S sum_mh = team_sum(t, W.h, K, W.sc + kSum);
      dy = (-r_p - sum_mh) / sum_m1;
    }
    FMTL_FOR(t, i, K) {
      const S dx = simplex ? W.h[i] + W.m1[i] * dy : W.h[i];
      W.dx[i] = dx;
      W.dz[i] = (W.rc[i] - W.z[i] * dx) * W.xinv[i];
    }
    t.sync();
    if (t.rank() == 0) {
      // A failed factorisation or a non-finite step: step length 0 (the iterate is only clamped).
      const S alpha = clamp_max(0.99 * minimum(max_step(x, W.dx, K), max_step(W.z, W.dz, K)), 1.0);
      M valid = ok & finite(alpha);
      if (simplex) valid = valid & finite(dy);
      for (int i = 0; i < K; ++i) valid = valid & finite(W.dx[i]) & finite(W.dz[i]);
      W.sc[kAlpha] = sel(valid, alpha, splat<S>(0.0));
      W.sc[kValid] = sel(valid, splat<S>(1.0), splat<S>(0.0));
    }
    t.sync();
    const S alpha = W.sc[kAlpha];
    const M valid = W.sc[kValid] != 0.0;
    const S zero = splat<S>(0.0);
    FMTL_FOR(t, i, K) {
      x[i] = clamp_min(x[i] + alpha * sel(valid, W.dx[i], zero), floor);
      W.z[i] = clamp_min(W.z[i] + alpha * sel(valid, W.dz[i], zero), floor);
    }
    if (simplex) y = y + alpha * sel(valid, dy, zero);
  }
  t.sync();
}

// The interior-point iterations and the polish; the solution is written into x. Q and c are read
// only; Q may be shared by several teams.
template <class T>
FMTL_INL void mehrotra_qp(const T& t, const double* Q, int ldq, const double* c, int K, bool simplex, int iterations,
                          double* x, double* work) {
  QpWork W(work, K);
  mehrotra_iterate(t, Q, ldq, c, K, simplex, iterations, x, W);
  support_polish(t, Q, ldq, c, x, K, simplex, W);
}

}  // namespace solvers
}  // namespace fastmtl
