"""Byzantine-robust aggregators: Krum / Multi-Krum, coordinate-wise trimmed mean.

See :mod:`fastmtl.reference.literal` for the conventions every oracle follows.
"""

from __future__ import annotations

import math

import torch

from .common import as64, combine_rows, task_rows

__all__ = ["krum_literal", "trimmed_mean_literal"]


def krum_literal(J, n_byzantine: int = 0, n_selected: int = 1, *, squared: bool = False) -> torch.Tensor:
    """Krum / Multi-Krum, Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant
    Gradient Descent" (NeurIPS 2017), with TorchJD 0.18's distances.

    Test oracle on the vectors: ``‖g_i − g_j‖`` from the difference vectors (squared with
    ``squared=True``, the paper's score); each task's score is the sum over its
    ``K − n_byzantine − 2`` nearest other tasks; the ``n_selected`` lowest scores (ties: lower
    index) are averaged. Raises ``ValueError`` for ``K < n_byzantine + 3`` or ``K < n_selected``.
    """
    J = as64(J)
    K = J.shape[0]
    if K < n_byzantine + 3 or K < n_selected:
        raise ValueError("too few gradients for Krum")
    g = task_rows(J)
    k = K - n_byzantine - 2
    scores = []
    for i in range(K):
        dists = []
        for j in range(K):
            if j != i:
                diff = g[i] - g[j]
                d2 = float(torch.dot(diff, diff))
                dists.append(d2 if squared else math.sqrt(d2))
        scores.append(sum(sorted(dists)[:k]))
    chosen = sorted(range(K), key=lambda i: (scores[i], i))[:n_selected]
    w = [1.0 / n_selected if i in chosen else 0.0 for i in range(K)]
    return combine_rows(J, w)


def trimmed_mean_literal(J, trim_number: int = 0) -> torch.Tensor:
    """Coordinate-wise trimmed mean, Yin et al., "Byzantine-Robust Distributed Learning: Towards
    Optimal Statistical Rates" (ICML 2018), as TorchJD 0.18.

    Test oracle: for every coordinate, the K values are sorted (Python ``sorted``), the
    ``trim_number`` smallest and largest are dropped and the rest averaged. A NaN value makes its
    coordinate NaN. Raises ``ValueError`` for ``K < 2·trim_number + 1``.
    """
    J = as64(J)
    K, D = J.shape
    if K < 2 * trim_number + 1:
        raise ValueError("too few gradients for this trim_number")
    d = torch.zeros(D, dtype=torch.float64)
    cols = J.T.tolist()
    for c in range(D):
        values = cols[c]
        if any(v != v for v in values):
            d[c] = float("nan")
            continue
        kept = sorted(values)[trim_number:K - trim_number]
        d[c] = sum(kept) / len(kept)
    return d
