"""Pure-PyTorch reference primitives (the specification of every backend) and paper-form oracles."""

from ..gradients import accumulate_dtype
from .primitives import gramian_ref, weighted_sum_ref

__all__ = ["accumulate_dtype", "gramian_ref", "weighted_sum_ref"]
