"""Gram terms of one layer's weight from its input rows and output gradients ("ghost" products).

For a layer whose weight gradient is a sum of outer products — ``nn.Linear``:
``∇_W ℓ = Σ_n δ_n a_nᵀ`` over the rows ``n`` of the input (the batch, and any middle dimensions);
``nn.Conv2d``: the same over (sample, output position) pairs with ``a_n`` the unfolded input patch,
one block per group — two task gradients have the inner product

    ``⟨∇_W ℓ_k, ∇_W ℓ_j⟩ = Σ_{n,m} (δ_{k,n}·δ_{j,m}) (a_n·a_m) = tr(Δ_kᵀ M Δ_j)``,  ``M = A Aᵀ``,

so the K×K Gram needs ``N×N`` products, never the ``d_out·d_in`` gradients. When the rows are
many and the layer small (convolutions), forming the K gradients of this one layer
(``Δ_kᵀ A``) is cheaper: :mod:`fastmtl.hooks.cost` picks per layer; both are exact.

Shapes used throughout (one layer, all its recorded calls on the loss's path):

* ``A``: ``[G, B, L, d_in]`` — G groups (1 for Linear), B samples, L rows per sample (middle
  dimensions of a Linear input, output positions of a convolution), ``d_in`` inputs per group;
* ``D``: ``[K, G, B, L, d_out]`` — the output gradients of the K rows (tasks, or tasks whose
  per-sample losses were summed), ``d_out`` outputs per group;
* weight blocks: ``[G, d_out, d_in]`` (the weight reshaped per group).

Sums accumulate in float32 (float64 for float64 inputs); half-precision factors are up-cast.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["accumulate_dtype", "linear_factors", "conv2d_factors", "weight_blocks", "task_gram_ghost",
           "task_gram_materialized", "sample_gram_ghost", "sample_gram_materialized", "sample_reference_dots",
           "bias_task_rows", "bias_sample_rows"]


def accumulate_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 when any factor is float64, else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def linear_factors(x: torch.Tensor, d: torch.Tensor, d_out: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``A [1, B, L, d_in]`` and ``D [K, 1, B, L, d_out]`` of one ``nn.Linear`` call.

    ``x``: the call's input ``[B, *, d_in]`` (or ``[d_in]``); ``d``: the K output gradients
    ``[K, B, *, d_out]`` (or ``[K, d_out]``). Views only: nothing is copied for contiguous inputs.
    """
    if x.dim() == 1:
        x, d = x.reshape(1, 1, -1), d.reshape(d.shape[0], 1, 1, -1)
    B = x.shape[0]
    A = x.reshape(1, B, -1, x.shape[-1])
    return A, d.reshape(d.shape[0], 1, B, -1, d_out)


