"""Seeded families of task-gradient matrices shared by the tests."""

from __future__ import annotations

import torch

FAMILIES = ("gauss", "conflict", "aligned", "lowrank", "zero", "scaled")


def make_jacobian(family: str, K: int, D: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1009 + K * 31 + D)
    if family == "gauss":
        J = torch.randn(K, D, generator=g, dtype=torch.float64)
    elif family == "conflict":
        base = torch.randn(D, generator=g, dtype=torch.float64)
        signs = torch.where(torch.rand(K, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
        J = signs[:, None] * base + 0.3 * torch.randn(K, D, generator=g, dtype=torch.float64)
    elif family == "aligned":
        base = torch.randn(D, generator=g, dtype=torch.float64)
        J = base + 1e-3 * torch.randn(K, D, generator=g, dtype=torch.float64)
    elif family == "lowrank":
        r = max(1, K // 2)
        J = torch.randn(K, r, generator=g, dtype=torch.float64) @ torch.randn(r, D, generator=g, dtype=torch.float64)
    elif family == "zero":
        J = torch.randn(K, D, generator=g, dtype=torch.float64)
        J[0] = 0
        if K > 3:
            J[K // 2] = 0
    elif family == "scaled":
        J = torch.randn(K, D, generator=g, dtype=torch.float64)
        J = J * torch.logspace(-2, 2, K, dtype=torch.float64)[:, None]
    else:
        raise ValueError(family)
    return J.to(dtype)


def split_params(J: torch.Tensor, sizes, drop=()):
    """Per-parameter layout of J: K lists of tensors of the given shapes; `drop` = {(k, p)} → None."""
    out = []
    for k in range(J.shape[0]):
        row, start = [], 0
        for p, shape in enumerate(sizes):
            n = int(torch.Size(shape).numel())
            t = J[k, start:start + n].reshape(shape).clone()
            row.append(None if (k, p) in drop else t)
            start += n
        out.append(row)
    return out
