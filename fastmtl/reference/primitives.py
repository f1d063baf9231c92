"""Pure-PyTorch reference implementations of the two hot-path primitives.

These are the specification that every fast backend is tested against, and the fallback that runs
on any device. They never concatenate the task gradients: the Gram matrix is accumulated parameter
by parameter (and chunk by chunk, so low-precision inputs are up-cast a bounded slice at a time),
and the weighted sum is written parameter by parameter.

Accumulation is in float32 for float16/bfloat16/float32 gradients and in float64 for float64
gradients.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..gradients import TaskGradients, accumulate_dtype

# Upper bound on elements up-cast at once (K rows × columns) in the chunked paths: 16 MB of fp32
# per chunk; with the previous chunk still alive while the next is built, the temporaries of
# low-precision inputs peak at a few chunks, independent of D.
_CHUNK_ELEMENTS = 1 << 22


def _column_chunks(n: int, rows: int):
    step = max(1024, _CHUNK_ELEMENTS // max(rows, 1))
    for start in range(0, n, step):
        yield start, min(n, start + step)


def gramian_ref(tg: TaskGradients) -> torch.Tensor:
    """``G[i, j] = Σ_p ⟨g_i[p], g_j[p]⟩`` for the K tasks, shape ``[K, K]``, accumulate dtype."""
    K = tg.num_tasks
    acc = accumulate_dtype(tg.dtype)
    G = torch.zeros(K, K, dtype=acc, device=tg.device)
    if tg.matrix is not None:
        J = tg.matrix
        if J.dtype == acc:
            return G.add_(J @ J.T)
        for s, e in _column_chunks(J.shape[1], K):
            Jc = J[:, s:e].to(acc)
            G.add_(Jc @ Jc.T)
        return G
    for p in range(tg.num_params):
        present = tg.present(p)
        if not present:
            continue
        views = tg.flat_views(p)
        full = len(present) == K
        if not full:
            index = torch.tensor(present, device=tg.device)
            rows_idx = index.repeat_interleave(len(present))
            cols_idx = index.repeat(len(present))
        for s, e in _column_chunks(tg.numels[p], len(present)):
            M = torch.stack([views[k][s:e].to(acc) for k in present])
            block = M @ M.T
            if full:
                G.add_(block)
            else:
                G.index_put_((rows_idx, cols_idx), block.reshape(-1), accumulate=True)
    return G


def weighted_sum_ref(tg: TaskGradients, weights: torch.Tensor,
                     out: Optional[Sequence[Optional[torch.Tensor]]] = None) -> list:
    """``d[p] = Σ_k weights[k] · g_k[p]`` for every parameter ``p``.

    Returns a list of P tensors shaped like the parameters (``None`` for a parameter no task
    touches). With ``out``, writes into those tensors (cast to their dtype) and returns them.
    """
    acc = accumulate_dtype(tg.dtype)
    lam = weights.to(device=tg.device, dtype=acc)
    results = []
    if tg.matrix is not None:
        J = tg.matrix
        target = None if out is None else out[0]
        if J.dtype == acc:
            d = lam @ J
        else:
            d = torch.empty(J.shape[1], dtype=acc, device=J.device)
            for s, e in _column_chunks(J.shape[1], tg.num_tasks):
                d[s:e] = lam @ J[:, s:e].to(acc)
        if target is None:
            return [d.to(tg.dtype)]
        target.copy_(d)
        return [target]
    for p in range(tg.num_params):
        shape = tg.shapes[p]
        target = None if out is None else out[p]
        if shape is None:
            results.append(target)
            continue
        views = tg.flat_views(p)
        d = torch.zeros(tg.numels[p], dtype=acc, device=tg.device)
        for k in tg.present(p):
            d.addcmul_(views[k], lam[k])
        results.append(emit(d, shape, tg.dtype, target))
    return results


def emit(d: torch.Tensor, shape, dtype: torch.dtype, target: Optional[torch.Tensor]) -> torch.Tensor:
    """An accumulated flat result as the output for one parameter: cast to ``dtype`` and shaped, or
    written into ``target`` (cast to its dtype) and ``target`` returned."""
    if target is None:
        return d.to(dtype).view(shape)
    target.copy_(d.view(shape))
    return target


def dots_ref(tg: TaskGradients, reference: tuple) -> torch.Tensor:
    """``a_k = ⟨g_k, v⟩`` for every row ``k`` of ``tg`` (float32 accumulation, float64 for float64).

    ``reference`` is ``v`` as P per-parameter entries (``None`` = zeros). One pass over the rows,
    not a Gram of the rows with ``v`` appended.
    """
    N = tg.num_tasks
    acc = accumulate_dtype(tg.dtype)
    if tg.matrix is not None:
        return tg.matrix.to(acc) @ reference[0].to(acc)
    a = torch.zeros(N, dtype=acc, device=tg.device)
    for p in range(tg.num_params):
        v = reference[p]
        present = tg.present(p)
        if v is None or not present:
            continue
        views = tg.flat_views(p)
        M = torch.stack([views[n] for n in present])
        dots = M.to(acc) @ v.reshape(-1).to(acc)
        if len(present) == N:
            a.add_(dots)
        else:
            a.index_add_(0, torch.tensor(present, device=tg.device), dots)
    return a
