// Nash-MTL's bargaining weights α > 0 with α_i (Gα)_i = 1: a transcription of
// fastmtl/solvers/nash.py. With n_i = ‖g_i‖ and the cosine matrix C, α = β/n where β minimises
// h(β) = ½βᵀCβ − Σ log β_i: scaled Newton (H = diag(β) C diag(β) + I, s = H⁻¹(β∘Cβ − 1)) with a
// parallel line search over t ∈ {1, ½, …, 2⁻⁷, 1/(1+λ), 0}, the full step once λ < 1/4. Dead tasks
// (G_ii ≤ 1e-12·max G_jj) are identity rows of C and get α_i = 0.
#pragma once

#include "context.h"

namespace fastmtl {
namespace solvers {

constexpr int kNashHalvings = 8;
constexpr int kNashTrials = kNashHalvings + 2;

FMTL_INL int default_nash_iterations(int K) { return K <= 8 ? 10 : (K <= 16 ? 12 : 14); }

struct NashLayout {
  int K;
  FMTL_INL int C() const { return 0; }
  FMTL_INL int H() const { return K * K; }
  FMTL_INL int vec(int i) const { return 2 * K * K + i * K; }  // n, dead, beta, r, s, full, dinv
  FMTL_INL int cand() const { return vec(7); }                 // kNashTrials x K
  FMTL_INL int hv() const { return cand() + kNashTrials * K; }
  FMTL_INL int slot() const { return hv() + kNashTrials; }     // 4 scalars
  FMTL_INL int flags() const { return slot() + 4; }
  FMTL_INL int doubles() const { return flags() + K; }
};

// h(b) = ½bᵀCb − Σ log b_i, inf unless every b_i > 0 and the value is finite.
FMTL_INL double nash_h(const double* C, const double* b, int K) {
  double logs = 0.0;
  bool pos = true;
  for (int i = 0; i < K; ++i) {
    pos = pos && b[i] > 0.0;
    logs += log_(b[i] > 0.0 ? b[i] : 1.0);
  }
  const double val = 0.5 * quad_form_solo(C, K, b, K) - logs;
  return (pos && finite(val)) ? val : inf();
}

// One solve: G (K x K), optional warm start init (K, any float type) -> α (K).
template <class B, class S, class Tin, class Ti>
FMTL_INL void nash_solve(const Ctx<B, S>& c, const Tin* G, const Ti* init, int K, int iterations, double* alpha,
                         double* ws) {
  const NashLayout L{K};
  const B& t = c.block;
  double* C = ws + L.C();
  double* H = ws + L.H();
  double* n = ws + L.vec(0);
  double* dead = ws + L.vec(1);
  double* beta = ws + L.vec(2);
  double* r = ws + L.vec(3);
  double* s = ws + L.vec(4);
  double* full = ws + L.vec(5);
  double* dinv = ws + L.vec(6);
  double* cand = ws + L.cand();
  double* hv = ws + L.hv();
  double* slot = ws + L.slot();
  if (!load_symmetric(t, G, K, C, ws + L.flags(), slot)) {
    fill_nan(t, alpha, K);
    return;
  }
  if (t.rank() == 0) {
    double dmax = C[0];
    for (int i = 1; i < K; ++i)
      if (C[i * K + i] > dmax) dmax = C[i * K + i];
    for (int i = 0; i < K; ++i) {
      const double d = C[i * K + i];
      dead[i] = d <= 1e-12 * dmax ? 1.0 : 0.0;
      n[i] = sqrt_(dead[i] != 0.0 ? 1.0 : d);
    }
  }
  t.sync();
  FMTL_FOR(t, i, K) {
    for (int j = 0; j < K; ++j) {
      const bool d2 = dead[i] != 0.0 || dead[j] != 0.0;
      C[i * K + j] = d2 ? (i == j ? 1.0 : 0.0) : C[i * K + j] / (n[i] * n[j]);
    }
    double b = 1.0;
    if (init != nullptr) {
      const double b0 = double(init[i]) * n[i];
      if (finite(b0) && b0 > 0.0 && dead[i] == 0.0) b = b0;
    }
    beta[i] = b;
  }
  t.sync();
  if (t.rank() == 0) {
    const double q = quad_form_solo(C, K, beta, K);
    *slot = sqrt_(double(K) / clamp_min(q, 1e-6 * double(K)));
  }
  t.sync();
  const double ray = *slot;
  FMTL_FOR(t, i, K) beta[i] = beta[i] * ray;

  for (int it = 0; it < iterations; ++it) {
    t.sync();
    FMTL_FOR(t, i, K) {
      const double* crow = C + i * K;
      double cb = 0.0;
      for (int j = 0; j < K; ++j) cb += crow[j] * beta[j];
      r[i] = beta[i] * cb - 1.0;
      s[i] = r[i];
      for (int j = 0; j <= i; ++j) H[i * K + j] = beta[i] * crow[j] * beta[j] + (i == j ? 1.0 : 0.0);
    }
    t.sync();
    if (cholesky(t, H, K, K, dinv, slot + 1) != 0) continue;  // every trial is rejected: β is kept
    cholesky_solve(t, H, dinv, K, K, s);
    const double lam = sqrt_(clamp_min(team_dot(t, r, s, K, slot), 0.0));
    FMTL_FOR(t, j, kNashTrials) {
      const double tj = j < kNashHalvings ? 1.0 / double(1 << j) : (j == kNashHalvings ? 1.0 / (1.0 + lam) : 0.0);
      double* cj = cand + j * K;
      for (int i = 0; i < K; ++i) cj[i] = beta[i] * (1.0 - tj * s[i]);
      hv[j] = nash_h(C, cj, K);
    }
    FMTL_FOR(t, i, K) full[i] = beta[i] * (1.0 - s[i]);
    t.sync();
    if (t.rank() == 0) {
      int jb = 0;
      for (int j = 1; j < kNashTrials; ++j)
        if (hv[j] < hv[jb]) jb = j;
      bool quad = lam < 0.25;
      for (int i = 0; i < K; ++i) quad = quad && finite(full[i]) && full[i] > 0.0;
      const double* nw = quad ? full : cand + jb * K;
      bool keep = quad || finite(hv[jb]);
      for (int i = 0; i < K; ++i) keep = keep && finite(nw[i]);
      slot[2] = keep ? (quad ? -1.0 : double(jb)) : -2.0;
    }
    t.sync();
    const double choice = slot[2];
    if (choice != -2.0) {
      const double* nw = choice == -1.0 ? full : cand + int(choice) * K;
      FMTL_FOR(t, i, K) beta[i] = nw[i];
    }
  }
  t.sync();
  FMTL_FOR(t, i, K) alpha[i] = dead[i] != 0.0 ? 0.0 : beta[i] / n[i];
  t.sync();
}

}  // namespace solvers
}  // namespace fastmtl
