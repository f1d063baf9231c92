// CAGrad's dual for K > 10: the path-following log-barrier method of
// fastmtl/solvers/cagrad.py (_cagrad_ipm), transcribed: one Newton step per iteration on
// ψ_τ(w) = aᵀw + r·t − τ log t − τ Σ log w_i restricted to 1ᵀw = 1, a parallel line search over
// α_max·2^-j (j = 0..5), 1/(1+λ) and 0, the full step once λ < 1/4; τ falls geometrically from 1/K to
// 1e-12. Then the exact candidates on the 2K nested supports ranked by the iterate and by its Tapia
// ratios, each also with Ĝ + 1e-12·I, against the iterate itself: the least F wins.
#pragma once

#include "cagrad.h"
#include "mehrotra.h"

namespace fastmtl {
namespace solvers {

constexpr int kCagradTrials = 8;  // α_max·2^-j (j = 0..5), 1/(1+λ), 0

struct CagradBarrierLayout {
  int K, num_subs;
  FMTL_INL int gh() const { return 0; }
  FMTL_INL int a() const { return K * K; }
  FMTL_INL int flags() const { return a() + K; }
  FMTL_INL int slot() const { return flags() + K; }        // 4 scalars
  FMTL_INL int vec(int i) const { return slot() + 4 + i * K; }  // w, Gw, g, Mg, M1, dw, w_hist, w_it, dinv
  FMTL_INL int H() const { return vec(9); }
  FMTL_INL int trial() const { return H() + K * K; }       // kCagradTrials x K
  FMTL_INL int tval() const { return trial() + kCagradTrials * K; }
  FMTL_INL int supports() const { return tval() + kCagradTrials; }  // 2K x K ints in K*K doubles
  FMTL_INL int F() const { return supports() + K * K; }   // 12K + 1
  FMTL_INL int sub(int i) const { return F() + 12 * K + 1 + i * CandWork::doubles(K); }
  FMTL_INL int doubles() const { return sub(num_subs); }
};

// The merit ψ_τ at wc (inf where a component is not positive or the value is not finite).
FMTL_INL double cagrad_merit(const double* Gh, const double* a, double r, double tau, const double* wc, int K) {
  const double s2 = clamp_min(quad_form_solo(Gh, K, wc, K), 0.0);
  const double R = sqrt_(tau * tau + r * r * s2);
  const double t = r > 0.0 ? (tau + R) / r : 1.0;
  double aw = 0.0, logs = 0.0;
  bool pos = true;
  for (int i = 0; i < K; ++i) {
    aw += a[i] * wc[i];
    pos = pos && wc[i] > 0.0;
    logs += log_(wc[i] > 0.0 ? wc[i] : 1.0);
  }
  const double val = aw + r * t - tau * log_(t) - tau * logs;
  return (pos && finite(val)) ? val : inf();
}

// Indices sorted by key descending, ties in index order (the nested supports are its prefixes).
FMTL_INL void order_descending(const double* key, int K, int* order) {
  for (int i = 0; i < K; ++i) {
    int j = i;
    while (j > 0 && key[order[j - 1]] < key[i]) {
      order[j] = order[j - 1];
      --j;
    }
    order[j] = i;
  }
}

// theta = (1e-12 / (1/K))^(1 / max(iterations - 1, 1)), computed once on the host.
template <class B, class S, class Tin>
FMTL_INL void cagrad_barrier_solve(const Ctx<B, S>& c, const Tin* G, int K, double cc, int iterations, double theta,
                                   double* w_out, double* lam, double* ws) {
  const CagradBarrierLayout L{K, c.num_subs};
  const B& t = c.block;
  double* Gh = ws + L.gh();
  double* a = ws + L.a();
  double* slot = ws + L.slot();
  double r = 0.0;
  if (!cagrad_problem(t, G, K, cc, Gh, a, ws + L.flags(), slot, &r)) {
    fill_nan(t, w_out, K);
    fill_nan(t, lam, K);
    return;
  }
  double* w = ws + L.vec(0);
  double* Gw = ws + L.vec(1);
  double* g = ws + L.vec(2);
  double* Mg = ws + L.vec(3);
  double* M1 = ws + L.vec(4);
  double* dw = ws + L.vec(5);
  double* w_hist = ws + L.vec(6);
  double* w_it = ws + L.vec(7);
  double* dinv = ws + L.vec(8);
  double* H = ws + L.H();
  const double floor = kSqrtTiny;
  const double r_safe = r > 0.0 ? r : 1.0;
  const int hist_at = iterations - (iterations < 5 ? iterations : 5);  // history[-1 - min(5, N)]
  double tau = 1.0 / double(K);

  FMTL_FOR(t, i, K) {
    w[i] = 1.0 / double(K);
    if (hist_at == 0) w_hist[i] = w[i];
  }
  for (int it = 0; it < iterations; ++it) {
    t.sync();
    matvec(t, Gh, K, w, Gw, K);
    const double s2 = clamp_min(team_dot(t, Gw, w, K, slot), 0.0);
    const double R = sqrt_(tau * tau + r * r * s2);
    const double tt = r > 0.0 ? (tau + R) / r_safe : 1.0;
    const double k = r > 0.0 ? r / tt : 0.0;
    const double coef = r > 0.0 ? k * r / (tt * R) : 0.0;
    FMTL_FOR(t, i, K) {
      g[i] = a[i] + k * Gw[i] - tau / w[i];
      Mg[i] = g[i];
      M1[i] = 1.0;
      for (int j = 0; j <= i; ++j) H[i * K + j] = k * Gh[i * K + j] - coef * (Gw[i] * Gw[j]);
      H[i * K + i] = H[i * K + i] + tau / (w[i] * w[i]);
    }
    t.sync();
    const int status = cholesky(t, H, K, K, dinv, slot + 1);
    bool valid = status == 0;
    if (valid) {
      cholesky_solve(t, H, dinv, K, K, Mg);
      cholesky_solve(t, H, dinv, K, K, M1);
      const double smg = team_sum(t, Mg, K, slot);
      const double sm1 = team_sum(t, M1, K, slot);
      FMTL_FOR(t, i, K) dw[i] = -Mg[i] + M1[i] * (smg / sm1);
      t.sync();
      if (t.rank() == 0) {
        bool ok = true;
        for (int i = 0; i < K; ++i) ok = ok && finite(dw[i]);
        slot[2] = ok ? 1.0 : 0.0;
      }
      t.sync();
      valid = slot[2] != 0.0;
      t.sync();
    }
    if (valid) {
      // A zero direction (failed factorisation or non-finite step) leaves w unchanged, as in the
      // reference, whose line search then picks a step along dw = 0.
      const double gdw = team_dot(t, g, dw, K, slot);
      const double lam_n = sqrt_(clamp_min(-gdw, 0.0) / tau);
      const double a_max = clamp_max(0.99 * max_step(w, dw, K), 1.0);
      double* trial = ws + L.trial();
      double* tval = ws + L.tval();
      FMTL_FOR(t, j, kCagradTrials) {
        const double step = j < 6 ? a_max * (1.0 / double(1 << j)) : (j == 6 ? 1.0 / (1.0 + lam_n) : 0.0);
        double* wc = trial + j * K;
        for (int i = 0; i < K; ++i) wc[i] = w[i] + step * dw[i];
        tval[j] = cagrad_merit(Gh, a, r, tau, wc, K);
      }
      t.sync();
      if (t.rank() == 0) {
        int jb = 0;
        for (int j = 1; j < kCagradTrials; ++j)
          if (tval[j] < tval[jb]) jb = j;
        double step = jb < 6 ? a_max * (1.0 / double(1 << jb)) : (jb == 6 ? 1.0 / (1.0 + lam_n) : 0.0);
        if (lam_n < 0.25 && a_max >= 1.0) step = 1.0;
        slot[3] = step;
      }
      t.sync();
      const double step = slot[3];
      FMTL_FOR(t, i, K) w[i] = clamp_min(w[i] + step * dw[i], floor);
    }
    tau = tau * theta;
    if (it + 1 == hist_at) {
      t.sync();
      FMTL_FOR(t, i, K) w_hist[i] = w[i];
    }
  }
  t.sync();

  // Candidate supports: prefixes of the iterate's and of the Tapia ratios' descending orders.
  int* sup = reinterpret_cast<int*>(ws + L.supports());  // 2 x K orders
  if (t.rank() == 0) {
    double sum = 0.0;
    for (int i = 0; i < K; ++i) sum += w[i];
    for (int i = 0; i < K; ++i) {
      w_it[i] = w[i] / sum;
      Gw[i] = w[i] / w_hist[i];  // Tapia ratios
    }
    order_descending(w, K, sup);
    order_descending(Gw, K, sup + K);
  }
  t.sync();
  double* F = ws + L.F();
  const int items = 4 * K;  // (2K supports) x (plain, ridged)
  double* mine = ws + L.sub(c.sub_id);
  CandWork W(mine, K);
  double* Hr = H;  // Ĝ + 1e-12·I for the ridged candidates
  FMTL_FOR(t, i, K) {
    for (int j = 0; j < K; ++j) Hr[i * K + j] = Gh[i * K + j];
    Hr[i * K + i] = Gh[i * K + i] + 1e-12;
  }
  t.sync();
  for (int item = c.sub_id; item < items; item += c.num_subs) {
    const int s = item % (2 * K), ridged = item / (2 * K);
    const int m = (s % K) + 1;
    const int* order = sup + (s / K) * K;
    c.sub.sync();
    if (c.sub.rank() == 0) {
      // Support = the m first indices of the order, sorted.
      for (int i = 0; i < m; ++i) W.idx[i] = order[i];
      for (int i = 1; i < m; ++i) {
        const int v = W.idx[i];
        int j = i;
        while (j > 0 && W.idx[j - 1] > v) {
          W.idx[j] = W.idx[j - 1];
          --j;
        }
        W.idx[j] = v;
      }
    }
    double Fs[3];
    cagrad_candidates(c.sub, ridged ? Hr : Gh, a, r, K, m, W, Fs);
    if (c.sub.rank() == 0) {
      for (int j = 0; j < 3; ++j) {
        double f = Fs[j];
        if (ridged && finite(f)) f = cagrad_objective(Gh, a, r, W.cand + j * K, K);
        F[ridged * 6 * K + 3 * s + j] = finite(f) ? f : inf();
      }
    }
  }
  t.sync();
  if (t.rank() == 0) {
    const double f_it = cagrad_objective(Gh, a, r, w_it, K);
    F[12 * K] = finite(f_it) ? f_it : inf();
    int best = 0;
    for (int i = 1; i < 12 * K + 1; ++i)
      if (F[i] < F[best]) best = i;
    slot[0] = double(best);
  }
  t.sync();
  const int best = int(slot[0]);
  t.sync();
  if (best == 12 * K) {
    FMTL_FOR(t, i, K) w_out[i] = w_it[i];
  } else {
    // Recompute the winning candidate with the whole block (same arithmetic as above).
    const int ridged = best / (6 * K), s = (best % (6 * K)) / 3, j = best % 3;
    const int m = (s % K) + 1;
    const int* order = sup + (s / K) * K;
    CandWork W0(ws + L.sub(0), K);
    if (t.rank() == 0) {
      for (int i = 0; i < m; ++i) W0.idx[i] = order[i];
      for (int i = 1; i < m; ++i) {
        const int v = W0.idx[i];
        int q = i;
        while (q > 0 && W0.idx[q - 1] > v) {
          W0.idx[q] = W0.idx[q - 1];
          --q;
        }
        W0.idx[q] = v;
      }
    }
    double Fs[3];
    cagrad_candidates(t, ridged ? Hr : Gh, a, r, K, m, W0, Fs);
    FMTL_FOR(t, i, K) w_out[i] = W0.cand[j * K + i];
  }
  t.sync();
  if (t.rank() == 0) cagrad_lambda(Gh, r, w_out, K, lam);
  t.sync();
}

}  // namespace solvers
}  // namespace fastmtl
