"""B3: SLGrad's Toy_reg with the released code's recipe (Grégoire, Chaudhary, Verboven, "Sample-Level
Weighting for Multi-Task Learning with Auxiliary Tasks", arXiv 2306.04519; code ``vub-dl/SLGrad``
@e5ea387). Data and model: :func:`fastmtl.bench.problems.make_toyreg`.

Options of the code's configuration: ``optimizer`` ``"sgd"`` (momentum = β1, the code's
``beta_1_backbone``) or ``"adam"`` (``betas``, default the code's (0.9, 0.99)), learning rate 1e-2,
100 epochs, batch 16; noise on the main task or on every task; corruption ``random`` / ``gaussian``
(``add_noise``) or ``uni`` / ``bf`` (``FlipLabels``). Methods (:data:`B3_METHODS`):

* ``stl`` — the main task alone; ``mean`` — uniform weights 1/K (the code's ``Unif``);
* ``slgrad`` — :func:`fastmtl.training.slgrad_step`, one update per minibatch (weights from the
  gradients at the current parameters), ``scale="convex"`` (Σ W ℓ with Σ W = 1: the mean-loss
  scale); the validation gradient is that of the whole 200-sample validation set (``Fit_Toy``);
* ``slgrad_la`` — the same with ``lookahead=True``: **the released code's choice** of a look-ahead
  optimizer step with the previous weights, then the weights at the moved parameters and a second
  step (both kept), at the same convex scale;
* ``slgrad_code`` — ``slgrad_la`` at the code's own scale ``"paper_code"`` (Σ W ℓ / B: an effective
  step 1/(K·B) of uniform's, the code's defect 5 in the benchmark specification);
* ``gcosim`` — :class:`fastmtl.methods.GCosSim` (main + auxiliary when their gradients' cosine is
  ≥ 0, else main alone) at learning rate lr/K, i.e. the code's task weights 1/K; heads get their
  own task's plain gradient as in the code (whose per-tensor unit-norm rescaling is not copied);
* ``hydalearn`` — first-order gains with the validation gradient, convex weights;
* ``olaux`` — fastmtl's OL-AUX with its defaults at lr/K (the code's OL-AUX never updates its
  weights, so it trains with uniform weights: defect 7 of the specification).

Diagnostics: the SLGrad weights relative to uniform (``W·K·B``) on corrupted and clean training
samples per task, per epoch; every method's auxiliary share ``Σ_{k≠0} λ_k / Σ λ`` per step.
"""

from __future__ import annotations

import math
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .. import training
from ..methods import make_method
from .exp_io import progress
from .problems import Problem, make_toyreg

B3_METHODS = ("stl", "mean", "slgrad", "slgrad_la", "slgrad_code", "gcosim", "hydalearn", "olaux")
SLGRAD_VARIANTS = {"slgrad": (False, "convex"), "slgrad_la": (True, "convex"), "slgrad_code": (True, "paper_code")}
#: Methods trained at lr/K: their weights sum to between 1 and K (GCosSim: the code's 1/K weights).
SUM_SCALE = ("gcosim", "olaux")


