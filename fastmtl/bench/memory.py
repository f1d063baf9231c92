"""``python -m fastmtl.bench memory``: peak memory and time of one multi-task training step when
the Gram comes from materialised task gradients, module hooks, or representation gradients, with
TorchJD's autogram engine and LibMTL-style ``rep_grad`` measured in the same run; λ agreement in
float64; SLGrad on B4 with hooks vs the forward-mode JVP (:mod:`fastmtl.bench.memory_slgrad`).

Model: an MLP trunk of ``depth`` × (Linear(width) + ReLU) on ``width`` inputs, K heads
Linear(width, 64) + ReLU + Linear(64, 1), MSE losses, batch ``batch``. A step is
``zero_grad(set_to_none=True)``, the forward pass and the multi-task backward.

Peak memory, two independent measurements, both from the state after a step with the ``.grad``
dropped (model, inputs and targets alive), so that both count the step's new ``.grad`` once:

* ``probe``: :class:`AllocationProbe`, a ``TorchDispatchMode`` that adds the bytes of every new
  storage an ATen op returns during the step (forward, backward — autograd's ops are seen, vmapped
  ones included — and ``.grad``) and subtracts them when the storage is freed; the peak of that
  sum. It does not see scratch memory inside a kernel (BLAS workspaces).
* ``rss`` (CPU): the resident-set high-water mark of a fresh subprocess during one step (after a
  warm-up step): ``VmHWM − VmRSS`` around the step, with the peak reset through
  ``/proc/self/clear_refs`` and glibc told to map every allocation above 64 KiB on its own
  (``MALLOC_MMAP_THRESHOLD_``) so that freed memory leaves the RSS at once.

On CUDA the peak is ``torch.cuda.max_memory_allocated`` during the step minus the memory
allocated before it. Times: median of ``reps`` steps after two warm-up steps.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn
from .alloc_probe import AllocationProbe
from .timing import median_time

MODES = ("materialize", "hooks", "representation", "torchjd-autogram", "libmtl-rep_grad")
LAMBDA_METHODS = ("mgda", "upgrad", "cagrad", "pcgrad")


@dataclass
class Config:
    depth: int = 4
    width: int = 1024
    K: int = 8
    batch: int = 64
    head_hidden: int = 64
    device: str = "cpu"


def build(cfg: Config, dtype: torch.dtype, seed: int = 0):
    """The trunk, the K heads, inputs and targets."""
    torch.manual_seed(seed)
    layers: List[nn.Module] = []
    for _ in range(cfg.depth):
        layers += [nn.Linear(cfg.width, cfg.width), nn.ReLU()]
    trunk = nn.Sequential(*layers).to(device=cfg.device, dtype=dtype)
    heads = nn.ModuleList([nn.Sequential(nn.Linear(cfg.width, cfg.head_hidden), nn.ReLU(),
                                         nn.Linear(cfg.head_hidden, 1)) for _ in range(cfg.K)])
    heads = heads.to(device=cfg.device, dtype=dtype)
    x = torch.randn(cfg.batch, cfg.width, device=cfg.device, dtype=dtype)
    y = torch.randn(cfg.batch, cfg.K, device=cfg.device, dtype=dtype)
    return trunk, heads, x, y


def _losses(heads, z, y) -> List[torch.Tensor]:
    return [((h(z).squeeze(-1) - y[:, k]) ** 2).mean() for k, h in enumerate(heads)]


def _torchjd_weighting(method: str):
    import torchjd.aggregation as agg

    makers = {"upgrad": agg.UPGradWeighting, "mgda": agg.MGDAWeighting, "pcgrad": agg.PCGradWeighting,
              "cagrad": lambda: agg.CAGradWeighting(c=0.4), "mean": agg.MeanWeighting,
              "dualproj": agg.DualProjWeighting, "imtl_g": agg.IMTLGWeighting}
    if method not in makers:
        raise KeyError(method)
    return makers[method]()


def make_step(mode: str, method: str, trunk, heads, x, y, seed: int = 0) -> Tuple[Callable, Callable]:
    """``(step, close)``: ``step()`` runs one training step and returns ``(λ, G)`` (``None`` where
    the mode has none); ``close()`` removes hooks."""
    import fastmtl
    from fastmtl.hooks import GramHooks
    from fastmtl.training import hooks_backward
    from fastmtl.training.representation import representation_backward

    params = [*trunk.parameters(), *heads.parameters()]
    gen = torch.Generator(device=x.device).manual_seed(seed)
    close = lambda: None  # noqa: E731

    def zero():
        for p in params:
            p.grad = None

    if mode == "materialize":
        def step():
            zero()
            info = fastmtl.backward(_losses(heads, trunk(x), y), trunk.parameters(), method, head_params=heads,
                                    generator=gen)
            return info.weights, info.gram
    elif mode == "hooks":
        hooks = GramHooks(trunk)

        def step():
            zero()
            info = hooks_backward(_losses(heads, trunk(x), y), hooks, method, head_params=heads, generator=gen)
            return info.weights, info.gram
        close = hooks.remove
    elif mode == "representation":
        def step():
            zero()
            z = trunk(x)
            info = representation_backward(_losses(heads, z, y), z, method, shared_params=trunk.parameters(),
                                           head_params=heads, generator=gen)
            return info.weights, info.gram
    elif mode == "torchjd-autogram":
        from torchjd.autogram import Engine

        engine = Engine(trunk, batch_dim=None)
        weighting = _torchjd_weighting(method)

        def step():
            zero()
            L = torch.stack(_losses(heads, trunk(x), y))
            G = engine.compute_gramian(L)
            w = weighting(G)
            L.backward(w)
            return w.detach(), G.detach()
    elif mode == "libmtl-rep_grad":
        from fastmtl.methods import make_method

        m = make_method(method, {})

        def step():
            # LibMTL's rep_grad pattern: one detached copy of the representation per task, one
            # backward per task (heads get their plain task gradients), the K representation
            # gradients summed over the batch for the Gram, then rep.backward(Σ λ_k ∂ℓ_k/∂z).
            zero()
            z = trunk(x)
            K = len(heads)
            copies = [z.detach().clone().requires_grad_(True) for _ in range(K)]
            losses = [((h(c).squeeze(-1) - y[:, k]) ** 2).mean() for k, (h, c) in enumerate(zip(heads, copies))]
            per = torch.zeros(K, *z.shape, dtype=z.dtype, device=z.device)
            for k in range(K):
                losses[k].backward()
                per[k] = copies[k].grad
            flat = per.reshape(K, z.shape[0], -1).sum(1)
            G = flat @ flat.T
            lam = m.weights(G.to(torch.float64), losses=torch.stack([l.detach() for l in losses]).double(),
                            generator=gen)
            z.backward(torch.einsum("k,k...->...", lam.to(z.dtype), per))
            return lam, G
    else:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    step.reset = zero  # drop the previous step's .grad before a memory measurement
    return step, close


def probe_peak(step: Callable, device: str) -> int:
    """Peak bytes allocated during one call of ``step`` (see the module docstring), from a state
    without ``.grad``: both measurements then count the step's new ``.grad`` once."""
    getattr(step, "reset", lambda: None)()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with AllocationProbe() as probe:
        step()
    return probe.peak


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_child(mode: str, method: str, cfg: Config) -> int:
    """In a fresh process: bytes of resident-set growth during one step (after one warm-up)."""
    trunk, heads, x, y = build(cfg, torch.float32)
    step, _ = make_step(mode, method, trunk, heads, x, y)
    step()
    step.reset()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _status_kb("VmRSS")
    step()
    return (_status_kb("VmHWM") - before) * 1024


