"""Soak: every registered method trains a small model for many steps on CPU.

Each run checks, step by step, that

* the parameters, losses and λ stay finite (no NaN/Inf ever);
* λ stays within the range the method documents (:data:`RANGES`, from the README's methods table
  and the methods' docstrings);
* the method's state does not grow beyond what the method defines: the state size (tensor
  elements plus plain numbers in its ``state_dict()``) after the warm-up never exceeds the largest
  size seen in the first epochs after it — every stateful method holds either fixed-size state
  (K, K×K, P×K×K, K×numel buffers, optimizer moments) or a bounded window (DWA's last two epoch
  averages or its ``2n``-call window, weighted PCGrad's previous epoch), none a per-step history;
* the resident memory of the process (``/proc/self/statm``) grows by at most :data:`RSS_SLACK`
  between the end of the warm-up and the end of the run.

The default suite runs 200 steps per method (:func:`test_soak_200`); the 5,000-step version runs
only with ``FASTMTL_SOAK=1`` (``FASTMTL_SOAK=1 python -m pytest tests/test_soak.py -k 5000``; about
``25×`` the time of the short one), never in CI.
"""

from __future__ import annotations

import gc
import math
import os
import resource

import pytest
import torch

import fastmtl
from fastmtl.methods import METHODS, make_method
from fastmtl.training import slgrad_step

K, B, IN, HID = 3, 8, 16, 48
EPOCH = 10          # steps per epoch (end_epoch() for DWA, weighted PCGrad, GradNorm's first-epoch ℓ(0))
WARMUP = 50         # five epochs: every lazily created buffer and every window is full by then
# Resident-memory slack after the warm-up. The model and the per-step temporaries are allocated
# during the warm-up and reused (freed and re-allocated at the same sizes), so a healthy run's RSS
# is flat up to allocator noise: glibc keeps freed small blocks in its arenas and may touch a few
# new pages when fragmentation shifts, and the pytest process around the test allocates a little
# (assertion rewriting, logging). 4 MiB covers that noise; a leak of one task-gradient matrix per
# step (K·D float32 ≈ 40 KB here, D ≈ 3,300) passes it within about 100 steps, so the 200-step run
# (150 measured steps) catches it and the 5,000-step run catches a leak of ~1 KB per step.
RSS_SLACK = 4 << 20

# Extra configurations whose state or λ differ from the defaults'.
EXTRA = [("gradvac", {"granularity": "per_param"}), ("gradnorm", {"variant": "libmtl"}),
         ("dwa", {"window": 3}), ("uw", {"lr": 0.05}), ("olaux", {"horizon": 2}),
         ("moco", {"variant": "libmtl"}), ("moco", {"normalization": "l2"})]

TOL = 1e-9


def _simplex(lam, K):
    return bool((lam >= -TOL).all()) and abs(float(lam.sum()) - 1.0) < 1e-6


def _sum_to(total):
    return lambda lam, K: bool((lam >= -TOL).all()) and abs(float(lam.sum()) - total(K)) < 1e-6 * total(K)


def _main_one(main=0, nonneg=False):
    def check(lam, K):
        aux = torch.cat([lam[:main], lam[main + 1:]])
        return abs(float(lam[main]) - 1.0) < TOL and (not nonneg or bool((aux >= -TOL).all()))
    return check


def _cagrad(c=0.5):
    # λ = K(1/K + c‖g0‖/‖g_w‖·w*)/(1+c²) with w* on the simplex (rescale=1, multiply_by_k=True):
    # every λ_k ≥ 1/(1+c²), and Σλ = K(1 + c‖g0‖/‖g_w‖)/(1+c²) ≥ K/(1+c²).
    return lambda lam, K: bool((lam >= 1 / (1 + c * c) - 1e-9).all())


def _at_least(lo):
    return lambda lam, K: bool((lam >= lo(K) - 1e-9).all())


def _any(lam, K):
    return True


