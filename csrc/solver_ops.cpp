// fastmtl's compiled K x K solvers: op schemas and their CPU kernels (the CUDA kernels are
// registered by solver_ops_cuda.cpp when the extension is built with nvcc).
//
// Ops (namespace fastmtl; G is [..., K, K] with 1 <= K <= 64, any floating dtype, read as float64
// after symmetrisation; results are float64 on G's device, batched over G's leading dimensions):
//
//   solver_min_norm(Tensor G, int iterations) -> Tensor                               w [..., K]
//   solver_dual_cone(Tensor G, Tensor targets, int iterations, float norm_eps, float reg_eps)
//       -> Tensor                                                                     V [..., T, K]
//       targets [T, K] (shared) or [..., T, K] (G's leading dimensions)
//   solver_cagrad(Tensor G, float c, int iterations) -> (Tensor, Tensor)             (w, λ) [..., K]
//   solver_nash(Tensor G, Tensor? init, int iterations) -> Tensor                     α [..., K]
//   solver_eigh(Tensor G, int sweeps) -> (Tensor, Tensor)           (evals [..., K], evecs [..., K, K])
//   solver_pcgrad(Tensor G, Tensor orders, float eps) -> Tensor                       C [..., K, K]
//   solver_gradvac(Tensor G, Tensor targets, Tensor orders, float beta, float eps) -> (Tensor, Tensor)
//       targets [K, K] (shared) or [..., K, K]                       (λ [..., K], new targets [..., K, K])
//       orders: integer [K, K - 1] on G's device, shared by the batch (the tasks row i visits, in order)
//   solver_imtl_g(Tensor G, int sweeps, float eps) -> Tensor                          λ [..., K]
//   solver_aligned_mtl(Tensor G, str scale_mode, int sweeps, float eps) -> Tensor     λ [..., K]
//       IMTL-G's / Aligned-MTL's weights from solver_eigh's decomposition (csrc/solvers/eigen_weights.h);
//       eps: the machine epsilon of the dtype G was computed in (the eigenvalue cut-off);
//       scale_mode: "min", "median" or "rmse"
//
// Algorithms, iteration counts and safeguards are those of the reference solvers in
// fastmtl/solvers/ (see csrc/solvers/*.h). A G with a non-finite entry gives NaN results (every
// entry of that solve), in fixed time. On the host each solve runs on one thread; a batch is split
// over at::parallel_for (every solve is independent, so results do not depend on the thread count).
//
// The fake (meta) kernels are registered in Python by fastmtl.solvers.compiled.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

// The host SIMD lanes (csrc/solvers/common.h) are 64-byte GCC vectors; every function that takes or
// returns one is inlined into its caller, so the ABI note GCC issues for them does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

#include "solver_args.h"
#include "solvers/cagrad_barrier.h"
#include "solvers/dual_cone.h"
#include "solvers/eigen_weights.h"
#include "solvers/jacobi.h"
#include "solvers/min_norm.h"
#include "solvers/nash.h"
#include "solvers/projection_rounds.h"

