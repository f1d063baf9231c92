// CUDA kernels of the solver ops defined in solver_ops.cpp (built only with nvcc): checks, output
// and scratch allocation, and one launch per call on the current stream of G's device. No host
// synchronisation anywhere: nothing is read back, so a solve can be captured in a CUDA graph.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "solver_args.h"
#include "solvers/launch.h"

namespace {

using fastmtl::solver_args::Gram;
namespace sv = fastmtl::solvers;
namespace sa = fastmtl::solver_args;

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err),
              " (was fastmtl._C built for this GPU's architecture? see `python -m fastmtl.info`)");
}

Gram check_cuda_gram(const at::Tensor& G, const char* op) {
  TORCH_CHECK(G.is_cuda(), op, ": expected G on a CUDA device, got ", G.device());
  return sa::check_gram(G, op);
}

// Global scratch for workspaces that do not fit in shared memory (nullptr otherwise).
double* scratch_for(const sv::LaunchPlan& plan, int64_t batch, const at::Tensor& like, at::Tensor* keep) {
  if (plan.scratch_doubles == 0 || batch == 0) return nullptr;
  *keep = at::empty({plan.scratch_doubles * batch}, like.options().dtype(at::kDouble));
  return keep->data_ptr<double>();
}

cudaStream_t stream_of(const at::Tensor& G) { return c10::cuda::getCurrentCUDAStream(G.device().index()).stream(); }

at::Tensor min_norm_cuda(const at::Tensor& G, int64_t iterations) {
  const char* op = "fastmtl::solver_min_norm";
  const Gram g = check_cuda_gram(G, op);
  const c10::cuda::CUDAGuard guard(G.device());
  const int iters = sa::check_count(iterations, op, "iterations");
  at::Tensor w = at::empty(sa::shape_with(g.batch_shape, {g.K}), G.options().dtype(at::kDouble));
  const sv::LaunchPlan plan = sv::min_norm_plan(g.K);
  at::Tensor scratch;
  double* sp = scratch_for(plan, g.batch, G, &scratch);
  check_launch(sv::min_norm_launch(plan, g.data.data_ptr(), g.is_double, g.batch, g.K, sa::dtype_eps(G.scalar_type()),
                                   iters, w.data_ptr<double>(), sp, stream_of(G)),
               op);
  return w;
}

at::Tensor dual_cone_cuda(const at::Tensor& G, const at::Tensor& targets, int64_t iterations, double norm_eps,
                          double reg_eps) {
  const char* op = "fastmtl::solver_dual_cone";
  const Gram g = check_cuda_gram(G, op);
  const c10::cuda::CUDAGuard guard(G.device());
  const int iters = sa::check_count(iterations, op, "iterations");
  TORCH_CHECK(targets.dim() >= 2, op, ": targets must be [T, K] or [..., T, K], got ", targets.sizes());
  const int T = int(targets.size(-2));
  bool shared = true;
  const at::Tensor u = sa::per_solve(targets, g, T, op, "targets", G.device(), &shared);
  at::Tensor V = at::empty(sa::shape_with(g.batch_shape, {T, g.K}), G.options().dtype(at::kDouble));
  const sv::LaunchPlan plan = sv::dual_cone_plan(g.K, T);
  at::Tensor scratch;
  double* sp = scratch_for(plan, g.batch, G, &scratch);
  check_launch(sv::dual_cone_launch(plan, g.data.data_ptr(), g.is_double, u.data_ptr<double>(), shared, g.batch, T,
                                    g.K, iters, norm_eps, reg_eps, V.data_ptr<double>(), sp, stream_of(G)),
               op);
  return V;
}

std::tuple<at::Tensor, at::Tensor> cagrad_cuda(const at::Tensor& G, double c, int64_t iterations) {
  const char* op = "fastmtl::solver_cagrad";
  const Gram g = check_cuda_gram(G, op);
  const c10::cuda::CUDAGuard guard(G.device());
  const int iters = sa::check_count(iterations, op, "iterations");
  const auto shape = sa::shape_with(g.batch_shape, {g.K});
  at::Tensor w = at::empty(shape, G.options().dtype(at::kDouble));
  at::Tensor lam = at::empty(shape, G.options().dtype(at::kDouble));
  const sv::LaunchPlan plan = sv::cagrad_plan(g.K);
  at::Tensor scratch;
  double* sp = scratch_for(plan, g.batch, G, &scratch);
  check_launch(sv::cagrad_launch(plan, g.data.data_ptr(), g.is_double, g.batch, g.K, c, iters,
                                 sa::cagrad_theta(g.K, iters), w.data_ptr<double>(), lam.data_ptr<double>(), sp,
                                 stream_of(G)),
               op);
  return {w, lam};
}

at::Tensor nash_cuda(const at::Tensor& G, const std::optional<at::Tensor>& init, int64_t iterations) {
  const char* op = "fastmtl::solver_nash";
  const Gram g = check_cuda_gram(G, op);
  const c10::cuda::CUDAGuard guard(G.device());
  const int iters = sa::check_count(iterations, op, "iterations");
  bool shared = true;
  at::Tensor start;
  if (init.has_value() && init->defined()) start = sa::per_solve(*init, g, 0, op, "init", G.device(), &shared);
  at::Tensor alpha = at::empty(sa::shape_with(g.batch_shape, {g.K}), G.options().dtype(at::kDouble));
  const sv::LaunchPlan plan = sv::nash_plan(g.K);
  at::Tensor scratch;
  double* sp = scratch_for(plan, g.batch, G, &scratch);
  check_launch(sv::nash_launch(plan, g.data.data_ptr(), g.is_double,
                               start.defined() ? start.data_ptr<double>() : nullptr, shared, g.batch, g.K, iters,
                               alpha.data_ptr<double>(), sp, stream_of(G)),
               op);
  return alpha;
}