# λ range per method: what its docstring / the README's methods table promise. `None`: the method
# reports no λ (its direction is not one combination of the current gradients) and another
# invariant is checked (:func:`_side_invariant`).
RANGES = {
    "mean": lambda lam, K: bool(torch.allclose(lam, torch.full_like(lam, 1 / K))),
    "sum": lambda lam, K: bool(torch.equal(lam, torch.ones_like(lam))),
    "mgda": _simplex,                      # Σλ = 1, λ ≥ 0 (min-norm point of the simplex)
    "imtl_g": lambda lam, K: abs(float(lam.sum()) - 1.0) < 1e-6,   # Σλ = 1, signs free
    "upgrad": _at_least(lambda K: 1 / K),  # λ = pref + Σ dual variables ≥ 0, pref = 1/K
    "dualproj": _at_least(lambda K: 1 / K),
    "cagrad": _cagrad(),
    "hydalearn": _simplex,                 # normalize="sum": convex weights
    "nash_mtl": _at_least(lambda K: 0.0),  # α > 0 (global-norm clip keeps the sign)
    "gcosim": lambda lam, K: _main_one()(lam, K) and bool(((lam == 0) | (lam == 1)).all()),
    "olaux": _main_one(),                  # λ_main = 1, auxiliaries unnormalised (signs free)
    "gradnorm": _sum_to(lambda K: K),      # Σλ = K, λ ≥ 0 (both variants)
    "dwa": _sum_to(lambda K: K),           # Σλ = K
    "rlw": _simplex,                       # softmax
    "famo": _simplex,                      # softmax of the logits
    "uw": _at_least(lambda K: 0.0),        # ½e^{−s} > 0
    "gemtl": _at_least(lambda K: 0.0),     # ∂M_p/∂ℓ_k = ℓ_k^{p−1} M^{1−p}/K > 0
    # Projection/correction coefficients: λ = Σ_i C_i with C_ii = 1 and corrections of either
    # sign; only finiteness is documented.
    "pcgrad": _any, "wpcgrad": _any, "gradvac": _any, "config": _any, "aligned_mtl": _any,
    "modo": _simplex,                      # Π_Δ of the projected-gradient step
    "sdmgrad": _simplex,                   # (w + λ_pref·w̃)/(1 + λ_pref), w and w̃ on the simplex
    "cr_mogm": _simplex,                   # EMA of the default base's (MGDA's) simplex weights
    "excess_mtl": _sum_to(lambda K: K),    # K·softmax(log λ + η e/e⁰)
    "stch": _at_least(lambda K: 0.0),      # K·softmax(u/μ)_i/(ℓ_i + εn_i) > 0 (warm-up: 1/(ℓ_i + ε))
    "auto_lambda": _any,                   # the meta-weights as they are (signs free, no normalisation)
    "graddrop": None, "db_mtl": None,
    "moco": None,                          # combines the tracked gradients (no λ of the current ones)
    "slgrad": None,                        # checked on slgrad_step's weights instead
    "constant": lambda lam, K: bool(torch.equal(lam, torch.ones_like(lam))),  # weights=None: 1 each
    "krum": lambda lam, K: _simplex(lam, K) and int((lam > 0).sum()) == 1,    # one gradient selected
    "trimmed_mean": None,                  # coordinate-wise: no λ
    "fairgrad": _at_least(lambda K: 0.0),  # w > 0 (×K and the norm clip keep the sign)
    "pcd": _at_least(lambda K: 0.0),       # [1, μ ≥ 0] times positive scales
    "imtl": lambda lam, K: abs(float(lam.sum()) - 1.0) < 1e-6,  # α∘e^s with s = 0 (no lr): Σλ = 1
}


def configs():
    out = [(n, n, {}) for n in sorted(METHODS)]
    out += [(f"{n}{sorted(h.items())}", n, h) for n, h in EXTRA]
    return out


