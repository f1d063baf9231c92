// Runs the solver templates of csrc/solvers/ as the CUDA kernels do (a block of threads split into
// sub-teams, barriers for __syncthreads/__syncwarp), with std::thread and std::barrier on the host,
// and checks that every result is bitwise equal to the single-thread host solve.
//
// The solvers are written so that the split of a block into threads never changes the arithmetic
// (reductions by rank 0 in index order, element-wise loops split across ranks), so any difference
// is a bug of the decomposition: a missing barrier (a race) or a wrong index in a parallel loop.
// Built and run by tests/test_solver_teams.py, also under ThreadSanitizer where available.
//
// Usage: solver_team_check <threads> <sub_team_size>   (threads a multiple of sub_team_size)
// Prints one line per mismatch and "OK <solves>" at the end; exits 1 on any mismatch.
#include <barrier>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "solvers/cagrad_barrier.h"
#include "solvers/dual_cone.h"
#include "solvers/eigen_weights.h"
#include "solvers/jacobi.h"
#include "solvers/min_norm.h"
#include "solvers/nash.h"
#include "solvers/projection_rounds.h"

namespace sv = fastmtl::solvers;

// A team of host threads sharing a barrier: rank in [0, size).
struct ThreadTeam {
  std::barrier<>* bar;
  int r, n;
  int rank() const { return r; }
  int size() const { return n; }
  void sync() const { bar->arrive_and_wait(); }
};

using EmuCtx = sv::Ctx<ThreadTeam, ThreadTeam>;

// Runs fn(ctx) on `threads` threads split into sub-teams of `sub` threads.
template <class F>
void run_block(int threads, int sub, const F& fn) {
  std::barrier<> block(threads);
  std::vector<std::barrier<>*> subs;
  for (int s = 0; s < threads / sub; ++s) subs.push_back(new std::barrier<>(sub));
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      EmuCtx c{ThreadTeam{&block, t, threads}, ThreadTeam{subs[t / sub], t % sub, sub}, t / sub, threads / sub, t,
               threads};
      fn(c);
    });
  }
  for (auto& th : pool) th.join();
  for (auto* b : subs) delete b;
}

// Deterministic test matrices: G = J Jᵀ for a K x D matrix J of a few families.
struct Rng {
  uint64_t s;
  double next() {  // uniform in [-1, 1)
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    return double(int64_t(s >> 11) - (int64_t(1) << 52)) / double(int64_t(1) << 52);
  }
};

std::vector<double> make_gram(int K, int family, uint64_t seed) {
  const int D = K + 3;
  Rng rng{seed * 7919 + uint64_t(K) * 131 + uint64_t(family)};
  std::vector<double> J(size_t(K) * D);
  for (auto& v : J) v = rng.next();
  if (family == 1 && K > 1) {  // rank deficient: the second half copies the first half
    for (int i = K / 2; i < K; ++i)
      for (int d = 0; d < D; ++d) J[i * D + d] = J[(i - K / 2) * D + d] * (i % 2 ? 1.0 : -0.5);
  }
  if (family == 2) {  // a zero task
    for (int d = 0; d < D; ++d) J[d] = 0.0;
  }
  if (family == 3) {  // conflicting: a shared direction with alternating signs
    for (int i = 0; i < K; ++i)
      for (int d = 0; d < D; ++d) J[i * D + d] = (i % 2 ? -1.0 : 1.0) * J[d] + 0.3 * J[i * D + d];
  }
  std::vector<double> G(size_t(K) * K);
  for (int i = 0; i < K; ++i)
    for (int j = 0; j < K; ++j) {
      double s = 0.0;
      for (int d = 0; d < D; ++d) s += J[i * D + d] * J[j * D + d];
      G[i * K + j] = s;
    }
  return G;
}

int mismatches = 0;

