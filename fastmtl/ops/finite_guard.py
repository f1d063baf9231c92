"""The finiteness guard of a call's Gram matrix (see :func:`fastmtl.pipeline.guarded_weights`).

``finite_guard(G, dots) -> (G', dots', finite)``: ``finite`` is a 0-d bool tensor on G's device,
true when every entry of G (and of the reference dot products ``dots``, if any) is finite; ``G'``
and ``dots'`` are the inputs when finite and zeros otherwise. No host synchronisation.

On CPU float32/float64 tensors in plain eager mode it is one C++ pass over the K² values
(``fastmtl._C.finite_guard``, ``csrc/finite_guard.cpp``); as tensor ops it is six small ops per
call, about as long as a compiled K×K solve there. Elsewhere (CUDA, ``torch.compile``, fake
tensors, the extension missing) the tensor ops below run; they are the specification.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .. import cpu_ops

try:
    from .._C import finite_guard as _FINITE_GUARD
except Exception:  # ImportError, or OSError for a library built against another torch
    _FINITE_GUARD = None


def finite_guard(G: torch.Tensor, dots: Optional[torch.Tensor] = None
                 ) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """``(G', dots', finite)``: the inputs, or zeros of their shapes where any entry is not finite."""
    if _FINITE_GUARD is not None and G.device.type == "cpu" and cpu_ops.plain_eager():
        found = _FINITE_GUARD(G, dots)
        if found is not None:
            return found
    return finite_guard_ops(G, dots)


def finite_guard_ops(G: torch.Tensor, dots: Optional[torch.Tensor] = None
                     ) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """:func:`finite_guard` as tensor ops (any device, traceable)."""
    finite = torch.isfinite(G).all()
    if dots is not None:
        finite = finite & torch.isfinite(dots).all()
    zero = torch.zeros((), dtype=G.dtype, device=G.device)
    G = torch.where(finite, G, zero)
    if dots is not None:
        dots = torch.where(finite, dots, zero.to(dots.dtype))
    return G, dots, finite
