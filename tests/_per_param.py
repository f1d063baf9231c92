"""Per-parameter task gradients of odd shapes, shared by the CPU kernel tests."""

import torch


def per_param(K, sizes, dtype, seed=0, missing=()):
    """K tasks × len(sizes) parameters of odd shapes; ``missing`` lists (k, p) entries left None."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for k in range(K):
        row = []
        for p, n in enumerate(sizes):
            shape = (n,) if n % 3 else (3, n // 3)
            t = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
            row.append(None if (k, p) in missing else t)
        rows.append(row)
    return rows