std::tuple<at::Tensor, at::Tensor> eigh_cuda(const at::Tensor& G, int64_t sweeps) {
  const char* op = "fastmtl::solver_eigh";
  const Gram g = check_cuda_gram(G, op);
  const c10::cuda::CUDAGuard guard(G.device());
  const int n = sa::check_count(sweeps, op, "sweeps");
  at::Tensor evals = at::empty(sa::shape_with(g.batch_shape, {g.K}), G.options().dtype(at::kDouble));
  at::Tensor evecs = at::empty(sa::shape_with(g.batch_shape, {g.K, g.K}), G.options().dtype(at::kDouble));
  const sv::LaunchPlan plan = sv::jacobi_plan(g.K);
  at::Tensor scratch;
  double* sp = scratch_for(plan, g.batch, G, &scratch);
  check_launch(sv::jacobi_launch(plan, g.data.data_ptr(), g.is_double, g.batch, g.K, n, evals.data_ptr<double>(),
                                 evecs.data_ptr<double>(), sp, stream_of(G)),
               op);
  return {evals, evecs};
}

at::Tensor eigen_weights_cuda(const at::Tensor& G, int64_t sweeps, double eps, int kind, const char* op) {
  const Gram g = check_cuda_gram(G, op);
  const c10::cuda::CUDAGuard guard(G.device());
  const int n = sa::check_count(sweeps, op, "sweeps");
  sa::check_eps(eps, op);
  at::Tensor lam = at::empty(sa::shape_with(g.batch_shape, {g.K}), G.options().dtype(at::kDouble));
  const sv::LaunchPlan plan = sv::eigen_weights_plan(g.K);
  at::Tensor scratch;
  double* sp = scratch_for(plan, g.batch, G, &scratch);
  check_launch(sv::eigen_weights_launch(plan, g.data.data_ptr(), g.is_double, g.batch, g.K, n, eps, kind,
                                        lam.data_ptr<double>(), sp, stream_of(G)),
               op);
  return lam;
}

at::Tensor imtl_g_cuda(const at::Tensor& G, int64_t sweeps, double eps) {
  return eigen_weights_cuda(G, sweeps, eps, sv::kImtlG, "fastmtl::solver_imtl_g");
}

at::Tensor aligned_mtl_cuda(const at::Tensor& G, c10::string_view scale_mode, int64_t sweeps, double eps) {
  const char* op = "fastmtl::solver_aligned_mtl";
  return eigen_weights_cuda(G, sweeps, eps, sa::aligned_scale_kind(scale_mode, op), op);
}

at::Tensor pcgrad_cuda(const at::Tensor& G, const at::Tensor& orders, double eps) {
  const char* op = "fastmtl::solver_pcgrad";
  const Gram g = check_cuda_gram(G, op);
  const c10::cuda::CUDAGuard guard(G.device());
  const at::Tensor o = sa::check_orders(orders, g.K, op, G.device());
  at::Tensor C = at::empty(sa::shape_with(g.batch_shape, {g.K, g.K}), G.options().dtype(at::kDouble));
  const sv::LaunchPlan plan = sv::pcgrad_plan(g.K);
  at::Tensor scratch;
  double* sp = scratch_for(plan, g.batch, G, &scratch);
  check_launch(sv::pcgrad_launch(plan, g.data.data_ptr(), g.is_double, o.data_ptr<int64_t>(), g.batch, g.K, eps,
                                 C.data_ptr<double>(), sp, stream_of(G)),
               op);
  return C;
}

std::tuple<at::Tensor, at::Tensor> gradvac_cuda(const at::Tensor& G, const at::Tensor& targets,
                                                const at::Tensor& orders, double beta, double eps) {
  const char* op = "fastmtl::solver_gradvac";
  const Gram g = check_cuda_gram(G, op);
  const c10::cuda::CUDAGuard guard(G.device());
  const at::Tensor o = sa::check_orders(orders, g.K, op, G.device());
  bool shared = true;
  const at::Tensor phi = sa::per_solve(targets, g, g.K, op, "targets", G.device(), &shared);
  at::Tensor lam = at::empty(sa::shape_with(g.batch_shape, {g.K}), G.options().dtype(at::kDouble));
  at::Tensor out = at::empty(sa::shape_with(g.batch_shape, {g.K, g.K}), G.options().dtype(at::kDouble));
  const sv::LaunchPlan plan = sv::gradvac_plan(g.K);
  at::Tensor scratch;
  double* sp = scratch_for(plan, g.batch, G, &scratch);
  check_launch(sv::gradvac_launch(plan, g.data.data_ptr(), g.is_double, phi.data_ptr<double>(), shared,
                                  o.data_ptr<int64_t>(), g.batch, g.K, beta, eps, lam.data_ptr<double>(),
                                  out.data_ptr<double>(), sp, stream_of(G)),
               op);
  return {lam, out};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CUDA, m) {
  m.impl("solver_min_norm", &min_norm_cuda);
  m.impl("solver_dual_cone", &dual_cone_cuda);
  m.impl("solver_cagrad", &cagrad_cuda);
  m.impl("solver_nash", &nash_cuda);
  m.impl("solver_eigh", &eigh_cuda);
  m.impl("solver_pcgrad", &pcgrad_cuda);
  m.impl("solver_gradvac", &gradvac_cuda);
  m.impl("solver_imtl_g", &imtl_g_cuda);
  m.impl("solver_aligned_mtl", &aligned_mtl_cuda);
}