def rss_peak(mode: str, method: str, cfg: Config) -> Optional[int]:
    """:func:`rss_child` in a subprocess (``None`` where /proc is missing or the child fails)."""
    if not os.path.exists("/proc/self/clear_refs") or cfg.device != "cpu":
        return None
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0",
               OMP_NUM_THREADS=str(torch.get_num_threads()))
    code = ("import json,sys; from fastmtl.bench.memory import Config, rss_child; "
            "print(json.dumps(rss_child(sys.argv[1], sys.argv[2], Config(**json.loads(sys.argv[3])))))")
    try:
        out = subprocess.run([sys.executable, "-W", "ignore", "-c", code, mode, method, json.dumps(asdict(cfg))],
                             capture_output=True, text=True, env=env, timeout=600, check=True)
        return int(json.loads(out.stdout.strip().splitlines()[-1]))
    except Exception as exc:  # reported as missing, never as a number
        print(f"(rss measurement of {mode} failed: {str(exc).splitlines()[0][:200]})", file=sys.stderr)
        return None


@dataclass
class MemoryRow:
    mode: str
    method: str
    peak_mb: Optional[float]
    rss_mb: Optional[float]
    ms: Optional[float]
    note: str = ""


def measure(cfg: Config, method: str, modes=MODES, reps: int = 5, rss: bool = True) -> List[MemoryRow]:
    """Every mode's probe peak, RSS peak and median step time. The timed steps are interleaved
    (one step of each mode per round) so that a change of load on a shared machine hits every
    mode alike."""
    rows: Dict[str, MemoryRow] = {}
    steps = {}
    for mode in modes:
        trunk, heads, x, y = build(cfg, torch.float32)
        try:
            steps[mode] = make_step(mode, method, trunk, heads, x, y)
        except (ImportError, KeyError) as exc:
            rows[mode] = MemoryRow(mode, method, None, None, None, f"not run: {type(exc).__name__}: {exc}")
    times: Dict[str, List[float]] = {m: [] for m in steps}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mode, (step, _) in steps.items():
            step()
            step()
            rows[mode] = MemoryRow(mode, method, probe_peak(step, cfg.device) / 2 ** 20, None, None)
        for _ in range(reps):
            for mode, (step, _) in steps.items():
                times[mode].append(median_time(step, cfg.device, warmup=0, reps=1))
    for mode, (_, close) in steps.items():
        close()
        rows[mode].ms = statistics.median(times[mode]) * 1e3
    steps.clear()
    out = []
    for mode in modes:
        row = rows[mode]
        if rss and row.ms is not None:
            r = rss_peak(mode, method, cfg)
            row.rss_mb = None if r is None else r / 2 ** 20
        out.append(row)
        print(f"  {mode:18s} peak {_fmt(row.peak_mb)} MiB  rss {_fmt(row.rss_mb)} MiB  {_fmt(row.ms)} ms "
              f"{row.note}", flush=True)
    return out


def _fmt(v: Optional[float]) -> str:
    return "       -" if v is None else f"{v:8.1f}"


def lambda_agreement(cfg: Config, methods=LAMBDA_METHODS) -> Dict[str, Dict[str, float]]:
    """float64: max |λ_mode − λ_materialize| per method (same model, batch and generator seed), and
    the Gram's relative difference."""
    out: Dict[str, Dict[str, float]] = {}
    for method in methods:
        ref_lam = ref_G = None
        out[method] = {}
        for mode in ("materialize", "hooks", "representation", "torchjd-autogram"):
            trunk, heads, x, y = build(cfg, torch.float64)
            try:
                step, close = make_step(mode, method, trunk, heads, x, y, seed=1)
            except (ImportError, KeyError):
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lam, G = step()
            close()
            if mode == "materialize":
                ref_lam, ref_G = lam, G
                continue
            out[method][f"{mode} dλ"] = float((lam.detach().to(ref_lam) - ref_lam).abs().max())
            if mode != "representation":
                out[method][f"{mode} dG (rel.)"] = float((G.detach().to(ref_G) - ref_G).abs().max() / ref_G.abs().max())
    return out