def make_optimizer(name: str, params, lr: float, betas: Tuple[float, float] = (0.9, 0.99)) -> torch.optim.Optimizer:
    """The code's backbone optimizer: ``SGD(lr, momentum=β1)`` or ``Adam(lr, betas)``."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=betas[0])
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(betas))
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {name!r}")


def train_toyreg(problem: Problem, method: str, seed: int, *, optimizer: str = "sgd",
                 betas: Tuple[float, float] = (0.9, 0.99), show_progress: bool = False) -> Dict[str, object]:
    """Train one B3 run; returns ``metrics`` (test), ``diag`` (means over training) and
    ``trace`` (per-epoch ``[epochs]`` tensors: SLGrad's relative weights on noisy / clean main
    samples, the auxiliary share)."""
    if method not in B3_METHODS:
        raise ValueError(f"method must be one of {B3_METHODS}, got {method!r}")
    torch.manual_seed(seed)
    model = problem.make_model()
    shared, heads = list(model.trunk.parameters()), list(model.heads.parameters())
    lr = problem.lr / problem.K if method in SUM_SCALE else problem.lr
    opt = make_optimizer(optimizer, model.parameters(), lr, betas)
    m = None
    if method == "gcosim":
        m = make_method("gcosim", {"main_task": 0})
    elif method == "hydalearn":
        m = make_method("hydalearn", {"main_task": 0, "normalize": "sum", "fallback": "main"})
    elif method == "olaux":
        m = make_method("olaux", {"main_task": 0, "model_lr": lr})
    lookahead, scale = SLGRAD_VARIANTS.get(method, (False, "convex"))
    slg = make_method("slgrad", {"scale": scale}) if method in SLGRAD_VARIANTS else None
    Xtr, Ytr = problem.train
    Xv, Yv = problem.val
    noisy = problem.noisy if problem.noisy is not None else torch.zeros(problem.K, len(Xtr), dtype=torch.bool)
    n, bs, K = len(Xtr), problem.batch_size, problem.K
    # Per epoch and task: Σ relative weight and count, on noisy (0) and clean (1) samples.
    wsum = torch.zeros(problem.epochs, K, 2, dtype=torch.float64)
    wcnt = torch.zeros_like(wsum)
    aux_share = torch.zeros(problem.epochs, dtype=torch.float64)
    la_sum = torch.zeros(problem.epochs, 2, dtype=torch.float64)  # look-ahead step, main: noisy / clean
    frozen = 0  # SLGrad steps whose weights are all 0 (zero validation gradient): no update
    # The look-ahead step's weights: a [K, batch] buffer as in the code, whose short last batch
    # overwrites the first columns only (the code also normalises over the stale rest; not here).
    prev_W = torch.full((K, bs), 1.0 / (K * bs), dtype=torch.float64)
    t0 = time.perf_counter()

    def val_main():
        return problem.per_sample_losses(model(Xv), Yv)[0].mean()

    for epoch in progress(range(problem.epochs), total=problem.epochs, desc=f"b3 {method} seed {seed}",
                          enabled=show_progress):
        steps = 0
        for s in range(0, n, bs):  # the code's loaders do not shuffle: the split's order, every epoch
            idx = torch.arange(s, min(n, s + bs))
            xb, yb = Xtr[idx], Ytr[idx]
            steps += 1
            if slg is not None:
                if not lookahead:
                    opt.zero_grad(set_to_none=True)
                info = training.slgrad_step(
                    model.trunk, lambda h, yb=yb: problem.per_sample_losses(model.from_features(h), yb), val_main,
                    shared, inputs=(xb,), method=slg, lookahead=lookahead, optimizer=opt if lookahead else None,
                    prev_weights=prev_W.clone() if lookahead else None)
                if not lookahead:
                    opt.step()
                W = info.weights
                mask = noisy[:, idx]
                if lookahead:  # the weights the look-ahead step gave these samples: by position
                    la = prev_W[:, :W.shape[1]] * (K * bs)
                    la_sum[epoch, 0] += (la[0] * mask[0]).sum()
                    la_sum[epoch, 1] += (la[0] * ~mask[0]).sum()
                prev_W[:, :W.shape[1]] = W
                rel = W * W.numel()  # relative to uniform 1/(K·B)
                wsum[epoch, :, 0] += (rel * mask).sum(1)
                wcnt[epoch, :, 0] += mask.sum(1)
                wsum[epoch, :, 1] += (rel * ~mask).sum(1)
                wcnt[epoch, :, 1] += (~mask).sum(1)
                tot = float(W.sum())
                aux_share[epoch] += float(W[1:].sum()) / tot if tot > 0 else 0.0
                frozen += tot == 0
                continue
            opt.zero_grad(set_to_none=True)
            if method == "stl":
                problem.per_sample_losses(model(xb), yb)[0].mean().backward()
                opt.step()
                continue
            losses = problem.per_sample_losses(model(xb), yb).mean(1)
            if method == "mean":
                losses.mean().backward()
                lam = torch.full((K,), 1.0 / K, dtype=torch.float64)
            else:
                ref = torch.autograd.grad(val_main(), shared, allow_unused=True) if method == "hydalearn" else None
                info = training.backward(losses, shared, m, head_params=heads, reference_grad=ref,
                                         head_weighting="sum" if method == "gcosim" else "auto")
                lam = info.weights.detach().to(torch.float64).cpu()
            tot = float(lam.sum())
            aux_share[epoch] += float(lam[1:].sum()) / tot if tot != 0 else 0.0
            opt.step()
        aux_share[epoch] /= steps
    seconds = time.perf_counter() - t0
    metrics = problem.evaluate(model, *problem.test)
    rel_w = wsum / wcnt.clamp_min(1)
    diag = {"aux share": float(aux_share.mean()) if method != "stl" else float("nan"),
            "seconds": seconds}
    if slg is not None:
        tot_s, tot_c = wsum.sum(0), wcnt.sum(0)
        for k, name in enumerate(problem.task_names):
            for j, kind in enumerate(("noisy", "clean")):
                if tot_c[k, j] > 0:
                    diag[f"w {kind} {name}"] = float(tot_s[k, j] / tot_c[k, j])
        if "w noisy main" in diag and diag.get("w clean main", 0.0) > 0:
            diag["w noisy/clean main"] = diag["w noisy main"] / diag["w clean main"]
        if lookahead:
            for j, kind in enumerate(("noisy", "clean")):
                if tot_c[0, j] > 0:
                    diag[f"LA-step w {kind} main"] = float(la_sum[:, j].sum() / tot_c[0, j])
        diag["frozen steps"] = frozen / (problem.epochs * math.ceil(n / bs))
    with torch.no_grad():  # the 1-unit ReLU head of the recipe can die: a constant main output
        std = float(model(problem.test[0])[0].std())
    diag["main pred std"] = std
    diag["dead main head"] = float(std < 1e-6)
    trace = {"w noisy main": rel_w[:, 0, 0], "w clean main": rel_w[:, 0, 1], "aux share": aux_share}
    if lookahead:
        trace["LA-step w noisy main"] = la_sum[:, 0] / wcnt[:, 0, 0].clamp_min(1)
        trace["LA-step w clean main"] = la_sum[:, 1] / wcnt[:, 0, 1].clamp_min(1)
    return {"metrics": metrics, "diag": diag, "trace": trace}


#: The configurations of :func:`b3_experiment`: name → (make_toyreg kwargs, optimizer, methods).
def b3_settings(quick: bool) -> Dict[str, Tuple[dict, str, Sequence[str]]]:
    """``"paper"``: the code's toy configuration (SGD, 30% of the main targets at −0.5) with every
    method, and ``"clean"`` (no noise); then the options, with uniform and the SLGrad variants:
    the other corruptions on the main task, noise on all tasks, and Adam."""
    core = ("mean", "slgrad", "slgrad_la")
    full = B3_METHODS if not quick else ("stl", "mean", "slgrad", "slgrad_la", "gcosim")
    out = {
        "paper": ({"noise": 0.3, "corruption": "random"}, "sgd", full),
        "clean": ({"noise": 0.0}, "sgd", ("stl", "mean", "slgrad") if quick else full),
    }
    for c in ("gaussian", "uni", "bf"):
        out[f"{c} main"] = ({"noise": 0.3, "corruption": c}, "sgd", core)
    out["random all"] = ({"noise": 0.3, "corruption": "random", "noise_on": "all"}, "sgd", core + ("gcosim",))
    out["uni all"] = ({"noise": 0.3, "corruption": "uni", "noise_on": "all"}, "sgd", core)
    out["adam"] = ({"noise": 0.3, "corruption": "random"}, "adam", core + ("stl",))
    return out


#: Columns of the B3 tables: test MAEs, SLGrad's weights relative to uniform on corrupted / clean
#: main-task samples (second step; the look-ahead step's positional weights), the auxiliary's
#: share of the total weight, the spread of the main head's test predictions, SLGrad's steps with
#: all weights 0 (no update), and the fraction of seeds whose 1-unit ReLU main head is dead.
B3_METRICS = ("main MAE", "aux MAE", "w noisy main", "w clean main", "LA-step w noisy main", "LA-step w clean main",
              "aux share", "main pred std", "frozen steps", "dead main head")
B3_OPTION_METRICS = ("main MAE", "aux MAE", "w noisy/clean main", "w noisy aux", "w clean aux", "frozen steps",
                     "dead main head")


def b3_experiment(seeds: Sequence[int] = (0, 1, 2), *, quick: bool = False, settings: Optional[Sequence[str]] = None,
                  epochs: Optional[int] = None, show_progress: bool = True):
    """Rows per (setting, method, seed) and the SLGrad weight traces ``{"setting: method": {name: [S, epochs]}}``
    (settings: :func:`b3_settings`; epochs: 100, the code's, or 25 with ``quick``)."""
    table = b3_settings(quick)
    names = list(settings) if settings is not None else list(table)
    unknown = [s for s in names if s not in table]
    if unknown:
        raise ValueError(f"unknown B3 settings {unknown}; choose from {list(table)}")
    epochs = epochs if epochs is not None else (25 if quick else 100)
    rows: List[dict] = []
    traces: Dict[str, Dict[str, List[torch.Tensor]]] = {}
    jobs = [(s, meth, seed) for s in names for meth in table[s][2] for seed in seeds]
    for s, meth, seed in progress(jobs, total=len(jobs), desc="b3", enabled=show_progress):
        kw, opt, _ = table[s]
        problem = make_toyreg(seed, epochs=epochs, **kw)
        r = train_toyreg(problem, meth, seed, optimizer=opt)
        row = {"setting": s, "method": meth, "seed": seed, "optimizer": opt}
        row.update(r["metrics"])
        row.update({k: v for k, v in r["diag"].items() if not (isinstance(v, float) and math.isnan(v))})
        rows.append(row)
        if meth in SLGRAD_VARIANTS and problem.noisy[0].any():
            tr = traces.setdefault(f"{s}: {meth}", {})
            for k, v in r["trace"].items():
                if k != "aux share":
                    tr.setdefault(k, []).append(v)
    return rows, {k: {n: torch.stack(v) for n, v in d.items()} for k, d in traces.items()}
