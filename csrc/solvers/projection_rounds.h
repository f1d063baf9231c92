// PCGrad's and GradVac's K − 1 rounds of pairwise corrections in Gram space: transcriptions of
// fastmtl/solvers/projection.py (project_conflicts, vaccine), in float64.
//
// Both track p_i = Σ_k C_ik g_k with C = I initially; row i of C (and row i of GradVac's targets)
// is touched only by task i's own corrections, so the K rows are independent for the whole solve:
// each thread of the block takes whole rows (FMTL_FOR over i) and runs its K − 1 rounds alone, with
// no barrier between rounds. The random orders come from the caller ([K, K − 1], row i = the tasks
// p_i is corrected against, in order); an index outside [0, K) makes the whole solve NaN.
//
// Rounding: both recompute (C G)_i from C each round, as the reference, with the sums over k in
// index order (torch's row sums may group the terms differently: results agree to rounding, and
// bitwise for small K). GradVac's ‖p_i‖² and (C G)_ij run over the columns where C_i is nonzero
// only (a bit mask; the skipped terms are exact zeros): O(m²) per round with m ≤ r + 1 such columns
// in round r, instead of C G's O(K²). Keeping (C G)_i up to date instead (+= w G_j) would be O(K),
// but its different rounding shows where p_i has cancelled to ~0 and |cos| ≈ 1 (a one-element
// parameter block), where √(1 − cos²) amplifies it.
#pragma once

#include "context.h"