namespace {

using fastmtl::solver_args::Gram;
namespace sv = fastmtl::solvers;
namespace sa = fastmtl::solver_args;

// Runs fn(b, workspace) for every batch entry; the workspace (per thread, reused across calls)
// holds `doubles` doubles.
template <class F>
void for_each_solve(int64_t batch, int64_t doubles, const F& fn) {
  auto body = [&](int64_t begin, int64_t end) {
    thread_local std::vector<double> ws;
    if (int64_t(ws.size()) < doubles) ws.resize(size_t(doubles));
    for (int64_t b = begin; b < end; ++b) fn(b, ws.data());
  };
  if (batch <= 1) {
    body(0, batch);
  } else {
    at::parallel_for(0, batch, 1, body);
  }
}

#if defined(FMTL_HOST_LANES)
// UPGrad's targets in lockstep (SIMD lanes). Compiled twice, for AVX-512 and for the baseline ISA,
// and picked at load time from the CPU's features (GCC target clones); every solver body is
// inlined into these entry points, so each clone has its own vector code.
#if defined(__x86_64__) && !defined(__clang__)
#define FASTMTL_LANE_CLONES __attribute__((target_clones("avx512f", "default")))
#else
#define FASTMTL_LANE_CLONES
#endif
FASTMTL_LANE_CLONES void dual_cone_lanes_f64(const double* G, const double* U, int T, int K, int iters, double ne,
                                             double re, double* V, double* ws) {
  sv::dual_cone_solve_lanes(G, U, T, K, iters, ne, re, V, ws);
}
FASTMTL_LANE_CLONES void dual_cone_lanes_f32(const float* G, const double* U, int T, int K, int iters, double ne,
                                             double re, double* V, double* ws) {
  sv::dual_cone_solve_lanes(G, U, T, K, iters, ne, re, V, ws);
}
void dual_cone_lanes(const double* G, const double* U, int T, int K, int iters, double ne, double re, double* V,
                     double* ws) {
  dual_cone_lanes_f64(G, U, T, K, iters, ne, re, V, ws);
}
void dual_cone_lanes(const float* G, const double* U, int T, int K, int iters, double ne, double re, double* V,
                     double* ws) {
  dual_cone_lanes_f32(G, U, T, K, iters, ne, re, V, ws);
}
// Fewer targets leave most lanes idle: one QP at a time is then cheaper.
constexpr int kLanesMinTargets = 3;
#endif

template <class F>
void with_gram_type(const Gram& g, const F& fn) {
  if (g.is_double) {
    fn(g.data.data_ptr<double>());
  } else {
    fn(g.data.data_ptr<float>());
  }
}

void check_cpu(const at::Tensor& G, const char* op) {
  TORCH_CHECK(G.device().is_cpu(), op, ": the CPU kernel got G on ", G.device());
}

at::Tensor min_norm_cpu(const at::Tensor& G, int64_t iterations) {
  const char* op = "fastmtl::solver_min_norm";
  check_cpu(G, op);
  const Gram g = sa::check_gram(G, op);
  const int iters = sa::check_count(iterations, op, "iterations");
  const double eps_g = sa::dtype_eps(G.scalar_type());
  at::Tensor w = at::empty(sa::shape_with(g.batch_shape, {g.K}), G.options().dtype(at::kDouble));
  double* wp = w.data_ptr<double>();
  const int K = g.K;
  with_gram_type(g, [&](const auto* Gp) {
    for_each_solve(g.batch, sv::MinNormLayout{K, 1}.doubles(), [&](int64_t b, double* ws) {
      sv::min_norm_solve(sv::host_ctx(), Gp + b * K * K, K, eps_g, iters, wp + b * K, ws);
    });
  });
  return w;
}

at::Tensor dual_cone_cpu(const at::Tensor& G, const at::Tensor& targets, int64_t iterations, double norm_eps,
                         double reg_eps) {
  const char* op = "fastmtl::solver_dual_cone";
  check_cpu(G, op);
  const Gram g = sa::check_gram(G, op);
  const int iters = sa::check_count(iterations, op, "iterations");
  TORCH_CHECK(targets.dim() >= 2, op, ": targets must be [T, K] or [..., T, K], got ", targets.sizes());
  const int T = int(targets.size(-2));
  bool shared = true;
  const at::Tensor u = sa::per_solve(targets, g, T, op, "targets", G.device(), &shared);
  at::Tensor V = at::empty(sa::shape_with(g.batch_shape, {T, g.K}), G.options().dtype(at::kDouble));
  if (T == 0) return V;
  double* Vp = V.data_ptr<double>();
  const double* up = u.data_ptr<double>();
  const int K = g.K;
  with_gram_type(g, [&](const auto* Gp) {
#if defined(FMTL_HOST_LANES)
    if (T >= kLanesMinTargets) {
      for_each_solve(g.batch, sv::DualConeLanesLayout{K}.doubles(), [&](int64_t b, double* ws) {
        dual_cone_lanes(Gp + b * K * K, up + (shared ? 0 : b * T * K), T, K, iters, norm_eps, reg_eps,
                        Vp + b * T * K, ws);
      });
      return;
    }
#endif
    for_each_solve(g.batch, sv::DualConeLayout{K, 1}.doubles(), [&](int64_t b, double* ws) {
      sv::dual_cone_solve(sv::host_ctx(), Gp + b * K * K, up + (shared ? 0 : b * T * K), T, K, iters, norm_eps,
                          reg_eps, Vp + b * T * K, ws);
    });
  });
  return V;
}

std::tuple<at::Tensor, at::Tensor> cagrad_cpu(const at::Tensor& G, double c, int64_t iterations) {
  const char* op = "fastmtl::solver_cagrad";
  check_cpu(G, op);
  const Gram g = sa::check_gram(G, op);
  const int iters = sa::check_count(iterations, op, "iterations");
  const auto shape = sa::shape_with(g.batch_shape, {g.K});
  at::Tensor w = at::empty(shape, G.options().dtype(at::kDouble));
  at::Tensor lam = at::empty(shape, G.options().dtype(at::kDouble));
  double* wp = w.data_ptr<double>();
  double* lp = lam.data_ptr<double>();
  const int K = g.K;
  const double theta = sa::cagrad_theta(K, iters);
  const int64_t doubles = K <= sv::kCagradEnumMaxK ? sv::CagradEnumLayout{K, 1}.doubles()
                                                   : sv::CagradBarrierLayout{K, 1}.doubles();
  with_gram_type(g, [&](const auto* Gp) {
    for_each_solve(g.batch, doubles, [&](int64_t b, double* ws) {
      if (K <= sv::kCagradEnumMaxK) {
        sv::cagrad_enum_solve(sv::host_ctx(), Gp + b * K * K, K, c, wp + b * K, lp + b * K, ws);
      } else {
        sv::cagrad_barrier_solve(sv::host_ctx(), Gp + b * K * K, K, c, iters, theta, wp + b * K, lp + b * K, ws);
      }
    });
  });
  return {w, lam};
}

at::Tensor nash_cpu(const at::Tensor& G, const std::optional<at::Tensor>& init, int64_t iterations) {
  const char* op = "fastmtl::solver_nash";
  check_cpu(G, op);
  const Gram g = sa::check_gram(G, op);
  const int iters = sa::check_count(iterations, op, "iterations");
  bool shared = true;
  at::Tensor start;
  if (init.has_value() && init->defined()) start = sa::per_solve(*init, g, 0, op, "init", G.device(), &shared);
  at::Tensor alpha = at::empty(sa::shape_with(g.batch_shape, {g.K}), G.options().dtype(at::kDouble));
  double* ap = alpha.data_ptr<double>();
  const double* ip = start.defined() ? start.data_ptr<double>() : nullptr;
  const int K = g.K;
  with_gram_type(g, [&](const auto* Gp) {
    for_each_solve(g.batch, sv::NashLayout{K}.doubles(), [&](int64_t b, double* ws) {
      const double* i0 = ip == nullptr ? nullptr : ip + (shared ? 0 : b * K);
      sv::nash_solve(sv::host_ctx(), Gp + b * K * K, i0, K, iters, ap + b * K, ws);
    });
  });
  return alpha;
}

std::tuple<at::Tensor, at::Tensor> eigh_cpu(const at::Tensor& G, int64_t sweeps) {
  const char* op = "fastmtl::solver_eigh";
  check_cpu(G, op);
  const Gram g = sa::check_gram(G, op);
  const int n = sa::check_count(sweeps, op, "sweeps");
  at::Tensor evals = at::empty(sa::shape_with(g.batch_shape, {g.K}), G.options().dtype(at::kDouble));
  at::Tensor evecs = at::empty(sa::shape_with(g.batch_shape, {g.K, g.K}), G.options().dtype(at::kDouble));
  double* ep = evals.data_ptr<double>();
  double* vp = evecs.data_ptr<double>();
  const int K = g.K;
  with_gram_type(g, [&](const auto* Gp) {
    for_each_solve(g.batch, sv::JacobiLayout{K}.doubles(), [&](int64_t b, double* ws) {
      sv::jacobi_solve(sv::host_ctx(), Gp + b * K * K, K, n, ep + b * K, vp + b * K * K, ws);
    });
  });
  return {evals, evecs};
}

at::Tensor eigen_weights_cpu(const at::Tensor& G, int64_t sweeps, double eps, int kind, const char* op) {
  check_cpu(G, op);
  const Gram g = sa::check_gram(G, op);
  const int n = sa::check_count(sweeps, op, "sweeps");
  sa::check_eps(eps, op);
  at::Tensor lam = at::empty(sa::shape_with(g.batch_shape, {g.K}), G.options().dtype(at::kDouble));
  double* lp = lam.data_ptr<double>();
  const int K = g.K;
  with_gram_type(g, [&](const auto* Gp) {
    for_each_solve(g.batch, sv::EigenWeightsLayout{K}.doubles(), [&](int64_t b, double* ws) {
      sv::eigen_weights_solve(sv::host_ctx(), Gp + b * K * K, K, n, eps, kind, lp + b * K, ws);
    });
  });
  return lam;
}

at::Tensor imtl_g_cpu(const at::Tensor& G, int64_t sweeps, double eps) {
  return eigen_weights_cpu(G, sweeps, eps, sv::kImtlG, "fastmtl::solver_imtl_g");
}

at::Tensor aligned_mtl_cpu(const at::Tensor& G, c10::string_view scale_mode, int64_t sweeps, double eps) {
  const char* op = "fastmtl::solver_aligned_mtl";
  return eigen_weights_cpu(G, sweeps, eps, sa::aligned_scale_kind(scale_mode, op), op);
}

// The host reads the orders anyway: an index outside [0, K) is an error here (NaN on the device).
at::Tensor host_orders(const at::Tensor& orders, const Gram& g, const char* op) {
  at::Tensor o = sa::check_orders(orders, g.K, op, g.data.device());
  const int64_t* p = o.data_ptr<int64_t>();
  for (int64_t n = 0; n < o.numel(); ++n) {
    TORCH_CHECK(p[n] >= 0 && p[n] < g.K, op, ": orders must hold task indices in [0, ", g.K, "), got ", p[n]);
  }
  return o;
}

at::Tensor pcgrad_cpu(const at::Tensor& G, const at::Tensor& orders, double eps) {
  const char* op = "fastmtl::solver_pcgrad";
  check_cpu(G, op);
  const Gram g = sa::check_gram(G, op);
  const at::Tensor o = host_orders(orders, g, op);
  at::Tensor C = at::empty(sa::shape_with(g.batch_shape, {g.K, g.K}), G.options().dtype(at::kDouble));
  double* cp = C.data_ptr<double>();
  const int64_t* op_ = o.data_ptr<int64_t>();
  const int K = g.K;
  with_gram_type(g, [&](const auto* Gp) {
    for_each_solve(g.batch, sv::PcgradLayout{K}.doubles(), [&](int64_t b, double* ws) {
      sv::pcgrad_solve(sv::host_ctx(), Gp + b * K * K, op_, K, eps, cp + b * K * K, ws);
    });
  });
  return C;
}

std::tuple<at::Tensor, at::Tensor> gradvac_cpu(const at::Tensor& G, const at::Tensor& targets,
                                               const at::Tensor& orders, double beta, double eps) {
  const char* op = "fastmtl::solver_gradvac";
  check_cpu(G, op);
  const Gram g = sa::check_gram(G, op);
  const at::Tensor o = host_orders(orders, g, op);
  bool shared = true;
  const at::Tensor phi = sa::per_solve(targets, g, g.K, op, "targets", G.device(), &shared);
  at::Tensor lam = at::empty(sa::shape_with(g.batch_shape, {g.K}), G.options().dtype(at::kDouble));
  at::Tensor out = at::empty(sa::shape_with(g.batch_shape, {g.K, g.K}), G.options().dtype(at::kDouble));
  double* lp = lam.data_ptr<double>();
  double* pp = out.data_ptr<double>();
  const double* ip = phi.data_ptr<double>();
  const int64_t* op_ = o.data_ptr<int64_t>();
  const int K = g.K;
  with_gram_type(g, [&](const auto* Gp) {
    for_each_solve(g.batch, sv::GradvacLayout{K}.doubles(), [&](int64_t b, double* ws) {
      sv::gradvac_solve(sv::host_ctx(), Gp + b * K * K, ip + (shared ? 0 : b * K * K), op_, K, beta, eps, lp + b * K,
                        pp + b * K * K, ws);
    });
  });
  return {lam, out};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastmtl, m) {
  m.set_python_module("fastmtl.solvers.compiled");
  m.def("solver_min_norm(Tensor G, int iterations) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def("solver_dual_cone(Tensor G, Tensor targets, int iterations, float norm_eps, float reg_eps) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  m.def("solver_cagrad(Tensor G, float c, int iterations) -> (Tensor, Tensor)", {at::Tag::pt2_compliant_tag});
  m.def("solver_nash(Tensor G, Tensor? init, int iterations) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def("solver_eigh(Tensor G, int sweeps) -> (Tensor, Tensor)", {at::Tag::pt2_compliant_tag});
  m.def("solver_pcgrad(Tensor G, Tensor orders, float eps) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def("solver_gradvac(Tensor G, Tensor targets, Tensor orders, float beta, float eps) -> (Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
  m.def("solver_imtl_g(Tensor G, int sweeps, float eps) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def("solver_aligned_mtl(Tensor G, str scale_mode, int sweeps, float eps) -> Tensor", {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) {
  m.impl("solver_min_norm", &min_norm_cpu);
  m.impl("solver_dual_cone", &dual_cone_cpu);
  m.impl("solver_cagrad", &cagrad_cpu);
  m.impl("solver_nash", &nash_cpu);
  m.impl("solver_eigh", &eigh_cpu);
  m.impl("solver_pcgrad", &pcgrad_cpu);
  m.impl("solver_gradvac", &gradvac_cpu);
  m.impl("solver_imtl_g", &imtl_g_cpu);
  m.impl("solver_aligned_mtl", &aligned_mtl_cpu);
}
