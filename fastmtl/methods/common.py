"""Helpers the methods share: argument checks, the float64 Gram, Adam on a small tensor."""

from __future__ import annotations

import math
import warnings
from typing import Optional

import torch

from ..solvers.interior_point import symmetric64

__all__ = ["symmetric64", "check_positive", "check_choice", "check_main_task", "check_num_tasks", "AdamState",
           "warn_instance_reference"]


def check_positive(name: str, value: float, *, allow_zero: bool = True) -> float:
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")) or value < 0 or (value == 0 and not allow_zero):
        bound = "finite and ≥ 0" if allow_zero else "finite and > 0"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_main_task(main_task: int, K: int) -> int:
    if not isinstance(main_task, int) or isinstance(main_task, bool):
        raise TypeError(f"main_task must be an int, got {type(main_task).__name__}")
    if not 0 <= main_task < K:
        raise ValueError(f"main_task={main_task} is out of range for K={K} tasks")
    return main_task


def check_num_tasks(name: str, expected: Optional[int], K: int) -> None:
    """The ValueError of a stateful method reused with a different number of tasks."""
    if expected is not None and expected != K:
        raise ValueError(f"this {name} instance holds state for {expected} tasks but was called with "
                         f"K={K}; create a new instance (or call reset()) for a different task set")


class AdamState:
    """Adam (Kingma & Ba) on one small tensor, with ``torch.optim.Adam``'s exact update rule.

    ``weight_decay`` is the L2 form of ``torch.optim.Adam`` (added to the gradient, not AdamW).
    Runs on the parameter's device with no host synchronisation: the step count is a Python int.
    """

    _state_attrs = ("t", "m", "v")

    def __init__(self, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.t = 0
        self.m: Optional[torch.Tensor] = None
        self.v: Optional[torch.Tensor] = None

    def step(self, param: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """The parameter after one Adam step along ``grad`` (a new tensor)."""
        b1, b2 = self.betas
        if self.m is None:
            self.m = torch.zeros_like(param)
            self.v = torch.zeros_like(param)
        self.t += 1
        if self.weight_decay != 0.0:
            grad = grad + self.weight_decay * param
        self.m = torch.lerp(self.m, grad, 1.0 - b1)
        self.v = self.v * b2 + (1.0 - b2) * grad * grad
        bias1 = 1.0 - b1 ** self.t
        bias2_sqrt = math.sqrt(1.0 - b2 ** self.t)
        denom = self.v.sqrt() / bias2_sqrt + self.eps
        return param - (self.lr / bias1) * self.m / denom


def warn_instance_reference(cls_name: str) -> None:
    """The DeprecationWarning of a reference gradient given to a constructor instead of the call."""
    warnings.warn(f"{cls_name}(reference=...) is deprecated: a reference gradient belongs to one call, pass it "
                  "there: combine(..., reference=v) or fastmtl.backward(..., reference_grad=v)", DeprecationWarning,
                  stacklevel=3)