def _explicit_padding(module: nn.Conv2d):
    """``(top, bottom, left, right)`` padding of a Conv2d, with the strings ``"same"``/``"valid"`` resolved
    the way ``nn.Conv2d`` resolves them (the extra element of an odd total goes at the end)."""
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return (0, 0, 0, 0)
        pads = []
        for k, dil in zip(module.kernel_size, module.dilation):
            total = dil * (k - 1)
            pads.append((total // 2, total - total // 2))
        return (*pads[0], *pads[1])
    ph, pw = module.padding
    return (ph, ph, pw, pw)


def conv2d_factors(module: nn.Conv2d, x: torch.Tensor, d: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``A [G, B, L, (C_in/G)·kh·kw]`` (unfolded patches) and ``D [K, G, B, L, C_out/G]`` of one call.

    Stride, dilation, groups and every padding (numbers, ``"same"``, ``"valid"``, and the
    non-zero ``padding_mode``s, applied with ``F.pad`` first as ``nn.Conv2d`` does) are honoured.
    The patches are a new tensor of ``B·L·C_in·kh·kw`` values (the layer's im2col).
    """
    unbatched = x.dim() == 3
    if unbatched:
        x, d = x.unsqueeze(0), d.unsqueeze(1)
    top, bottom, left, right = _explicit_padding(module)
    if module.padding_mode != "zeros" or isinstance(module.padding, str):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, (left, right, top, bottom), mode=mode)
        padding = 0
    else:
        padding = module.padding
    patches = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride)
    G = module.groups
    B, _, L = patches.shape
    # unfold orders the rows channel-major, then kernel position: the same order as
    # weight.reshape(C_out, -1), and the channels of group g are one contiguous block.
    A = patches.reshape(B, G, -1, L).permute(1, 0, 3, 2)
    K = d.shape[0]
    c_out = d.shape[2]
    if d.shape[-2] * d.shape[-1] != L:
        raise ValueError(f"Conv2d output gradients have {d.shape[-2]}×{d.shape[-1]} positions but the unfolded "
                         f"input has {L}: the module's forward is not a plain convolution")
    D = d.reshape(K, B, G, c_out // G, L).permute(0, 2, 1, 4, 3)
    return A, D


def weight_blocks(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The weight (or a tensor of its shape) as ``[G, d_out, d_in]`` blocks."""
    return weight.reshape(groups, weight.shape[0] // groups, -1)


def _cast(t: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    return t if t.dtype == acc else t.to(acc)


def task_gram_ghost(A: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """``G_kj = Σ_g tr(Δ_{k,g}ᵀ A_g A_gᵀ Δ_{j,g})`` without forming any gradient: ``[K, K]``.

    Memory: ``G·N²`` for ``M`` plus ``K·G·N·d_out`` for ``M Δ`` (``N = B·L``).
    """
    acc = accumulate_dtype(A, D)
    K, Gr = D.shape[0], A.shape[0]
    a = _cast(A, acc).reshape(Gr, -1, A.shape[-1])
    dd = _cast(D, acc).reshape(K, Gr, -1, D.shape[-1])
    M = torch.bmm(a, a.transpose(1, 2))  # [G, N, N]
    MD = torch.einsum("gnm,kgmo->kgno", M, dd)
    return torch.einsum("kgno,jgno->kj", dd, MD)


def task_gram_materialized(A: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """The same Gram through this layer's K gradients ``Δ_kᵀ A`` (``K·d_out·d_in`` values, freed after)."""
    acc = accumulate_dtype(A, D)
    K, Gr = D.shape[0], A.shape[0]
    a = _cast(A, acc).reshape(Gr, -1, A.shape[-1])
    dd = _cast(D, acc).reshape(K, Gr, -1, D.shape[-1])
    W = torch.einsum("kgno,gni->kgoi", dd, a).reshape(K, -1)
    return W @ W.T


def sample_gram_ghost(A: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """Gram of the per-(task, sample) gradients ``g_{k,b} = Σ_l δ_{k,b,l} a_{b,l}ᵀ``: ``[K·B, K·B]``,
    rows task-major (``k·B + b``), without forming them.

    ``G[(k,b),(j,c)] = Σ_g Σ_{l,m} (δ_{k,g,b,l}·δ_{j,g,c,m}) (a_{g,b,l}·a_{g,c,m})``. Memory
    ``G·(K·B·L)²`` (one row per sample and position): cheap for Linear layers (L = 1).
    """
    acc = accumulate_dtype(A, D)
    K, Gr, B, L, _ = D.shape
    a = _cast(A, acc)
    dd = _cast(D, acc)
    M = torch.einsum("gbli,gcmi->gblcm", a, a)  # [G, B, L, B, L]
    Q = torch.einsum("kgblo,jgcmo->gkbljcm", dd, dd)  # [G, K, B, L, K, B, L]
    out = (Q * M[:, None, :, :, None]).sum(dim=(0, 3, 6))
    return out.reshape(K * B, K * B)


def sample_gram_materialized(A: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """The same through the K·B per-sample gradients of this layer (``K·B·d_out·d_in`` values)."""
    acc = accumulate_dtype(A, D)
    K, Gr, B, L, _ = D.shape
    P = torch.einsum("kgblo,gbli->kbgoi", _cast(D, acc), _cast(A, acc)).reshape(K * B, -1)
    return P @ P.T


def sample_reference_dots(A: torch.Tensor, D: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """``⟨g_{k,b}, v⟩`` for a given weight-shaped reference ``V [G, d_out, d_in]``: ``[K, B]``.

    ``Σ_{g,l} δ_{k,g,b,l} · (V_g a_{g,b,l})``: one product of the rows with V, no per-sample gradient.
    """
    acc = accumulate_dtype(A, D, V)
    AV = torch.einsum("gbli,goi->gblo", _cast(A, acc), _cast(V, acc))
    return torch.einsum("kgblo,gblo->kb", _cast(D, acc), AV)


def bias_task_rows(D: torch.Tensor) -> torch.Tensor:
    """The K bias gradients ``Σ_n δ_{k,n}``, ``[K, G·d_out]`` (output-channel order)."""
    acc = accumulate_dtype(D)
    K, Gr, B, L, o = D.shape
    return _cast(D, acc).sum(dim=(2, 3)).reshape(K, Gr * o)


def bias_sample_rows(D: torch.Tensor) -> torch.Tensor:
    """The K·B per-sample bias gradients, ``[K·B, G·d_out]`` (task-major rows)."""
    acc = accumulate_dtype(D)
    K, Gr, B, L, o = D.shape
    return _cast(D, acc).sum(dim=3).permute(0, 2, 1, 3).reshape(K * B, Gr * o)