void compare(const char* what, int K, int family, const std::vector<double>& a, const std::vector<double>& b) {
  if (std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) != 0) {
    for (size_t i = 0; i < a.size(); ++i) {
      if (std::memcmp(&a[i], &b[i], sizeof(double)) != 0) {
        std::printf("MISMATCH %s K=%d family=%d entry %zu: host %.17g team %.17g\n", what, K, family, i, a[i], b[i]);
        break;
      }
    }
    ++mismatches;
  }
}

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 8;
  const int sub = argc > 2 ? std::atoi(argv[2]) : 4;
  if (threads < 1 || sub < 1 || threads % sub != 0) {
    std::fprintf(stderr, "threads must be a positive multiple of sub\n");
    return 2;
  }
  const int Ks[] = {1, 2, 3, 5, 8, 9, 11, 13};
  int solves = 0;
  for (int K : Ks) {
    for (int family = 0; family < 4; ++family) {
      const std::vector<double> G = make_gram(K, family, 1);
      const int nsub = threads / sub;
      // MGDA
      {
        std::vector<double> h(K), e(K);
        std::vector<double> ws(sv::MinNormLayout{K, 1}.doubles());
        sv::min_norm_solve(sv::host_ctx(), G.data(), K, 2.220446049250313e-16, 30, h.data(), ws.data());
        std::vector<double> wt(sv::MinNormLayout{K, threads}.doubles());
        run_block(threads, sub, [&](const EmuCtx& c) {
          sv::min_norm_solve(c, G.data(), K, 2.220446049250313e-16, 30, e.data(), wt.data());
        });
        compare("min_norm", K, family, h, e);
      }
      // UPGrad (K targets) and DualProj (one target)
      for (int T : {K, 1}) {
        std::vector<double> U(size_t(T) * K, 0.0);
        for (int t = 0; t < T; ++t) U[t * K + (T == 1 ? 0 : t)] = 1.0;
        if (T == 1)
          for (int i = 0; i < K; ++i) U[i] = 1.0 / K;
        std::vector<double> h(size_t(T) * K), e(size_t(T) * K);
        std::vector<double> ws(sv::DualConeLayout{K, 1}.doubles());
        sv::dual_cone_solve(sv::host_ctx(), G.data(), U.data(), T, K, 16, 1e-4, 1e-4, h.data(), ws.data());
        std::vector<double> wt(sv::DualConeLayout{K, nsub}.doubles());
        run_block(threads, sub, [&](const EmuCtx& c) {
          sv::dual_cone_solve(c, G.data(), U.data(), T, K, 16, 1e-4, 1e-4, e.data(), wt.data());
        });
        compare(T == 1 ? "dualproj" : "upgrad", K, family, h, e);
      }
      // CAGrad
      {
        const int iters = 60;
        const double theta = __builtin_pow(1e-12 / (1.0 / K), 1.0 / (iters - 1));
        std::vector<double> hw(K), hl(K), ew(K), el(K);
        const bool enumerate = K <= sv::kCagradEnumMaxK;
        std::vector<double> ws(enumerate ? sv::CagradEnumLayout{K, 1}.doubles() : sv::CagradBarrierLayout{K, 1}.doubles());
        if (enumerate) {
          sv::cagrad_enum_solve(sv::host_ctx(), G.data(), K, 0.5, hw.data(), hl.data(), ws.data());
        } else {
          sv::cagrad_barrier_solve(sv::host_ctx(), G.data(), K, 0.5, iters, theta, hw.data(), hl.data(), ws.data());
        }
        std::vector<double> wt(enumerate ? sv::CagradEnumLayout{K, threads}.doubles()
                                         : sv::CagradBarrierLayout{K, nsub}.doubles());
        run_block(threads, sub, [&](const EmuCtx& c) {
          if (enumerate) {
            sv::cagrad_enum_solve(c, G.data(), K, 0.5, ew.data(), el.data(), wt.data());
          } else {
            sv::cagrad_barrier_solve(c, G.data(), K, 0.5, iters, theta, ew.data(), el.data(), wt.data());
          }
        });
        compare("cagrad w", K, family, hw, ew);
        compare("cagrad lambda", K, family, hl, el);
      }
      // Nash-MTL, cold and warm started
      for (int warm = 0; warm < 2; ++warm) {
        std::vector<double> init(K, 0.5), h(K), e(K);
        const double* start = warm ? init.data() : nullptr;
        std::vector<double> ws(sv::NashLayout{K}.doubles()), wt(sv::NashLayout{K}.doubles());
        sv::nash_solve(sv::host_ctx(), G.data(), start, K, sv::default_nash_iterations(K), h.data(), ws.data());
        run_block(threads, sub, [&](const EmuCtx& c) {
          sv::nash_solve(c, G.data(), start, K, sv::default_nash_iterations(K), e.data(), wt.data());
        });
        compare("nash", K, family, h, e);
      }
      // Jacobi
      {
        std::vector<double> hv(K), hV(size_t(K) * K), ev(K), eV(size_t(K) * K);
        std::vector<double> ws(sv::JacobiLayout{K}.doubles()), wt(sv::JacobiLayout{K}.doubles());
        sv::jacobi_solve(sv::host_ctx(), G.data(), K, sv::default_jacobi_sweeps(K), hv.data(), hV.data(), ws.data());
        run_block(threads, sub, [&](const EmuCtx& c) {
          sv::jacobi_solve(c, G.data(), K, sv::default_jacobi_sweeps(K), ev.data(), eV.data(), wt.data());
        });
        compare("eigh values", K, family, hv, ev);
        compare("eigh vectors", K, family, hV, eV);
      }
      // IMTL-G and Aligned-MTL's three scale modes (float64 and float32 eps)
      for (int kind = sv::kImtlG; kind <= sv::kAlignedRmse; ++kind) {
        const double eps = kind == sv::kAlignedMedian ? 1.1920928955078125e-07 : 2.220446049250313e-16;
        std::vector<double> h(K), e(K);
        std::vector<double> ws(sv::EigenWeightsLayout{K}.doubles()), wt(sv::EigenWeightsLayout{K}.doubles());
        sv::eigen_weights_solve(sv::host_ctx(), G.data(), K, sv::default_jacobi_sweeps(K), eps, kind, h.data(),
                                ws.data());
        run_block(threads, sub, [&](const EmuCtx& c) {
          sv::eigen_weights_solve(c, G.data(), K, sv::default_jacobi_sweeps(K), eps, kind, e.data(), wt.data());
        });
        compare(kind == sv::kImtlG ? "imtl_g" : "aligned_mtl", K, family, h, e);
      }
      // PCGrad and GradVac: orders i+1, i+2, ... (mod K), and nonzero GradVac targets
      {
        std::vector<int64_t> orders(size_t(K) * (K - 1 > 0 ? K - 1 : 0));
        for (int i = 0; i < K; ++i)
          for (int r = 0; r < K - 1; ++r) orders[i * (K - 1) + r] = (i + r + 1) % K;
        std::vector<double> h(size_t(K) * K), e(size_t(K) * K);
        std::vector<double> ws(sv::PcgradLayout{K}.doubles()), wt(sv::PcgradLayout{K}.doubles());
        sv::pcgrad_solve(sv::host_ctx(), G.data(), orders.data(), K, 1e-8, h.data(), ws.data());
        run_block(threads, sub, [&](const EmuCtx& c) {
          sv::pcgrad_solve(c, G.data(), orders.data(), K, 1e-8, e.data(), wt.data());
        });
        compare("pcgrad", K, family, h, e);
        std::vector<double> phi(size_t(K) * K);
        for (int i = 0; i < K * K; ++i) phi[i] = 0.1 * double((i * 7) % 11) - 0.4;
        std::vector<double> hl(K), el(K), hp(size_t(K) * K), ep(size_t(K) * K);
        std::vector<double> gs(sv::GradvacLayout{K}.doubles()), gt(sv::GradvacLayout{K}.doubles());
        sv::gradvac_solve(sv::host_ctx(), G.data(), phi.data(), orders.data(), K, 0.5, 1e-8, hl.data(), hp.data(),
                          gs.data());
        run_block(threads, sub, [&](const EmuCtx& c) {
          sv::gradvac_solve(c, G.data(), phi.data(), orders.data(), K, 0.5, 1e-8, el.data(), ep.data(), gt.data());
        });
        compare("gradvac lambda", K, family, hl, el);
        compare("gradvac targets", K, family, hp, ep);
      }
      solves += 13;
    }
  }
  if (mismatches) {
    std::printf("FAILED %d of %d solves\n", mismatches, solves);
    return 1;
  }
  std::printf("OK %d\n", solves);
  return 0;
}