class Net(torch.nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = torch.nn.Sequential(torch.nn.Linear(IN, HID), torch.nn.Tanh(),
                                         torch.nn.Linear(HID, HID), torch.nn.Tanh())
        self.heads = torch.nn.ModuleList(torch.nn.Linear(HID, 1) for _ in range(K))
        self.w = torch.randn(K, IN) / math.sqrt(IN)          # the tasks' targets (fixed)

    def per_sample(self, h, y):
        return torch.stack([(head(h)[:, 0] - y[:, k]) ** 2 for k, head in enumerate(self.heads)])

    def batch(self, gen):
        x = torch.randn(B, IN, generator=gen)
        y = torch.tanh(x @ self.w.T) + 0.1 * torch.randn(B, K, generator=gen)
        y[:, 2] = -y[:, 2]  # task 2 conflicts with tasks 0/1 where their targets correlate
        return x, y


def state_size(m) -> int:
    """Tensor elements plus plain numbers in ``m.state_dict()`` (recursively through sequences)."""
    def size(v):
        if isinstance(v, torch.Tensor):
            return v.numel()
        if isinstance(v, (list, tuple)):
            return sum(size(x) for x in v)
        return 0 if v is None or isinstance(v, str) else 1
    return sum(size(v) for k, v in m.state_dict().items() if not k.startswith("_"))


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:  # not Linux: peak RSS (only grows, so a stricter check)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _side_invariant(name, m, info):
    if name == "gradvac":  # per-parameter: the EMA targets are cosines
        assert bool((m.targets.abs() <= 1 + 1e-12).all())
    if name == "db_mtl":  # α_i = max_j ‖M_j‖ / (‖M_i‖ + eps) ≥ ... ≈ 1 for the largest buffer row
        a = m.alpha
        assert bool(torch.isfinite(a).all()) and float(a.min()) > 1 - 1e-6, a


def soak(label: str, name: str, hp: dict, steps: int) -> dict:
    torch.set_num_threads(1)
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(0)      # data
    mgen = torch.Generator().manual_seed(1)     # the method's random choices
    shared = list(net.trunk.parameters())
    m = None if name == "slgrad" else make_method(name, dict(hp))
    check = None if hp.get("granularity") == "per_param" else RANGES[name]  # one λ per parameter: none reported
    sizes, rss0 = [], None
    for step in range(steps):
        if step == WARMUP:
            gc.collect()
            rss0 = rss_bytes()
        x, y = net.batch(gen)
        opt.zero_grad()
        if name == "slgrad":
            xv, yv = net.batch(gen)
            info = slgrad_step(net.trunk, lambda h, y=y: net.per_sample(h, y),
                               lambda xv=xv, yv=yv: net.per_sample(net.trunk(xv), yv)[0].mean(), shared,
                               inputs=(x,))
            W = info.weights
            assert bool(torch.isfinite(W).all()) and bool((W >= 0).all()), (label, step)
            assert abs(float(W.sum()) - 1.0) < 1e-9 or not W.any(), (label, step)   # ΣW = 1 (or all 0)
            losses = info.losses.mean(1)
        else:
            per = net.per_sample(net.trunk(x), y)
            losses = list(per.mean(1))
            kw = {}
            if name == "hydalearn":   # the main task's gradient on a validation batch
                xv, yv = net.batch(gen)
                kw["reference_grad"] = torch.autograd.grad(net.per_sample(net.trunk(xv), yv)[0].mean(), shared)
            info = fastmtl.backward(losses, net.trunk, m, head_params=net.heads, generator=mgen, **kw)
            losses = torch.stack(losses).detach()
            lam = info.weights
            if check is None:
                assert lam is None, label
                _side_invariant(name, m, info)
            else:
                assert bool(torch.isfinite(lam).all()), (label, step, lam)
                assert check(lam, K), (label, step, lam)
        assert bool(torch.isfinite(losses).all()), (label, step, losses)
        opt.step()
        if m is not None:
            if hasattr(m, "update"):   # FAMO: the losses after the step, same batch
                with torch.no_grad():
                    m.update(net.per_sample(net.trunk(x), y).mean(1))
            if hasattr(m, "end_epoch") and step % EPOCH == EPOCH - 1:
                m.end_epoch()
            sizes.append(state_size(m))
    gc.collect()
    grown = rss_bytes() - rss0
    for p in net.parameters():
        assert bool(torch.isfinite(p).all()), label
    if sizes:
        bound = max(sizes[WARMUP:WARMUP + 3 * EPOCH])
        assert max(sizes[WARMUP:]) <= bound, (label, bound, max(sizes[WARMUP:]))
    assert grown <= RSS_SLACK, (label, grown)
    return {"rss_growth": grown, "state_size": sizes[-1] if sizes else 0}


@pytest.mark.parametrize("label,name,hp", configs(), ids=[c[0] for c in configs()])
def test_soak_200(label, name, hp):
    soak(label, name, hp, 200)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("FASTMTL_SOAK") != "1", reason="5,000-step soak: set FASTMTL_SOAK=1")
@pytest.mark.parametrize("label,name,hp", configs(), ids=[c[0] for c in configs()])
def test_soak_5000(label, name, hp):
    soak(label, name, hp, 5000)


def test_every_registered_method_has_a_documented_range():
    assert set(RANGES) == set(METHODS)
