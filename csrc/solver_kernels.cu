// Device kernels of the K x K solvers: one block per solve (grid = batch), the solver templates of
// csrc/solvers/ run by the block (sub-teams = warps). Kernels and launchers only: no torch headers.
#include "solvers/launch.h"

namespace fastmtl {
namespace solvers {
namespace {

using DeviceCtx = Ctx<BlockTeam, WarpTeam>;

__device__ __forceinline__ DeviceCtx device_ctx() {
  return DeviceCtx{BlockTeam{}, WarpTeam{}, int(threadIdx.x >> 5), int(blockDim.x >> 5), int(threadIdx.x),
                   int(blockDim.x)};
}

// This block's workspace: dynamic shared memory, or its slice of the global scratch buffer.
__device__ __forceinline__ double* block_workspace(double* scratch, int64_t per_block) {
  extern __shared__ double smem[];
  return scratch != nullptr ? scratch + int64_t(blockIdx.x) * per_block : smem;
}

template <class Tin>
__global__ void __launch_bounds__(kMinNormMaxThreads) min_norm_kernel(const Tin* G, int K, double eps_g, int iterations, double* w, double* scratch,
                                int64_t per_block) {
  const int64_t b = blockIdx.x;
  min_norm_solve(device_ctx(), G + b * K * K, K, eps_g, iterations, w + b * K, block_workspace(scratch, per_block));
}

template <class Tin>
__global__ void __launch_bounds__(kDualConeMaxThreads) dual_cone_kernel(const Tin* G, const double* targets, bool targets_shared, int T, int K,
                                 int iterations, double norm_eps, double reg_eps, double* V, double* scratch,
                                 int64_t per_block) {
  const int64_t b = blockIdx.x;
  const double* u = targets + (targets_shared ? 0 : b * T * K);
  dual_cone_solve(device_ctx(), G + b * K * K, u, T, K, iterations, norm_eps, reg_eps, V + b * T * K,
                  block_workspace(scratch, per_block));
}

template <class Tin>
__global__ void __launch_bounds__(kCagradMaxThreads) cagrad_kernel(const Tin* G, int K, double c, int iterations, double theta, double* w, double* lam,
                              double* scratch, int64_t per_block) {
  const int64_t b = blockIdx.x;
  double* ws = block_workspace(scratch, per_block);
  if (K <= kCagradEnumMaxK) {
    cagrad_enum_solve(device_ctx(), G + b * K * K, K, c, w + b * K, lam + b * K, ws);
  } else {
    cagrad_barrier_solve(device_ctx(), G + b * K * K, K, c, iterations, theta, w + b * K, lam + b * K, ws);
  }
}

template <class Tin>
__global__ void __launch_bounds__(kNashMaxThreads) nash_kernel(const Tin* G, const double* init, bool init_shared, int K, int iterations,
                            double* alpha, double* scratch, int64_t per_block) {
  const int64_t b = blockIdx.x;
  const double* start = init == nullptr ? nullptr : init + (init_shared ? 0 : b * K);
  nash_solve(device_ctx(), G + b * K * K, start, K, iterations, alpha + b * K, block_workspace(scratch, per_block));
}

template <class Tin>
__global__ void __launch_bounds__(kJacobiMaxThreads) jacobi_kernel(const Tin* G, int K, int sweeps, double* evals, double* evecs, double* scratch,
                              int64_t per_block) {
  const int64_t b = blockIdx.x;
  jacobi_solve(device_ctx(), G + b * K * K, K, sweeps, evals + b * K, evecs + b * K * K,
               block_workspace(scratch, per_block));
}

template <class Tin>
__global__ void __launch_bounds__(kJacobiMaxThreads) eigen_weights_kernel(const Tin* G, int K, int sweeps, double eps,
                                                                          int kind, double* lam, double* scratch,
                                                                          int64_t per_block) {
  const int64_t b = blockIdx.x;
  eigen_weights_solve(device_ctx(), G + b * K * K, K, sweeps, eps, kind, lam + b * K,
                      block_workspace(scratch, per_block));
}

template <class Tin>
__global__ void __launch_bounds__(kProjectionMaxThreads) pcgrad_kernel(const Tin* G, const int64_t* orders, int K,
                                                                        double eps, double* C, double* scratch,
                                                                        int64_t per_block) {
  const int64_t b = blockIdx.x;
  pcgrad_solve(device_ctx(), G + b * K * K, orders, K, eps, C + b * K * K, block_workspace(scratch, per_block));
}

template <class Tin>
__global__ void __launch_bounds__(kProjectionMaxThreads) gradvac_kernel(const Tin* G, const double* targets,
                                                                         bool targets_shared, const int64_t* orders,
                                                                         int K, double beta, double eps, double* lam,
                                                                         double* targets_out, double* scratch,
                                                                         int64_t per_block) {
  const int64_t b = blockIdx.x;
  gradvac_solve(device_ctx(), G + b * K * K, targets + (targets_shared ? 0 : b * K * K), orders, K, beta, eps,
                lam + b * K, targets_out + b * K * K, block_workspace(scratch, per_block));
}

dim3 grid_of(int64_t batch) { return dim3(unsigned(batch)); }

}  // namespace

cudaError_t min_norm_launch(const LaunchPlan& p, const void* G, bool g_double, int64_t batch, int K, double eps_g,
                            int iterations, double* w, double* scratch, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  if (g_double) {
    min_norm_kernel<double><<<grid_of(batch), p.threads, p.shared_bytes, stream>>>(
        static_cast<const double*>(G), K, eps_g, iterations, w, scratch, p.scratch_doubles);
  } else {
    min_norm_kernel<float><<<grid_of(batch), p.threads, p.shared_bytes, stream>>>(
        static_cast<const float*>(G), K, eps_g, iterations, w, scratch, p.scratch_doubles);
  }
  return cudaGetLastError();
}

cudaError_t dual_cone_launch(const LaunchPlan& p, const void* G, bool g_double, const double* targets,
                             bool targets_shared, int64_t batch, int T, int K, int iterations, double norm_eps,
                             double reg_eps, double* V, double* scratch, cudaStream_t stream) {
  if (batch == 0 || T == 0) return cudaSuccess;
  if (g_double) {
    dual_cone_kernel<double><<<grid_of(batch), p.threads, p.shared_bytes, stream>>>(
        static_cast<const double*>(G), targets, targets_shared, T, K, iterations, norm_eps, reg_eps, V, scratch,
        p.scratch_doubles);
  } else {
    dual_cone_kernel<float><<<grid_of(batch), p.threads, p.shared_bytes, stream>>>(
        static_cast<const float*>(G), targets, targets_shared, T, K, iterations, norm_eps, reg_eps, V, scratch,
        p.scratch_doubles);
  }
  return cudaGetLastError();
}

cudaError_t cagrad_launch(const LaunchPlan& p, const void* G, bool g_double, int64_t batch, int K, double c,
                          int iterations, double theta, double* w, double* lam, double* scratch, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  if (g_double) {
    cagrad_kernel<double><<<grid_of(batch), p.threads, p.shared_bytes, stream>>>(
        static_cast<const double*>(G), K, c, iterations, theta, w, lam, scratch, p.scratch_doubles);
  } else {
    cagrad_kernel<float><<<grid_of(batch), p.threads, p.shared_bytes, stream>>>(
        static_cast<const float*>(G), K, c, iterations, theta, w, lam, scratch, p.scratch_doubles);
  }
  return cudaGetLastError();
}

cudaError_t nash_launch(const LaunchPlan& p, const void* G, bool g_double, const double* init, bool init_shared,
                        int64_t batch, int K, int iterations, double* alpha, double* scratch, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  if (g_double) {
    nash_kernel<double><<<grid_of(batch), p.threads, p.shared_bytes, stream>>>(
        static_cast<const double*>(G), init, init_shared, K, iterations, alpha, scratch, p.scratch_doubles);
  } else {
    nash_kernel<float><<<grid_of(batch), p.threads, p.shared_bytes, stream>>>(
        static_cast<const float*>(G), init, init_shared, K, iterations, alpha, scratch, p.scratch_doubles);
  }
  return cudaGetLastError();
}

cudaError_t jacobi_launch(const LaunchPlan& p, const void* G, bool g_double, int64_t batch, int K, int sweeps,
                          double* evals, double* evecs, double* scratch, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  if (g_double) {
    jacobi_kernel<double><<<grid_of(batch), p.threads, p.shared_bytes, stream>>>(
        static_cast<const double*>(G), K, sweeps, evals, evecs, scratch, p.scratch_doubles);
  } else {
    jacobi_kernel<float><<<grid_of(batch), p.threads, p.shared_bytes, stream>>>(
        static_cast<const float*>(G), K, sweeps, evals, evecs, scratch, p.scratch_doubles);
  }
  return cudaGetLastError();
}

cudaError_t eigen_weights_launch(const LaunchPlan& p, const void* G, bool g_double, int64_t batch, int K, int sweeps,
                                 double eps, int kind, double* lam, double* scratch, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  if (g_double) {
    eigen_weights_kernel<double><<<grid_of(batch), p.threads, p.shared_bytes, stream>>>(
        static_cast<const double*>(G), K, sweeps, eps, kind, lam, scratch, p.scratch_doubles);
  } else {
    eigen_weights_kernel<float><<<grid_of(batch), p.threads, p.shared_bytes, stream>>>(
        static_cast<const float*>(G), K, sweeps, eps, kind, lam, scratch, p.scratch_doubles);
  }
  return cudaGetLastError();
}

cudaError_t pcgrad_launch(const LaunchPlan& p, const void* G, bool g_double, const int64_t* orders, int64_t batch,
                          int K, double eps, double* C, double* scratch, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  if (g_double) {
    pcgrad_kernel<double><<<grid_of(batch), p.threads, p.shared_bytes, stream>>>(
        static_cast<const double*>(G), orders, K, eps, C, scratch, p.scratch_doubles);
  } else {
    pcgrad_kernel<float><<<grid_of(batch), p.threads, p.shared_bytes, stream>>>(
        static_cast<const float*>(G), orders, K, eps, C, scratch, p.scratch_doubles);
  }
  return cudaGetLastError();
}

cudaError_t gradvac_launch(const LaunchPlan& p, const void* G, bool g_double, const double* targets,
                           bool targets_shared, const int64_t* orders, int64_t batch, int K, double beta, double eps,
                           double* lam, double* targets_out, double* scratch, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  if (g_double) {
    gradvac_kernel<double><<<grid_of(batch), p.threads, p.shared_bytes, stream>>>(
        static_cast<const double*>(G), targets, targets_shared, orders, K, beta, eps, lam, targets_out, scratch,
        p.scratch_doubles);
  } else {
    gradvac_kernel<float><<<grid_of(batch), p.threads, p.shared_bytes, stream>>>(
        static_cast<const float*>(G), targets, targets_shared, orders, K, beta, eps, lam, targets_out, scratch,
        p.scratch_doubles);
  }
  return cudaGetLastError();
}

}  // namespace solvers
}  // namespace fastmtl
