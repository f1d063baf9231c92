"""IMTL, the hybrid form: IMTL-L's learnable loss scales with IMTL-G (Liu et al., ICLR 2021).

See :mod:`fastmtl.reference.literal` for the conventions every oracle follows.
"""

from __future__ import annotations

import math

import torch

from .balancing import imtl_g_literal
from .common import as64

__all__ = ["imtl_literal"]


def imtl_literal(Js, losses=None, *, lr=None, init: float = 0.0):
    """IMTL, Liu et al., "Towards Impartial Multi-task Learning" (ICLR 2021), over successive calls.

    Test oracle as LibMTL's ``IMTL`` weighting runs it: the scaled losses ``e^{s_t} ℓ_t − s_t``
    have the task gradients ``e^{s_t} g_t``; IMTL-G's closed form (:func:`imtl_g_literal`,
    ``α_{1:} = (ĝ_0 Uᵀ)(D Uᵀ)⁻¹`` on the scaled gradients ``ĝ``) gives ``d = Σ_t α_t ĝ_t``. With
    ``lr`` the scales then take the SGD step ``s ← s − lr(e^{s} ℓ − 1)`` (the gradient of the
    scaled loss with respect to ``s``), from ``s = init``. Returns ``(directions, s)``.
    """
    out = []
    s = None
    for step, J in enumerate(Js):
        J = as64(J)
        K = J.shape[0]
        s = [float(init)] * K if s is None else s
        scaled = torch.stack([math.exp(s[t]) * J[t] for t in range(K)])
        out.append(imtl_g_literal(scaled))
        if lr is not None:
            ls = [float(x) for x in losses[step]]
            s = [s[t] - lr * (math.exp(s[t]) * ls[t] - 1.0) for t in range(K)]
    return out, s
