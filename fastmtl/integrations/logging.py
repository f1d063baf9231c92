"""What a combination step did, as a flat dict of scalars for TensorBoard, W&B or Lightning's ``log_dict``.

``scalars(info)`` reads the :class:`fastmtl.CombineInfo` that :func:`fastmtl.combine` (with
``return_info=True``) and :func:`fastmtl.backward` return. By default every value is a 0-d tensor on
the tensors' device, so building the dict never waits for the device; the logger transfers the
values when it writes them (``SummaryWriter.add_scalar`` and ``wandb.log`` accept 0-d tensors).
``sync=True`` returns Python floats instead, with one device-to-host copy for the whole dict.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

import torch

__all__ = ["scalars"]


def _task_labels(task_names: Optional[Sequence[str]], K: int) -> list:
    if task_names is None:
        return [str(k) for k in range(K)]
    if isinstance(task_names, str) or not isinstance(task_names, Sequence):
        raise TypeError(f"task_names must be a sequence of K strings, got {type(task_names).__name__}")
    names = [str(n) for n in task_names]
    if len(names) != K:
        raise ValueError(f"task_names has {len(names)} names but the step had K = {K} tasks")
    if len(set(names)) != K:
        raise ValueError(f"task_names must be distinct, got {names}")
    return names


def _num_tasks(info: Any, losses: Optional[torch.Tensor]) -> int:
    for t in (info.weights, info.gram):
        if t is not None:
            return int(t.shape[0])
    if losses is not None:
        return int(losses.shape[0])
    raise ValueError("info has neither weights nor a Gram matrix (and no losses were given): nothing to log")


def scalars(info: Any, prefix: str = "mtl/", *, task_names: Optional[Sequence[str]] = None,
            losses: Any = None, cosines: bool = True, sync: bool = False) -> Dict[str, Union[torch.Tensor, float]]:
    """A flat ``{name: scalar}`` dict describing one combination step.

    Keys (``t`` is the task index, or its name from ``task_names``):

    * ``{prefix}weight/{t}`` — λ_t, the coefficient of task t in ``d = Σ_t λ_t g_t`` (absent when
      the method gives no weights: GradDrop, DB-MTL, per-parameter GradVac);
    * ``{prefix}grad_norm/{t}`` — ``‖g_t‖ = √G_tt``;
    * ``{prefix}cosine/{a}_{b}`` — the cosine between the gradients of tasks a < b (``cosines=False``
      leaves these K(K−1)/2 entries out);
    * ``{prefix}direction_norm`` — ``‖d‖ = √(λᵀGλ)``, without reading the direction again;
    * ``{prefix}loss/{t}`` — the task losses, when ``losses`` (K scalars) is given.

    Args:
        info: a :class:`fastmtl.CombineInfo`.
        prefix: prepended to every key (``"mtl/"`` groups them in one TensorBoard section).
        task_names: K distinct names used instead of the task indices.
        losses: optional K task losses to log alongside (detached; a ``[K]`` tensor or K scalars).
        cosines: include the pairwise cosines.
        sync: ``False`` (default): values are detached 0-d tensors on the device, and no host
            synchronisation happens here. ``True``: Python floats, copied in one transfer (this
            synchronises with the device once).

    Values of float64 weights stay float64; the Gram's entries keep its accumulation dtype.
    """
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
    if not all(hasattr(info, a) for a in ("weights", "gram", "cosine")):
        raise TypeError(f"info must be a fastmtl.CombineInfo (from combine(..., return_info=True) or "
                        f"fastmtl.backward), got {type(info).__name__}")
    loss_vec = None
    if losses is not None:
        if isinstance(losses, torch.Tensor):
            loss_vec = losses.detach().reshape(-1)
        else:
            loss_vec = torch.stack([l.detach().reshape(()) if isinstance(l, torch.Tensor)
                                    else torch.tensor(float(l)) for l in losses])
    K = _num_tasks(info, loss_vec)
    names = _task_labels(task_names, K)
    if loss_vec is not None and loss_vec.shape[0] != K:
        raise ValueError(f"losses has {loss_vec.shape[0]} entries but the step had K = {K} tasks")

    out: Dict[str, torch.Tensor] = {}
    lam = None if info.weights is None else info.weights.detach()
    G = None if info.gram is None else info.gram.detach()
    if lam is not None:
        for k, n in enumerate(names):
            out[f"{prefix}weight/{n}"] = lam[k]
    if G is not None:
        norms = torch.sqrt(torch.diagonal(G).clamp_min(0))
        for k, n in enumerate(names):
            out[f"{prefix}grad_norm/{n}"] = norms[k]
        if cosines and info.cosine is not None:
            C = info.cosine.detach()
            for a in range(K):
                for b in range(a + 1, K):
                    out[f"{prefix}cosine/{names[a]}_{names[b]}"] = C[a, b]
        if lam is not None:
            lam64 = lam.to(device=G.device, dtype=torch.float64)
            out[f"{prefix}direction_norm"] = torch.sqrt((lam64 @ (G.to(torch.float64) @ lam64)).clamp_min(0))
    if loss_vec is not None:
        for k, n in enumerate(names):
            out[f"{prefix}loss/{n}"] = loss_vec[k]
    if not sync or not out:
        return out
    keys = list(out)
    device = out[keys[0]].device  # one transfer for the whole dict
    values = torch.stack([out[k].to(device=device, dtype=torch.float64) for k in keys]).cpu().tolist()
    return dict(zip(keys, values))
