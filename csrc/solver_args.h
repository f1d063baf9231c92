// Argument checks and shapes shared by the CPU (solver_ops.cpp) and CUDA (solver_ops_cuda.cpp)
// bindings of the solver ops. Host-only, sees ATen.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "solvers/common.h"
#include "solvers/eigen_weights.h"

namespace fastmtl {
namespace solver_args {

// A validated Gram batch: G viewed as [batch, K, K], contiguous, float32 or float64.
struct Gram {
  at::Tensor data;
  int64_t batch = 0;
  int K = 0;
  std::vector<int64_t> batch_shape;
  bool is_double = true;
};

inline Gram check_gram(const at::Tensor& G, const char* op) {
  TORCH_CHECK(G.defined() && G.dim() >= 2, op, ": G must be a [..., K, K] tensor, got ", G.dim(), " dimension(s)");
  const int64_t K = G.size(-1);
  TORCH_CHECK(G.size(-2) == K, op, ": G must be square in its last two dimensions, got ", G.sizes());
  TORCH_CHECK(K >= 1 && K <= solvers::kMaxK, op, ": the compiled solvers handle 1 <= K <= ", solvers::kMaxK,
              ", got K = ", K, " (the reference solvers in fastmtl.solvers handle any K)");
  TORCH_CHECK(at::isFloatingType(G.scalar_type()), op, ": G must be a floating tensor, got ", G.scalar_type());
  Gram g;
  g.K = int(K);
  g.batch_shape.assign(G.sizes().begin(), G.sizes().end() - 2);
  g.batch = 1;
  for (int64_t s : g.batch_shape) g.batch *= s;
  // float32 and float64 are read as they are; other floating types are converted once.
  at::Tensor x = G;
  if (x.scalar_type() != at::kFloat && x.scalar_type() != at::kDouble) x = x.to(at::kDouble);
  g.is_double = x.scalar_type() == at::kDouble;
  g.data = x.contiguous();
  return g;
}

// torch.finfo(dtype).eps of the dtype G was computed in (MGDA's ridge).
inline double dtype_eps(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return 0.0009765625;
    case at::kBFloat16: return 0.0078125;
    case at::kFloat: return 1.1920928955078125e-07;
    default: return 2.220446049250313e-16;
  }
}

inline std::vector<int64_t> shape_with(const std::vector<int64_t>& batch, std::initializer_list<int64_t> tail) {
  std::vector<int64_t> s = batch;
  s.insert(s.end(), tail.begin(), tail.end());
  return s;
}

// A per-solve vector argument ([K]-shaped rows): either one shared row set (no batch dimensions)
// or one per batch entry (leading dimensions equal to G's). Converted to float64 on `device`.
inline at::Tensor per_solve(const at::Tensor& x, const Gram& g, int64_t rows, const char* op, const char* name,
                            const c10::Device& device, bool* shared) {
  const int64_t tail = rows > 0 ? 2 : 1;
  TORCH_CHECK(x.dim() >= tail && x.size(-1) == g.K && (rows <= 0 || x.size(-2) == rows), op, ": ", name,
              " must end with ", (rows > 0 ? "[T, K]" : "[K]"), " (K = ", g.K, "), got ", x.sizes());
  const std::vector<int64_t> lead(x.sizes().begin(), x.sizes().end() - tail);
  *shared = lead.empty();
  if (!lead.empty()) {
    TORCH_CHECK(lead == g.batch_shape, op, ": the leading dimensions of ", name, " (", c10::IntArrayRef(lead),
                ") must be empty or equal to G's (", c10::IntArrayRef(g.batch_shape),
                "); fastmtl.solvers broadcasts them");
  }
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": ", name, " must be a floating tensor, got ", x.scalar_type());
  return x.to(device, at::kDouble).contiguous();
}

// PCGrad's / GradVac's task orders: an integer [K, K - 1] tensor (shared by every solve of the
// batch), as int64 on `device`. The index range is checked by the kernels (NaN), and on the host here.
inline at::Tensor check_orders(const at::Tensor& orders, int K, const char* op, const c10::Device& device) {
  TORCH_CHECK(orders.defined() && orders.dim() == 2 && orders.size(0) == K && orders.size(1) == K - 1, op,
              ": orders must be [K, K - 1] = [", K, ", ", K - 1, "] (one row of task indices per task), got ",
              orders.sizes());
  TORCH_CHECK(!at::isFloatingType(orders.scalar_type()) && !at::isComplexType(orders.scalar_type()) &&
                  orders.scalar_type() != at::kBool,
              op, ": orders must be an integer tensor, got ", orders.scalar_type());
  TORCH_CHECK(orders.device() == device, op, ": orders must be on G's device (", device, "), got ",
              orders.device());
  return orders.to(at::kLong).contiguous();
}

// CAGrad's barrier schedule: τ falls from 1/K to 1e-12 by the factor theta per iteration.
inline double cagrad_theta(int K, int64_t iterations) {
  const double tau0 = 1.0 / double(K), tau_end = 1e-12;
  const int64_t n = iterations - 1 > 1 ? iterations - 1 : 1;
  return std::pow(tau_end / tau0, 1.0 / double(n));
}

// Aligned-MTL's scale_mode as the solver's kind.
inline int aligned_scale_kind(c10::string_view mode, const char* op) {
  if (mode == "min") return solvers::kAlignedMin;
  if (mode == "median") return solvers::kAlignedMedian;
  if (mode == "rmse") return solvers::kAlignedRmse;
  TORCH_CHECK(false, op, ": scale_mode must be \"min\", \"median\" or \"rmse\", got \"", std::string(mode), "\"");
  return 0;
}

// The relative eigenvalue cut-off's epsilon (the machine epsilon of G's dtype): finite, >= 0.
inline double check_eps(double eps, const char* op) {
  TORCH_CHECK(std::isfinite(eps) && eps >= 0.0, op, ": eps must be finite and >= 0, got ", eps);
  return eps;
}

inline int check_count(int64_t n, const char* op, const char* name) {
  TORCH_CHECK(n >= 0 && n <= 100000, op, ": ", name, " must be in [0, 100000], got ", n);
  return int(n);
}

}  // namespace solver_args
}  // namespace fastmtl
