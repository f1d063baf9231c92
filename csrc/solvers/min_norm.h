// MGDA's minimum-norm point of the convex hull, min_{w∈Δ} wᵀGw: a transcription of
// fastmtl/solvers/min_norm.py. Ĝ = sym(G)/tr(G) plus the ridge K·eps_G·diag(Ĝ); K ≤ 8: exact
// enumeration of the 2^K − 1 supports (least wᵀĜw among the feasible candidates); K > 8: the
// Mehrotra kernel on (2Ĝ, 0) over the simplex with the support polish.
#pragma once

#include "context.h"
#include "mehrotra.h"

namespace fastmtl {
namespace solvers {

constexpr int kMinNormEnumMaxK = 8;  // fastmtl.solvers.min_norm.ENUMERATION_MAX_K

struct MinNormLayout {
  int K, nthreads;
  FMTL_INL int gh() const { return 0; }
  FMTL_INL int q2() const { return K * K; }            // 2Ĝ (interior point)
  FMTL_INL int cvec() const { return 2 * K * K; }      // zeros
  FMTL_INL int flags() const { return 2 * K * K + K; }
  FMTL_INL int slot() const { return 2 * K * K + 2 * K; }
  FMTL_INL int vals() const { return slot() + 2; }     // per-thread minima (enumeration)
  FMTL_INL int idxs() const { return vals() + nthreads; }
  FMTL_INL int qp() const { return idxs() + nthreads; }
  FMTL_INL int doubles() const { return qp() + (K > kMinNormEnumMaxK ? QpWork::doubles(K) : 0); }
};

// Candidate of support `s` (bit k = task k): w on the simplex, and its objective wᵀĜw (inf when the
// restricted KKT system is singular or its solution is not feasible).
FMTL_INL double min_norm_candidate(const double* Gh, int K, unsigned s, double* w) {
  int idx[kMinNormEnumMaxK];
  double A[(kMinNormEnumMaxK + 1) * (kMinNormEnumMaxK + 1)];
  double b[kMinNormEnumMaxK + 1];
  double slot;
  int m = 0;
  for (int k = 0; k < K; ++k)
    if (s >> k & 1u) idx[m++] = k;
  const int n = support_system(Gh, K, idx, m, true, 0.0, A, m + 1);
  for (int a = 0; a < m; ++a) b[a] = 0.0;
  b[m] = 1.0;
  const int status = lu_solve(Solo{}, A, n, m + 1, b, 1, &slot);
  for (int k = 0; k < K; ++k) w[k] = 0.0;
  if (status != 0) return inf();
  // w vanishes outside the support (exact zeros): sums and checks run over it only.
  double total = 0.0;
  bool ok = true;
  for (int a = 0; a < m; ++a) {
    total += b[a];
    ok = ok && finite(b[a]) && b[a] >= -1e-12;
  }
  ok = ok && fabs_(total - 1.0) <= 1e-6;
  if (!ok) return inf();
  double sum = 0.0;
  for (int a = 0; a < m; ++a) {
    b[a] = clamp_min(b[a], 0.0);
    sum += b[a];
  }
  for (int a = 0; a < m; ++a) w[idx[a]] = b[a] / sum;
  // wᵀĜw over the support only (the other terms are exact zeros).
  double q = 0.0;
  for (int a = 0; a < m; ++a) {
    const double* g = Gh + idx[a] * K;
    double s = 0.0;
    for (int b2 = 0; b2 < m; ++b2) s += g[idx[b2]] * w[idx[b2]];
    q += s * w[idx[a]];
  }
  return q;
}

// One solve: G (K x K, row-major) -> w (K). eps_g: machine epsilon of the dtype G was computed in.
template <class B, class S, class Tin>
FMTL_INL void min_norm_solve(const Ctx<B, S>& c, const Tin* G, int K, double eps_g, int iterations, double* w,
                             double* ws) {
  const MinNormLayout L{K, c.nthreads};
  double* Gh = ws + L.gh();
  double* slot = ws + L.slot();
  if (!load_symmetric(c.block, G, K, Gh, ws + L.flags(), slot)) {
    fill_nan(c.block, w, K);
    return;
  }
  trace_normalize(c.block, Gh, K, slot);
  const double ridge = double(K) * eps_g;
  FMTL_FOR(c.block, i, K) Gh[i * K + i] = Gh[i * K + i] + ridge * clamp_min(Gh[i * K + i], 0.0);
  c.block.sync();

  if (K <= kMinNormEnumMaxK) {
    const unsigned P = (1u << K) - 1u;
    double cand[kMinNormEnumMaxK];
    double best = inf();
    double best_i = double(P);  // a thread without any support reports (inf, P)
    bool first = true;
    for (unsigned s = unsigned(c.tid); s < P; s += unsigned(c.nthreads)) {
      const double f = min_norm_candidate(Gh, K, s + 1u, cand);
      if (first || f < best) {
        best = f;
        best_i = double(s);
        first = false;
      }
    }
    ws[L.vals() + c.tid] = best;
    ws[L.idxs() + c.tid] = best_i;
    const int win = argmin_threads(c.block, ws + L.vals(), ws + L.idxs(), c.nthreads, slot);
    if (c.block.rank() == 0) min_norm_candidate(Gh, K, unsigned(win) + 1u, w);
    c.block.sync();
    return;
  }
  double* Q2 = ws + L.q2();
  double* zero = ws + L.cvec();
  FMTL_FOR(c.block, i, K) {
    for (int j = 0; j < K; ++j) Q2[i * K + j] = 2.0 * Gh[i * K + j];
    zero[i] = 0.0;
  }
  c.block.sync();
  mehrotra_qp(c.block, Q2, K, zero, K, true, iterations, w, ws + L.qp());
}

}  // namespace solvers
}  // namespace fastmtl
