// Launch plans and entry points of the device solvers (csrc/solver_kernels.cu). Included by the
// binding (csrc/solver_ops_cuda.cpp, plain host C++) and by the kernels; no torch headers.
//
// One solve = one CUDA block (grid = the batch), reading G and writing the result in device memory:
// no host synchronisation, nothing but a kernel launch on the given stream (capturable in a CUDA
// graph). A block's workspace lives in dynamic shared memory when it fits in the default 48 KiB,
// otherwise in a global scratch buffer the binding allocates (`scratch_doubles` per block).
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "cagrad_barrier.h"
#include "dual_cone.h"
#include "eigen_weights.h"
#include "jacobi.h"
#include "min_norm.h"
#include "nash.h"
#include "projection_rounds.h"

namespace fastmtl {
namespace solvers {

struct LaunchPlan {
  int threads = 32;
  int64_t workspace_doubles = 0;  // per block
  size_t shared_bytes = 0;        // dynamic shared memory (0 when the workspace is in scratch)
  int64_t scratch_doubles = 0;    // per block, in the global scratch buffer (0 when shared)
};

constexpr size_t kDefaultSharedBytes = 48 * 1024;
// Largest block of each kernel (its __launch_bounds__, so that its registers always fit).
constexpr int kMinNormMaxThreads = 128;
constexpr int kDualConeMaxThreads = 256;
constexpr int kCagradMaxThreads = 256;
constexpr int kNashMaxThreads = 32;
constexpr int kJacobiMaxThreads = 256;
constexpr int kProjectionMaxThreads = 64;  // one thread per row of C (K <= 64)

inline LaunchPlan finish_plan(int threads, int64_t doubles) {
  LaunchPlan p;
  p.threads = threads;
  p.workspace_doubles = doubles;
  if (size_t(doubles) * sizeof(double) <= kDefaultSharedBytes) {
    p.shared_bytes = size_t(doubles) * sizeof(double);
  } else {
    p.scratch_doubles = doubles;
  }
  return p;
}

inline LaunchPlan min_norm_plan(int K) {
  const int threads = K <= kMinNormEnumMaxK ? kMinNormMaxThreads : 32;
  return finish_plan(threads, MinNormLayout{K, threads}.doubles());
}

inline LaunchPlan dual_cone_plan(int K, int T) {
  const int max_subs = kDualConeMaxThreads / 32;
  const int subs = T < max_subs ? (T < 1 ? 1 : T) : max_subs;
  return finish_plan(32 * subs, DualConeLayout{K, subs}.doubles());
}

inline LaunchPlan cagrad_plan(int K) {
  if (K <= kCagradEnumMaxK) return finish_plan(kCagradMaxThreads, CagradEnumLayout{K, kCagradMaxThreads}.doubles());
  return finish_plan(kCagradMaxThreads, CagradBarrierLayout{K, kCagradMaxThreads / 32}.doubles());
}

inline LaunchPlan nash_plan(int K) { return finish_plan(kNashMaxThreads, NashLayout{K}.doubles()); }

inline LaunchPlan jacobi_plan(int K) { return finish_plan(K <= 16 ? 64 : kJacobiMaxThreads, JacobiLayout{K}.doubles()); }

// IMTL-G / Aligned-MTL: Jacobi's block, with the weights' vectors added to its workspace.
inline LaunchPlan eigen_weights_plan(int K) {
  return finish_plan(K <= 16 ? 64 : kJacobiMaxThreads, EigenWeightsLayout{K}.doubles());
}

inline int projection_threads(int K) { return K <= 32 ? 32 : kProjectionMaxThreads; }
inline LaunchPlan pcgrad_plan(int K) { return finish_plan(projection_threads(K), PcgradLayout{K}.doubles()); }
inline LaunchPlan gradvac_plan(int K) { return finish_plan(projection_threads(K), GradvacLayout{K}.doubles()); }

// G: batch x K x K, float32 (g_double = false) or float64; every other array float64, contiguous.
cudaError_t min_norm_launch(const LaunchPlan& plan, const void* G, bool g_double, int64_t batch, int K, double eps_g,
                            int iterations, double* w, double* scratch, cudaStream_t stream);
// targets: (1 or batch) x T x K (targets_shared: one set for every batch entry); V: batch x T x K.
cudaError_t dual_cone_launch(const LaunchPlan& plan, const void* G, bool g_double, const double* targets,
                             bool targets_shared, int64_t batch, int T, int K, int iterations, double norm_eps,
                             double reg_eps, double* V, double* scratch, cudaStream_t stream);
cudaError_t cagrad_launch(const LaunchPlan& plan, const void* G, bool g_double, int64_t batch, int K, double c,
                          int iterations, double theta, double* w, double* lam, double* scratch, cudaStream_t stream);
// init: nullptr, or (1 or batch) x K.
cudaError_t nash_launch(const LaunchPlan& plan, const void* G, bool g_double, const double* init, bool init_shared,
                        int64_t batch, int K, int iterations, double* alpha, double* scratch, cudaStream_t stream);
cudaError_t jacobi_launch(const LaunchPlan& plan, const void* G, bool g_double, int64_t batch, int K, int sweeps,
                          double* evals, double* evecs, double* scratch, cudaStream_t stream);
// kind: an EigenWeightsKind; lam: batch x K.
cudaError_t eigen_weights_launch(const LaunchPlan& plan, const void* G, bool g_double, int64_t batch, int K, int sweeps,
                                 double eps, int kind, double* lam, double* scratch, cudaStream_t stream);
// orders: K x (K - 1) int64 (shared by the batch); C: batch x K x K.
cudaError_t pcgrad_launch(const LaunchPlan& plan, const void* G, bool g_double, const int64_t* orders, int64_t batch,
                          int K, double eps, double* C, double* scratch, cudaStream_t stream);
// targets: (1 or batch) x K x K; lam: batch x K; targets_out: batch x K x K.
cudaError_t gradvac_launch(const LaunchPlan& plan, const void* G, bool g_double, const double* targets,
                           bool targets_shared, const int64_t* orders, int64_t batch, int K, double beta, double eps,
                           double* lam, double* targets_out, double* scratch, cudaStream_t stream);

}  // namespace solvers
}  // namespace fastmtl
