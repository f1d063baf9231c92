// Symmetric eigen-decomposition by cyclic Jacobi with a fixed number of sweeps: a transcription of
// fastmtl/solvers/jacobi.py. Each sweep visits every pair once in the round-robin ("circle") order:
// K − 1 rounds (K even; K + 1 players with a bye for K odd) of disjoint pairs, all of one round
// rotated at once (A ← JᵀAJ: rows first, then columns; V ← VJ). Threshold rule: a pair whose
// |A_pq| ≤ 0.1·off(A)/K² (off = Frobenius norm of the off-diagonal part at the start of the sweep)
// is not rotated. Eigenvalues ascending (stable, NaN last), eigenvectors in the columns of V.
#pragma once

#include "context.h"

namespace fastmtl {
namespace solvers {

// Sweeps that reach rounding level on every measured input of size K (fastmtl.solvers.jacobi).
FMTL_INL int default_jacobi_sweeps(int K) {
  if (K <= 2) return 1;
  if (K <= 4) return 7;
  if (K <= 8) return 9;
  if (K <= 16) return 10;
  if (K <= 32) return 11;
  return 12;
}

constexpr double kJacobiThreshold = 0.1;  // of off(A)/K², see above

// x mod n for |x| < n (no division: the pair schedule is on the solve's critical path).
FMTL_INL int wrap_mod(int x, int n) { return x < 0 ? x + n : x; }

// Pair `k` of round `r` of the circle method for m = K + K % 2 players: (p, q) with p < q; q ≥ K is
// the bye. Position 0 is fixed, positions 1..m-1 rotate by one each round. (With 0 ≤ r < m − 1 and
// 0 ≤ k < m/2 both offsets below lie in (−(m − 1), m − 1).)
FMTL_INL void jacobi_pair(int m, int r, int k, int* p, int* q) {
  const int a = k == 0 ? 0 : wrap_mod(k - 1 - r, m - 1) + 1;
  const int b = wrap_mod(m - 2 - k - r, m - 1) + 1;
  *p = a < b ? a : b;
  *q = a < b ? b : a;
}

// Rotation (c, s) that zeroes A_pq: t = sign(τ)/(|τ| + sqrt(1 + τ²)), τ = (A_qq − A_pp)/(2A_pq);
// none (c = 1, s = 0) where |A_pq| ≤ thr (and where A_pq = 0).
FMTL_INL void jacobi_rotation(double app, double aqq, double apq, double thr, double* c, double* s) {
  if (apq == 0.0 || fabs_(apq) <= thr) {
    *c = 1.0;
    *s = 0.0;
    return;
  }
  const double tau = (aqq - app) / (2.0 * apq);
  const double t = (tau >= 0.0 ? 1.0 : -1.0) / (fabs_(tau) + sqrt_(1.0 + tau * tau));
  *c = 1.0 / sqrt_(1.0 + t * t);
  *s = t * *c;
}

struct JacobiLayout {
  int K;
  FMTL_INL int A() const { return 0; }
  FMTL_INL int V() const { return K * K; }
  FMTL_INL int rot() const { return 2 * K * K; }     // per pair: p, q, c, s
  FMTL_INL int flags() const { return rot() + 4 * (K / 2 + 1); }
  FMTL_INL int slot() const { return flags() + K; }
  FMTL_INL int order() const { return slot() + 2; }  // K ints in K doubles
  FMTL_INL int doubles() const { return order() + K; }
};

// Rows p, q of every pair of a round (JᵀA). Work item w = k·K + j, stepped without a division per
// item. Every entry is written by one work item from the two it reads, so the split over ranks (and
// the host loops below) never changes the result.
template <class B>
FMTL_INL void jacobi_rotate_rows(const B& t, double* A, const double* rot, int K, int npairs) {
  for (int w = t.rank(), k = w / K, j = w % K; w < npairs * K; w += t.size(), j += t.size()) {
    while (j >= K) {
      j -= K;
      ++k;
    }
    const int p = int(rot[4 * k]), q = int(rot[4 * k + 1]);
    if (q < K) {
      const double cs = rot[4 * k + 2], sn = rot[4 * k + 3];
      const double ap = A[p * K + j], aq = A[q * K + j];
      A[p * K + j] = cs * ap - sn * aq;
      A[q * K + j] = sn * ap + cs * aq;
    }
  }
}

// Columns p, q of every pair ((JᵀA)J and VJ), work item w = k·K + i.
template <class B>
FMTL_INL void jacobi_rotate_columns(const B& t, double* A, double* V, const double* rot, int K, int npairs) {
  for (int w = t.rank(), k = w / K, i = w % K; w < npairs * K; w += t.size(), i += t.size()) {
    while (i >= K) {
      i -= K;
      ++k;
    }
    const int p = int(rot[4 * k]), q = int(rot[4 * k + 1]);
    if (q < K) {
      const double cs = rot[4 * k + 2], sn = rot[4 * k + 3];
      const double ap = A[i * K + p], aq = A[i * K + q];
      A[i * K + p] = cs * ap - sn * aq;
      A[i * K + q] = sn * ap + cs * aq;
      const double vp = V[i * K + p], vq = V[i * K + q];
      V[i * K + p] = cs * vp - sn * vq;
      V[i * K + q] = sn * vp + cs * vq;
    }
  }
}

// The same two passes for one host thread, pair by pair, with the same arithmetic on every entry:
// no work-item bookkeeping, and contiguous updates that vectorise. The host keeps V transposed
// (W = Vᵀ), so that VJ's column updates are row updates of W.
template <class B>
struct JacobiTransposedV {
  static constexpr bool value = false;
};
template <>
struct JacobiTransposedV<Solo> {
  static constexpr bool value = true;
};

FMTL_INL void jacobi_rotate_row_pair(double* __restrict__ rp, double* __restrict__ rq, int K, double cs, double sn) {
  for (int j = 0; j < K; ++j) {
    const double ap = rp[j], aq = rq[j];
    rp[j] = cs * ap - sn * aq;
    rq[j] = sn * ap + cs * aq;
  }
}

FMTL_INL void jacobi_rotate_rows(const Solo&, double* A, const double* rot, int K, int npairs) {
  for (int k = 0; k < npairs; ++k) {
    const int p = int(rot[4 * k]), q = int(rot[4 * k + 1]);
    if (q < K) jacobi_rotate_row_pair(A + p * K, A + q * K, K, rot[4 * k + 2], rot[4 * k + 3]);
  }
}

FMTL_INL void jacobi_rotate_columns(const Solo&, double* A, double* W, const double* rot, int K, int npairs) {
  for (int k = 0; k < npairs; ++k) {
    const int p = int(rot[4 * k]), q = int(rot[4 * k + 1]);
    if (q >= K) continue;
    const double cs = rot[4 * k + 2], sn = rot[4 * k + 3];
    for (int i = 0; i < K; ++i) {
      const double ap = A[i * K + p], aq = A[i * K + q];
      A[i * K + p] = cs * ap - sn * aq;
      A[i * K + q] = sn * ap + cs * aq;
    }
    jacobi_rotate_row_pair(W + p * K, W + q * K, K, cs, sn);
  }
}

// One solve: G (K x K) -> evals (K, ascending) and evecs (K x K, columns).
template <class B, class S, class Tin>
FMTL_INL void jacobi_solve(const Ctx<B, S>& c, const Tin* G, int K, int sweeps, double* evals, double* evecs,
                           double* ws) {
  const JacobiLayout L{K};
  const B& t = c.block;
  double* A = ws + L.A();
  double* V = ws + L.V();  // transposed on the host (JacobiTransposedV)
  double* rot = ws + L.rot();
  if (!load_symmetric(t, G, K, A, ws + L.flags(), ws + L.slot())) {
    fill_nan(t, evals, K);
    fill_nan(t, evecs, K * K);
    return;
  }
  FMTL_FOR(t, i, K) {
    for (int j = 0; j < K; ++j) V[i * K + j] = i == j ? 1.0 : 0.0;
  }
  const int m = K + (K % 2);
  const int npairs = m / 2;
  double* slot = ws + L.slot();
  double* rowsum = ws + L.flags();
  for (int sweep = 0; sweep < sweeps && K > 1; ++sweep) {
    // The threshold of this sweep: 0.1·off(A)/K², off² summed by rows, then rows in order.
    t.sync();
    FMTL_FOR(t, i, K) {
      double s2 = 0.0;
      for (int j = 0; j < K; ++j) s2 += j == i ? 0.0 : A[i * K + j] * A[i * K + j];
      rowsum[i] = s2;
    }
    const double off2 = team_sum(t, rowsum, K, slot);
    const double thr = kJacobiThreshold * sqrt_(off2) / (double(K) * double(K));
    for (int round = 0; round < m - 1; ++round) {
      t.sync();
      FMTL_FOR(t, k, npairs) {
        int p, q;
        jacobi_pair(m, round, k, &p, &q);
        double cs = 1.0, sn = 0.0;
        if (q < K) jacobi_rotation(A[p * K + p], A[q * K + q], A[p * K + q], thr, &cs, &sn);
        rot[4 * k] = double(p);
        rot[4 * k + 1] = double(q);
        rot[4 * k + 2] = cs;
        rot[4 * k + 3] = sn;
      }
      t.sync();
      jacobi_rotate_rows(t, A, rot, K, npairs);
      t.sync();
      jacobi_rotate_columns(t, A, V, rot, K, npairs);
    }
  }
  t.sync();
  int* order = reinterpret_cast<int*>(ws + L.order());
  if (t.rank() == 0) {
    // Stable ascending order of the diagonal, NaN last (torch.sort(stable=True)).
    for (int i = 0; i < K; ++i) {
      const double v = A[i * K + i];
      int j = i;
      while (j > 0) {
        const double u = A[order[j - 1] * K + order[j - 1]];
        const bool after = is_nan(u) ? !is_nan(v) : (!is_nan(v) && v < u);
        if (!after) break;
        order[j] = order[j - 1];
        --j;
      }
      order[j] = i;
    }
  }
  t.sync();
  FMTL_FOR(t, j, K) evals[j] = A[order[j] * K + order[j]];
  constexpr bool transposed = JacobiTransposedV<B>::value;
  FMTL_FOR(t, w, K * K) {
    const int i = w / K, j = w % K;
    evecs[i * K + j] = transposed ? V[order[j] * K + i] : V[i * K + order[j]];
  }
  t.sync();
}

}  // namespace solvers
}  // namespace fastmtl