namespace fastmtl {
namespace solvers {

struct PcgradLayout {
  int K;
  FMTL_INL int gs() const { return 0; }               // sym(G)
  FMTL_INL int flags() const { return K * K; }
  FMTL_INL int slot() const { return K * K + K; }     // 2 doubles
  FMTL_INL int doubles() const { return K * K + K + 2; }
};

struct GradvacLayout {
  int K;
  FMTL_INL int gs() const { return 0; }               // sym(G)
  FMTL_INL int coef() const { return K * K; }         // C
  FMTL_INL int flags() const { return 2 * K * K; }
  FMTL_INL int slot() const { return 2 * K * K + K; }  // 2 doubles
  FMTL_INL int doubles() const { return 2 * K * K + K + 2; }
};

// Whether every entry of orders (K x (K − 1)) lies in [0, K); `flags` holds K doubles.
template <class B>
FMTL_INL bool orders_valid(const B& t, const int64_t* orders, int K, double* flags, double* slot) {
  FMTL_FOR(t, i, K) {
    bool ok = true;
    for (int r = 0; r < K - 1; ++r) {
      const int64_t j = orders[i * (K - 1) + r];
      ok = ok && j >= 0 && j < K;
    }
    flags[i] = ok ? 0.0 : 1.0;
  }
  return block_all_ok(t, K, flags, slot);
}

// Index of the lowest set bit of a nonzero mask.
FMTL_INL int lowest_bit(uint64_t a) {
#if defined(__CUDA_ARCH__)
  return __ffsll((long long)a) - 1;
#else
  return __builtin_ctzll(a);
#endif
}

// Threshold below which a squared norm G_jj counts as zero: amax(diag)·1e-30 + 1e-300, broadcast.
template <class B>
FMTL_INL double zero_norm_threshold(const B& t, const double* S, int K, double* slot) {
  if (t.rank() == 0) {
    double m = S[0];
    for (int k = 1; k < K; ++k) m = S[k * K + k] > m ? S[k * K + k] : m;
    *slot = m * 1e-30 + 1e-300;
  }
  t.sync();
  const double zero = *slot;
  t.sync();
  return zero;
}

// PCGrad: G (K x K) -> C (K x K, row-major). ws: PcgradLayout{K}.doubles().
template <class B, class S, class Tin>
FMTL_INL void pcgrad_solve(const Ctx<B, S>& c, const Tin* G, const int64_t* orders, int K, double eps, double* C,
                           double* ws) {
  const PcgradLayout L{K};
  double* Gs = ws + L.gs();
  double* slot = ws + L.slot();
  if (!load_symmetric(c.block, G, K, Gs, ws + L.flags(), slot) ||
      !orders_valid(c.block, orders, K, ws + L.flags(), slot)) {
    fill_nan(c.block, C, K * K);
    return;
  }
  const double zero = zero_norm_threshold(c.block, Gs, K, slot);
  FMTL_FOR(c.block, i, K) {
    double* Ci = C + i * K;
    for (int k = 0; k < K; ++k) Ci[k] = k == i ? 1.0 : 0.0;
    for (int r = 0; r < K - 1; ++r) {
      const int j = int(orders[i * (K - 1) + r]);
      const double* gj = Gs + j * K;  // column j of the symmetric G
      double s = 0.0;
      for (int k = 0; k < K; ++k) s += Ci[k] * gj[k];
      const double gjj = gj[j];
      const double coef = (s < 0.0 && gjj > zero) ? s / (gjj + eps) : 0.0;
      Ci[j] = Ci[j] - coef;
    }
  }
  c.block.sync();
}

// GradVac: G (K x K), targets phi (K x K) -> λ = column sums of C (K), new targets (K x K).
// ws: GradvacLayout{K}.doubles().
template <class B, class S, class Tin>
FMTL_INL void gradvac_solve(const Ctx<B, S>& c, const Tin* G, const double* phi, const int64_t* orders, int K,
                            double beta, double eps, double* lam, double* phi_out, double* ws) {
  const GradvacLayout L{K};
  double* Gs = ws + L.gs();
  double* slot = ws + L.slot();
  if (!load_symmetric(c.block, G, K, Gs, ws + L.flags(), slot) ||
      !orders_valid(c.block, orders, K, ws + L.flags(), slot)) {
    fill_nan(c.block, lam, K);
    fill_nan(c.block, phi_out, K * K);
    return;
  }
  const double zero = zero_norm_threshold(c.block, Gs, K, slot);
  double* C = ws + L.coef();
  FMTL_FOR(c.block, i, K) {
    double* Ci = C + i * K;
    double* Pi = phi_out + i * K;
    for (int k = 0; k < K; ++k) {
      Ci[k] = k == i ? 1.0 : 0.0;
      Pi[k] = phi[i * K + k];
    }
    uint64_t nz = uint64_t(1) << i;  // the columns where C_i may be nonzero (K <= 64)
    for (int r = 0; r < K - 1; ++r) {
      const int j = int(orders[i * (K - 1) + r]);
      const double* gj = Gs + j * K;
      // (C G)_ij and ‖p_i‖² = Σ_k (C G)_ik C_ik, the sums over l in index order as C @ G; terms
      // with C_il = 0 are exact zeros and skipped.
      double dot = 0.0, pp = 0.0;
      for (uint64_t a = nz; a != 0; a &= a - 1) {
        const int l = lowest_bit(a);
        dot += Ci[l] * gj[l];
        const double* gk = Gs + l * K;  // row l = column l (G symmetric)
        double cg = 0.0;
        for (uint64_t b = nz; b != 0; b &= b - 1) {
          const int m = lowest_bit(b);
          cg += Ci[m] * gk[m];
        }
        pp += cg * Ci[l];
      }
      const double pn = sqrt_(clamp_min(pp, 0.0));
      const double gjj = gj[j];
      const double gn = sqrt_(clamp_min(gjj, 0.0));
      const double den = pn * gn + eps;
      // |cos| ≤ 1 exactly; the clamp only removes Gram-form rounding when p_i has cancelled to ~0.
      const double cs = clamp_max(clamp_min(den > 0.0 ? dot / den : 0.0, -1.0), 1.0);
      const double target = Pi[j];
      const double s_cos = sqrt_(clamp_min(1.0 - cs * cs, 0.0));
      const double s_tgt = sqrt_(clamp_min(1.0 - target * target, 0.0));
      const double den_w = gn * s_tgt + eps;
      const double w = pn * (target * s_cos - cs * s_tgt) / (den_w > 0.0 ? den_w : 1.0);
      if (cs < target && gjj > zero && den_w > 0.0) {
        Ci[j] = Ci[j] + w;
        nz |= uint64_t(1) << j;
      }
      Pi[j] = (1.0 - beta) * target + beta * cs;
    }
  }
  c.block.sync();
  FMTL_FOR(c.block, k, K) {
    double s = 0.0;
    for (int i = 0; i < K; ++i) s += C[i * K + k];
    lam[k] = s;
  }
  c.block.sync();
}

}  // namespace solvers
}  // namespace fastmtl
