// CAGrad's dual, min_{w∈Δ} F(w) = aᵀw + r·sqrt(wᵀĜw): a transcription of fastmtl/solvers/cagrad.py.
// Ĝ = sym(G)/tr(G), a = Ĝ·1/K, r = c·sqrt(mean(a)). K ≤ 10: every support's stationary points
// w₀ + ρw₁ (ρ a root of a quadratic), least F among the feasible ones; K > 10: the log-barrier path
// of cagrad_barrier.h and the same candidates on 2K supports. λ = 1/K + (r/‖g_w‖)·w, or 1/K when
// ‖g_w‖ ≤ sqrt(eps)·sqrt(tr Ĝ).
#pragma once

#include "context.h"

namespace fastmtl {
namespace solvers {

constexpr int kCagradEnumMaxK = 10;  // fastmtl.solvers.cagrad.ENUMERATION_MAX_K

// Workspace of the candidates of one support.
struct CandWork {
  double *A, *B, *w0, *w1, *g0, *g1, *cand, *gc, *sc;
  int* idx;
  static FMTL_INL int doubles(int K) { return (K + 1) * (K + 1) + 2 * (K + 1) + 8 * K + 4 + K; }
  FMTL_INL CandWork(double* w, int K) {
    A = w;
    B = A + (K + 1) * (K + 1);
    w0 = B + 2 * (K + 1);
    w1 = w0 + K;
    g0 = w1 + K;
    g1 = g0 + K;
    cand = g1 + K;  // 3 candidates of K
    gc = cand + 3 * K;
    sc = gc + K;
    idx = reinterpret_cast<int*>(sc + 4);
  }
};

// F(w) = aᵀw + r·sqrt(max(wᵀQw, 0)).
FMTL_INL double cagrad_objective(const double* Q, const double* a, double r, const double* w, int K) {
  double aw = 0.0;
  for (int i = 0; i < K; ++i) aw += a[i] * w[i];
  return aw + r * sqrt_(clamp_min(quad_form_solo(Q, K, w, K), 0.0));
}

// The three candidates {w₀, w₀ + ρ₁w₁, w₀ + ρ₂w₁} of the support W.idx[0..m) for the matrix Q
// (fastmtl.solvers.cagrad._support_candidates): written to W.cand (3 x K, projected onto the simplex,
// zeros when not feasible) and their objectives to F (inf when not feasible).
template <class T>
FMTL_INL void cagrad_candidates(const T& t, const double* Q, const double* a, double r, int K, int m, CandWork& W,
                                double* F) {
  t.sync();
  if (t.rank() == 0) {
    support_system(Q, K, W.idx, m, true, 0.0, W.A, m + 1);
    for (int i = 0; i < m; ++i) {
      W.B[2 * i] = 0.0;
      W.B[2 * i + 1] = -a[W.idx[i]];
    }
    W.B[2 * m] = 1.0;
    W.B[2 * m + 1] = 0.0;
  }
  t.sync();
  const int status = lu_solve(t, W.A, m + 1, m + 1, W.B, 2, W.sc);
  if (status != 0) {
    if (t.rank() == 0) {
      for (int j = 0; j < 3; ++j) {
        F[j] = inf();
        for (int i = 0; i < K; ++i) W.cand[j * K + i] = 0.0;
      }
    }
    t.sync();
    return;
  }
  if (t.rank() == 0) {
    for (int i = 0; i < K; ++i) W.w0[i] = W.w1[i] = 0.0;
    for (int i = 0; i < m; ++i) {
      W.w0[W.idx[i]] = W.B[2 * i];
      W.w1[W.idx[i]] = W.B[2 * i + 1];
    }
  }
  t.sync();
  // Every vector below is zero outside the support, so the products run over it only.
  FMTL_FOR(t, a2, m) {
    const double* q = Q + W.idx[a2] * K;
    double s0 = 0.0, s1 = 0.0;
    for (int b2 = 0; b2 < m; ++b2) {
      s0 += q[W.idx[b2]] * W.w0[W.idx[b2]];
      s1 += q[W.idx[b2]] * W.w1[W.idx[b2]];
    }
    W.g0[a2] = s0;
    W.g1[a2] = s1;
  }
  t.sync();
  if (t.rank() == 0) {
    double c0 = 0.0, c1 = 0.0, c2 = 0.0;
    for (int a2 = 0; a2 < m; ++a2) c0 += W.w0[W.idx[a2]] * W.g0[a2];
    for (int a2 = 0; a2 < m; ++a2) c1 += W.w0[W.idx[a2]] * W.g1[a2];
    for (int a2 = 0; a2 < m; ++a2) c2 += W.w1[W.idx[a2]] * W.g1[a2];
    c1 = 2.0 * c1;
    c2 = c2 - r * r;
    // Cancellation-free roots; non-finite ones are filtered below.
    const double sq = sqrt_(clamp_min(c1 * c1 - 4.0 * c2 * c0, 0.0));
    const double q = -0.5 * (c1 + copysign_(sq, c1));
    const double rho[3] = {0.0, q / c2, c0 / q};
    // Candidates vanish outside the support (exact zeros), so sums and checks run over it only.
    for (int j = 0; j < 3; ++j) {
      double* cd = W.cand + j * K;
      for (int i = 0; i < K; ++i) cd[i] = 0.0;
      double total = 0.0;
      bool ok = true;
      for (int a2 = 0; a2 < m; ++a2) {
        const int i = W.idx[a2];
        cd[i] = W.w0[i] + rho[j] * W.w1[i];
        total += cd[i];
        ok = ok && finite(cd[i]) && cd[i] >= -1e-12;
      }
      ok = ok && fabs_(total - 1.0) <= 1e-6;
      if (ok) {
        double sum = 0.0;
        for (int a2 = 0; a2 < m; ++a2) {
          const int i = W.idx[a2];
          cd[i] = clamp_min(cd[i], 0.0);
          sum += cd[i];
        }
        for (int a2 = 0; a2 < m; ++a2) cd[W.idx[a2]] = cd[W.idx[a2]] / sum;
      } else {
        for (int a2 = 0; a2 < m; ++a2) cd[W.idx[a2]] = 0.0;
      }
      W.sc[1 + j] = ok ? 1.0 : 0.0;
    }
  }
  for (int j = 0; j < 3; ++j) {
    t.sync();
    const double* cd = W.cand + j * K;
    if (W.sc[1 + j] == 0.0) {  // not feasible: F = inf without the product
      if (t.rank() == 0) F[j] = inf();
      continue;
    }
    FMTL_FOR(t, a2, m) {
      const double* q = Q + W.idx[a2] * K;
      double s0 = 0.0;
      for (int b2 = 0; b2 < m; ++b2) s0 += q[W.idx[b2]] * cd[W.idx[b2]];
      W.gc[a2] = s0;
    }
    t.sync();
    if (t.rank() == 0) {
      if (W.sc[1 + j] != 0.0) {
        double aw = 0.0, q = 0.0;
        for (int a2 = 0; a2 < m; ++a2) aw += a[W.idx[a2]] * cd[W.idx[a2]];
        for (int a2 = 0; a2 < m; ++a2) q += W.gc[a2] * cd[W.idx[a2]];
        F[j] = aw + r * sqrt_(clamp_min(q, 0.0));
      } else {
        F[j] = inf();
      }
    }
  }
  t.sync();
}

// Ĝ (in place over Gs), a and r of the problem; returns false for a non-finite G.
template <class B, class Tin>
FMTL_INL bool cagrad_problem(const B& t, const Tin* G, int K, double c, double* Gh, double* a, double* flags,
                             double* slot, double* r) {
  if (!load_symmetric(t, G, K, Gh, flags, slot)) return false;
  trace_normalize(t, Gh, K, slot);
  FMTL_FOR(t, i, K) {
    double s = 0.0;
    for (int j = 0; j < K; ++j) s += Gh[i * K + j];
    a[i] = s / double(K);
  }
  t.sync();
  if (t.rank() == 0) {
    double s = 0.0;
    for (int i = 0; i < K; ++i) s += a[i];
    *slot = c * sqrt_(clamp_min(s / double(K), 0.0));
  }
  t.sync();
  *r = *slot;
  t.sync();
  return true;
}

// λ = 1/K + (r/‖g_w‖)·w, or 1/K where ‖g_w‖ ≤ sqrt(eps)·sqrt(tr Ĝ). Rank 0 only.
FMTL_INL void cagrad_lambda(const double* Gh, double r, const double* w, int K, double* lam) {
  const double s = sqrt_(clamp_min(quad_form_solo(Gh, K, w, K), 0.0));
  double tr = 0.0;
  for (int i = 0; i < K; ++i) tr += Gh[i * K + i];
  const double thresh = 1.4901161193847656e-08 * sqrt_(clamp_min(tr, 0.0));  // sqrt(eps) = 2^-26
  const double ratio = s > thresh ? r / s : 0.0;
  for (int i = 0; i < K; ++i) lam[i] = 1.0 / double(K) + ratio * w[i];
}

// Objectives of the 3 candidates of support s (bit k = task k), one thread, K ≤ 10.
FMTL_INL void cagrad_enum_candidates(const double* Gh, const double* a, double r, int K, unsigned s, double* F,
                                     double* cand_out) {
  double buf[(kCagradEnumMaxK + 1) * (kCagradEnumMaxK + 1) + 2 * (kCagradEnumMaxK + 1) + 9 * kCagradEnumMaxK + 4];
  CandWork W(buf, K);
  int m = 0;
  for (int k = 0; k < K; ++k)
    if (s >> k & 1u) W.idx[m++] = k;
  cagrad_candidates(Solo{}, Gh, a, r, K, m, W, F);
  if (cand_out != nullptr) {
    for (int i = 0; i < 3 * K; ++i) cand_out[i] = W.cand[i];
  }
}

struct CagradEnumLayout {
  int K, nthreads;
  FMTL_INL int gh() const { return 0; }
  FMTL_INL int a() const { return K * K; }
  FMTL_INL int flags() const { return K * K + K; }
  FMTL_INL int slot() const { return K * K + 2 * K; }
  FMTL_INL int cand() const { return slot() + 2; }  // 3 x K
  FMTL_INL int vals() const { return cand() + 3 * K; }
  FMTL_INL int idxs() const { return vals() + nthreads; }
  FMTL_INL int doubles() const { return idxs() + nthreads; }
};

// K ≤ 10: exact enumeration. Writes w and λ.
template <class B, class S, class Tin>
FMTL_INL void cagrad_enum_solve(const Ctx<B, S>& c, const Tin* G, int K, double cc, double* w, double* lam,
                                double* ws) {
  const CagradEnumLayout L{K, c.nthreads};
  double* Gh = ws + L.gh();
  double* a = ws + L.a();
  double r = 0.0;
  if (!cagrad_problem(c.block, G, K, cc, Gh, a, ws + L.flags(), ws + L.slot(), &r)) {
    fill_nan(c.block, w, K);
    fill_nan(c.block, lam, K);
    return;
  }
  const unsigned P = (1u << K) - 1u;
  double best = inf();
  double best_i = double(3u * P);
  bool first = true;
  for (unsigned s = unsigned(c.tid); s < P; s += unsigned(c.nthreads)) {
    double F[3];
    cagrad_enum_candidates(Gh, a, r, K, s + 1u, F, nullptr);
    for (int j = 0; j < 3; ++j) {
      if (first || F[j] < best) {
        best = F[j];
        best_i = double(3u * s + unsigned(j));
        first = false;
      }
    }
  }
  ws[L.vals() + c.tid] = best;
  ws[L.idxs() + c.tid] = best_i;
  const int win = argmin_threads(c.block, ws + L.vals(), ws + L.idxs(), c.nthreads, ws + L.slot());
  if (c.block.rank() == 0) {
    double F[3];
    double* cand = ws + L.cand();
    cagrad_enum_candidates(Gh, a, r, K, unsigned(win / 3) + 1u, F, cand);
    for (int i = 0; i < K; ++i) w[i] = cand[(win % 3) * K + i];
    cagrad_lambda(Gh, r, w, K, lam);
  }
  c.block.sync();
}

}  // namespace solvers
}  // namespace fastmtl
