"""Registers the pure-PyTorch reference backend: every device and dtype, deterministic."""

from ..gradients import SUPPORTED_DTYPES
from ..reference.graddrop import graddrop_ref
from ..reference.primitives import dots_ref, gramian_ref, weighted_sum_ref
from .registry import Backend, register_backend

register_backend(Backend(
    name="reference",
    priority=0,
    devices=("cpu", "cuda", "mps", "xpu", "meta"),
    dtypes=SUPPORTED_DTYPES,
    # Fixed-order loops and BLAS calls; bitwise repeatable for a fixed shape, device and thread count.
    deterministic=True,
    probe=lambda: None,
    implementations={"gramian": gramian_ref, "weighted_sum": weighted_sum_ref, "graddrop": graddrop_ref,
                     "dots": dots_ref},
))
