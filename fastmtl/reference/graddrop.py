"""Pure-PyTorch GradDrop (Chen et al., NeurIPS 2020, "Just Pick a Sign"): the specification of the
fused kernels, and a fallback that runs on any device.

Per coordinate of the task gradients ``g_1 … g_K`` (missing tensors are zeros):

* positive sign purity ``P = ½ (1 + Σ_i g_i / (Σ_i |g_i| + eps))``;
* one uniform draw ``U ∈ [0, 1)`` per coordinate, shared by the tasks;
* mask ``M_i = [P > U]·[g_i > 0] + [P < U]·[g_i < 0]``;
* ``d = Σ_i (ℓ_i + (1 − ℓ_i) M_i) g_i`` with leak ``ℓ_i ∈ [0, 1]`` (default 0; 1 passes task ``i``
  through unchanged).

The comparisons are evaluated as ``S > (2U − 1)(A + eps)`` and ``S < (2U − 1)(A + eps)`` with
``S = Σ_i g_i`` and ``A = Σ_i |g_i|`` (the same inequalities, multiplied by ``A + eps > 0``). This
form uses only correctly rounded operations (no division, whose GPU implementation may be
approximate), so any implementation that sums in the same order at the same precision draws
exactly the same masks.

Random numbers are counter-based, not taken from a global generator: ``U`` of element ``i`` of
parameter ``p`` is Philox-4x32-10 of the counter ``offset + base_p + i`` under the key ``seed``,
where ``base_p`` is the number of elements of the parameters before ``p`` (the element's index in
the concatenation of all parameters). :func:`philox_uniform` reproduces Triton's
``tl.rand(seed, counter)`` bit for bit, so the Triton kernel and this reference draw the same
numbers. To get fresh numbers for the next step keep the seed and advance ``offset`` by the total
number of elements (or draw a new seed from a ``torch.Generator``).

Precision: masks and sums are computed in float32 for float16/bfloat16/float32 gradients and in
float64 for float64 gradients (``accumulate_dtype``); ``S`` and ``A`` are summed in task order.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..gradients import TaskGradients, accumulate_dtype
from .primitives import emit

DEFAULT_EPS = 1e-7

_M32 = 0xFFFFFFFF
_PHILOX_ROUND_A = 0xD2511F53
_PHILOX_ROUND_B = 0xCD9E8D57
_PHILOX_KEY_A = 0x9E3779B9
_PHILOX_KEY_B = 0xBB67AE85
_PHILOX_ROUNDS = 10
# Triton's uint32 → [0, 1) scale: the largest float32 with (2^31 − 1) · scale < 1.
_UNIFORM_SCALE = 4.6566127342e-10


def _mulhilo32(a: int, x: torch.Tensor):
    """High and low 32 bits of ``a · x`` for a 32-bit constant ``a`` and int64 tensor ``x < 2^32``.

    The 64-bit product does not fit in int64, so ``x`` is split into 16-bit halves.
    """
    xh = x >> 16
    xl = x & 0xFFFF
    t = a * xh  # < 2^48
    u = a * xl  # < 2^48
    hi = (t + (u >> 16)) >> 16
    lo = (((t & 0xFFFF) << 16) + u) & _M32
    return hi, lo


def philox_uniform(seed: int, counters: torch.Tensor) -> torch.Tensor:
    """Float32 uniforms in ``[0, 1)``, equal bit for bit to Triton's ``tl.rand(seed, counters)``.

    ``counters`` are non-negative int64 (their low and high 32-bit words are the first two
    Philox counter words; the other two are 0); ``seed`` is an integer in ``[0, 2^63)`` (its low
    and high words are the key).
    """
    if not 0 <= int(seed) < 2 ** 63:
        raise ValueError(f"seed must be in [0, 2^63), got {seed}")
    seed = int(seed)
    c = counters.to(torch.int64)
    c0 = c & _M32
    c1 = (c >> 32) & _M32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0 = seed & _M32
    k1 = (seed >> 32) & _M32
    for _ in range(_PHILOX_ROUNDS):
        hi_b, lo_b = _mulhilo32(_PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mulhilo32(_PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _PHILOX_KEY_A) & _M32
        k1 = (k1 + _PHILOX_KEY_B) & _M32
    # Reinterpret as int32, fold negatives onto [0, 2^31 - 1], scale in float32 (Triton's
    # uint_to_uniform_float).
    x = torch.where(c0 >= 2 ** 31, c0 - 2 ** 32, c0)
    x = torch.where(x < 0, -x - 1, x)
    return x.to(torch.float32) * torch.tensor(_UNIFORM_SCALE, dtype=torch.float32, device=x.device)


def graddrop_masks_ref(rows: Sequence[Optional[torch.Tensor]], uniforms: torch.Tensor, eps: float) -> list:
    """GradDrop keep-masks ``M_i`` for flat rows of one parameter (``None`` rows give ``None``).

    ``rows`` are already in the computation dtype; ``S`` and ``A`` are summed in task order.
    """
    present = [r for r in rows if r is not None]
    dtype = present[0].dtype
    S = torch.zeros_like(present[0])
    A = torch.zeros_like(present[0])
    for r in present:
        S = S + r
        A = A + r.abs()
    thr = (2 * uniforms.to(dtype) - 1) * (A + torch.tensor(eps, dtype=dtype, device=A.device))
    keep_pos = S > thr  # P > U
    keep_neg = S < thr  # P < U
    return [None if r is None else ((r > 0) & keep_pos) | ((r < 0) & keep_neg) for r in rows]


def graddrop_ref(tg: TaskGradients, seed: int, offset: int = 0, leak: Optional[torch.Tensor] = None,
                 eps: float = DEFAULT_EPS, out: Optional[Sequence[Optional[torch.Tensor]]] = None) -> list:
    """GradDrop direction ``d[p] = Σ_i (ℓ_i + (1 − ℓ_i) M_i) g_i[p]`` for every parameter ``p``.

    Args:
        tg: validated task gradients (any layout; ``None`` entries are zeros).
        seed: Philox key, an integer in ``[0, 2^63)``.
        offset: added to every element's counter (see the module docstring).
        leak: ``[K]`` leak ``ℓ`` per task (default zeros).
        eps: added to ``Σ|g_i|`` in the sign purity.
        out: optional P tensors (``None`` where no task has a gradient), written and returned.

    Returns:
        A list of P tensors shaped like the parameters (``None`` for a parameter no task
        touches), in the gradients' dtype unless ``out`` is given.
    """
    K = tg.num_tasks
    acc = accumulate_dtype(tg.dtype)
    if leak is None:
        leak_vals = torch.zeros(K, dtype=acc, device=tg.device)
    else:
        leak_vals = leak.to(device=tg.device, dtype=acc)
    results = []
    base = 0
    for p in range(tg.num_params):
        shape = tg.shapes[p]
        target = None if out is None else out[p]
        if shape is None:
            results.append(target)
            continue
        n = tg.numels[p]
        rows = [None if v is None else v.to(acc) for v in tg.flat_views(p)]
        counters = offset + base + torch.arange(n, dtype=torch.int64, device=tg.device)
        masks = graddrop_masks_ref(rows, philox_uniform(seed, counters), eps)
        d = torch.zeros(n, dtype=acc, device=tg.device)
        for k in range(K):
            if rows[k] is not None:
                d = d + torch.where(masks[k], rows[k], leak_vals[k] * rows[k])
        base += n
        results.append(emit(d, shape, tg.dtype, target))
    return results
