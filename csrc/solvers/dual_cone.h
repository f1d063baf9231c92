// Projections onto the dual cone of the task gradients (UPGrad, DualProj): a transcription of
// fastmtl/solvers/dual_cone.py. Q = Ĝ + reg_eps·I with Ĝ = sym(G)/tr(G), or 0 when tr(G) < norm_eps;
// for every target u (scaled to unit max-norm) the orthant QP min ½xᵀQx + (Qu)ᵀx, x ≥ 0 by the
// Mehrotra kernel, and v = u + x·scale. The targets are independent sub-problems.
#pragma once

#include "context.h"
#include "mehrotra.h"

namespace fastmtl {
namespace solvers {

struct DualConeLayout {
  int K, num_subs;
  FMTL_INL int q() const { return 0; }
  FMTL_INL int flags() const { return K * K; }
  FMTL_INL int slot() const { return K * K + K; }
  FMTL_INL int sub_doubles() const { return 3 * K + QpWork::doubles(K); }
  FMTL_INL int sub(int i) const { return K * K + K + 2 + i * sub_doubles(); }
  FMTL_INL int doubles() const { return sub(num_subs); }
};

// One solve: G (K x K) and T targets (T x K, any float type) -> V (T x K).
template <class B, class S, class Tin, class Tu>
FMTL_INL void dual_cone_solve(const Ctx<B, S>& c, const Tin* G, const Tu* targets, int T, int K, int iterations,
                              double norm_eps, double reg_eps, double* V, double* ws) {
  const DualConeLayout L{K, c.num_subs};
  double* Q = ws + L.q();
  double* slot = ws + L.slot();
  if (!load_symmetric(c.block, G, K, Q, ws + L.flags(), slot)) {
    fill_nan(c.block, V, T * K);
    return;
  }
  if (c.block.rank() == 0) {
    double tr = 0.0;
    for (int i = 0; i < K; ++i) tr += Q[i * K + i];
    *slot = tr;
  }
  c.block.sync();
  const double tr = *slot;
  const bool keep = tr >= norm_eps;
  FMTL_FOR(c.block, i, K) {
    for (int j = 0; j < K; ++j) Q[i * K + j] = keep ? Q[i * K + j] / tr : 0.0;
    Q[i * K + i] = Q[i * K + i] + reg_eps;
  }
  c.block.sync();

  double* mine = ws + L.sub(c.sub_id);
  double* un = mine;
  double* cv = un + K;
  double* x = cv + K;
  double* work = x + K;
  for (int b = c.sub_id; b < T; b += c.num_subs) {
    const Tu* u = targets + b * K;
    c.sub.sync();
    double scale = 0.0;
    bool saw_nan = false;
    for (int i = 0; i < K; ++i) {
      const double v = fabs_(double(u[i]));
      if (is_nan(v)) saw_nan = true;
      if (v > scale) scale = v;
    }
    if (saw_nan) scale = nan();
    scale = scale > 0.0 ? scale : 1.0;
    FMTL_FOR(c.sub, i, K) un[i] = double(u[i]) / scale;
    c.sub.sync();
    matvec(c.sub, Q, K, un, cv, K);
    mehrotra_qp(c.sub, Q, K, cv, K, false, iterations, x, work);
    FMTL_FOR(c.sub, i, K) V[b * K + i] = double(u[i]) + x[i] * scale;
  }
  c.block.sync();
}

#if defined(FMTL_HOST_LANES)
// Host: the same solve with the targets in groups of kLanes QPs run in lockstep (SIMD lanes), each
// then polished alone. Same arithmetic as dual_cone_solve on one thread.
struct DualConeLanesLayout {
  int K;
  FMTL_INL int q() const { return 0; }
  FMTL_INL int flags() const { return K * K; }
  FMTL_INL int slot() const { return K * K + K; }
  FMTL_INL int scalar_qp() const { return K * K + K + 2; }
  FMTL_INL int vec() const { return scalar_qp() + QpWork::doubles(K); }  // un, c, x of one lane
  // Lanes workspace: c and x (K each) and one QpWorkT<Lanes>.
  FMTL_INL int lanes() const { return (vec() + 3 * K + kLanes - 1) / kLanes * kLanes; }
  FMTL_INL int doubles() const { return lanes() + (2 * K + QpWorkT<Lanes>::count(K)) * kLanes + kLanes; }
};

template <class Tin, class Tu>
FMTL_INL void dual_cone_solve_lanes(const Tin* G, const Tu* targets, int T, int K, int iterations, double norm_eps,
                                  double reg_eps, double* V, double* ws) {
  const DualConeLanesLayout L{K};
  const Solo t;
  double* Q = ws + L.q();
  double* slot = ws + L.slot();
  if (!load_symmetric(t, G, K, Q, ws + L.flags(), slot)) {
    fill_nan(t, V, T * K);
    return;
  }
  double tr = 0.0;
  for (int i = 0; i < K; ++i) tr += Q[i * K + i];
  const bool keep = tr >= norm_eps;
  for (int i = 0; i < K; ++i) {
    for (int j = 0; j < K; ++j) Q[i * K + j] = keep ? Q[i * K + j] / tr : 0.0;
    Q[i * K + i] = Q[i * K + i] + reg_eps;
  }
  QpWork Ws(ws + L.scalar_qp(), K);
  double* un = ws + L.vec();
  double* cs = un + K;
  double* xs = cs + K;
  // The lanes region starts at the next sizeof(Lanes) boundary (doubles() leaves kLanes of slack).
  const uintptr_t at = reinterpret_cast<uintptr_t>(ws + L.lanes());
  Lanes* cl = reinterpret_cast<Lanes*>((at + sizeof(Lanes) - 1) / sizeof(Lanes) * sizeof(Lanes));
  Lanes* xl = cl + K;
  QpWorkT<Lanes> W(xl + K, K);
  double scale[kLanes];
  for (int b0 = 0; b0 < T; b0 += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const int b = b0 + l < T ? b0 + l : b0;  // idle lanes repeat the group's first target
      const Tu* u = targets + b * K;
      double sc = 0.0;
      bool saw_nan = false;
      for (int i = 0; i < K; ++i) {
        const double v = fabs_(double(u[i]));
        if (is_nan(v)) saw_nan = true;
        if (v > sc) sc = v;
      }
      if (saw_nan) sc = nan();
      sc = sc > 0.0 ? sc : 1.0;
      scale[l] = sc;
      for (int i = 0; i < K; ++i) un[i] = double(u[i]) / sc;
      matvec(t, Q, K, un, cs, K);
      for (int i = 0; i < K; ++i) cl[i][l] = cs[i];
    }
    mehrotra_iterate(t, Q, K, cl, K, false, iterations, xl, W);
    for (int l = 0; l < kLanes && b0 + l < T; ++l) {
      const int b = b0 + l;
      for (int i = 0; i < K; ++i) {
        xs[i] = xl[i][l];
        Ws.z[i] = W.z[i][l];
        cs[i] = cl[i][l];
      }
      support_polish(t, Q, K, cs, xs, K, false, Ws);
      for (int i = 0; i < K; ++i) V[b * K + i] = double(targets[b * K + i]) + xs[i] * scale[l];
    }
  }
}
#endif

}  // namespace solvers
}  // namespace fastmtl
