"""Random task orders shared by the projection methods and their test oracles.

Both functions draw from ``generator`` on the generator's own device and move the (tiny) result to
``device`` without synchronising, so a CPU generator can drive a GPU computation and a seeded
generator gives the same orders on every device.
"""

from __future__ import annotations

from typing import Optional

import torch


def _rand(shape, generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device, dtype=torch.float64).to(device)


def random_task_orders(K: int, *, generator: Optional[torch.Generator] = None,
                       device: torch.device | str = "cpu", shuffle: bool = True) -> torch.Tensor:
    """``[K, K-1]`` long tensor: row ``i`` lists the tasks other than ``i`` in visiting order.

    With ``shuffle`` each row is an independent uniformly random permutation (PCGrad's "random
    order, independent per task"); without it the natural order ``0..K-1`` minus ``i``.
    """
    device = torch.device(device)
    if shuffle:
        keys = _rand((K, K), generator, device)
    else:
        keys = torch.arange(K, device=device, dtype=torch.float64).expand(K, K).clone()
    # Sort the task itself last, then drop it (keys is this call's own tensor: shifted in place).
    keys.diagonal().add_(3.0 * (K + 1))
    return torch.argsort(keys, dim=1, stable=True)[:, : K - 1]


def plackett_luce_order(priorities: torch.Tensor, *, generator: Optional[torch.Generator] = None
                        ) -> torch.Tensor:
    """A permutation of the K tasks drawn without replacement with probabilities ∝ ``priorities``.

    Plackett–Luce sampling through the Gumbel-max trick: ``argsort(log p + Gumbel)`` descending is
    distributed exactly as "draw the first task ∝ p, the next ∝ p among the rest, …". Tasks with
    priority 0 come last, in index order.
    """
    p = priorities.to(torch.float64)
    u = _rand(p.shape, generator, p.device).clamp_min(1e-300)
    gumbel = -torch.log((-torch.log(u)).clamp_min(1e-300))
    logp = torch.where(p > 0, torch.log(p.clamp_min(1e-300)), torch.full_like(p, -1e300))
    return torch.argsort(logp + gumbel, descending=True, stable=True)
