// How one solve is spread over threads, and the steps every solver starts with.
//
// A solve runs on a "block": on the host one thread; on the device one CUDA block. The block is cut
// into sub-teams (warps on the device) that take independent sub-problems (UPGrad's targets, the
// candidate supports of a polish) in turn, and every thread can also take tiny sub-problems alone
// (the support enumerations). Every result is independent of this split.
#pragma once

#include "common.h"

namespace fastmtl {
namespace solvers {

template <class Block, class Sub>
struct Ctx {
  Block block;   // every thread of the solve
  Sub sub;       // this thread's sub-team
  int sub_id;    // index of the sub-team, in [0, num_subs)
  int num_subs;
  int tid;       // this thread, in [0, nthreads)
  int nthreads;
};

using HostCtx = Ctx<Solo, Solo>;
FMTL_INL HostCtx host_ctx() { return HostCtx{Solo{}, Solo{}, 0, 1, 0, 1}; }

// Whether every thread's flags[i] (K of them, 1.0 = bad) is 0: one sum on thread 0, broadcast
// through `slot`. Call after the loop that sets the flags, on every thread of the block.
template <class B>
FMTL_INL bool block_all_ok(const B& t, int K, const double* flags, double* slot) {
  t.sync();
  if (t.rank() == 0) {
    double bad = 0.0;
    for (int i = 0; i < K; ++i) bad += flags[i];
    *slot = bad;
  }
  t.sync();
  const bool ok = *slot == 0.0;
  t.sync();
  return ok;
}

// Gs = (G + Gᵀ)/2 in float64 (fastmtl.solvers' symmetric64), row-major into S (leading dimension K),
// and whether every entry of Gs is finite (false also when the sum overflows). `flags` holds K
// doubles, `slot` one.
template <class B, class Tin>
FMTL_INL bool load_symmetric(const B& t, const Tin* G, int K, double* S, double* flags, double* slot) {
  FMTL_FOR(t, i, K) {
    bool ok = true;
    for (int j = 0; j < K; ++j) {
      const double v = 0.5 * (double(G[i * K + j]) + double(G[j * K + i]));
      S[i * K + j] = v;
      ok = ok && finite(v);
    }
    flags[i] = ok ? 0.0 : 1.0;
  }
  return block_all_ok(t, K, flags, slot);
}

// Writes NaN into out[0..n) (the result for a non-finite G).
template <class B>
FMTL_INL void fill_nan(const B& t, double* out, int n) {
  FMTL_FOR(t, i, n) out[i] = nan();
  t.sync();
}

// Ĝ = Gs / tr(Gs) where the trace is positive (else Gs), in place; returns the trace.
template <class B>
FMTL_INL double trace_normalize(const B& t, double* S, int K, double* slot) {
  if (t.rank() == 0) {
    double tr = 0.0;
    for (int i = 0; i < K; ++i) tr += S[i * K + i];
    *slot = tr;
  }
  t.sync();
  const double tr = *slot;
  const double scale = tr > 0.0 ? tr : 1.0;
  FMTL_FOR(t, i, K) {
    for (int j = 0; j < K; ++j) S[i * K + j] = S[i * K + j] / scale;
  }
  t.sync();
  return tr;
}

// Reduction of per-thread (value, index) minima to the first index of the least value, as
// torch.argmin (values are never NaN here). `vals`/`idxs` hold one entry per thread.
template <class B>
FMTL_INL int argmin_threads(const B& t, double* vals, double* idxs, int nthreads, double* slot) {
  t.sync();
  if (t.rank() == 0) {
    double best = vals[0];
    double bi = idxs[0];
    for (int k = 1; k < nthreads; ++k) {
      if (vals[k] < best || (vals[k] == best && idxs[k] < bi)) {
        best = vals[k];
        bi = idxs[k];
      }
    }
    *slot = bi;
  }
  t.sync();
  const int r = int(*slot);
  t.sync();
  return r;
}

}  // namespace solvers
}  // namespace fastmtl
