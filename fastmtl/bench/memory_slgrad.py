"""SLGrad on B4 (noisy one-vs-rest digits): the per-(task, sample) dot products ``⟨∇ℓ_{k,b}, v⟩``
from module hooks (:func:`fastmtl.training.slgrad_backward`) against today's forward-mode JVP path
(:func:`fastmtl.training.slgrad_step`): the same weights, and the time per step side by side.

Both steps do the same work around the dot products: ``v`` from one validation batch (a backward
pass), the training batch's forward pass and one backward pass of the weighted loss. The JVP path
runs the forward pass with dual tensors; the hooks path runs it plainly and adds one backward
pass, vmapped over the K tasks, to the layer outputs.
"""

from __future__ import annotations

import statistics
import time
from typing import Dict

import torch


def _setup(dtype: torch.dtype, seed: int = 0, batch: int = 16):
    from .problems import make_digits_ovr

    problem = make_digits_ovr(seed)
    torch.manual_seed(seed)
    model = problem.make_model().to(dtype)
    Xtr, Ytr = problem.train
    Xv, Yv = problem.val
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(Xtr), generator=g)[:batch]
    vidx = torch.randperm(len(Xv), generator=g)[:problem.val_batch_size]
    xb, yb = Xtr[idx].to(dtype), Ytr[idx].to(dtype)
    xv, yv = Xv[vidx].to(dtype), Yv[vidx].to(dtype)
    return problem, model, (xb, yb), (xv, yv)


def _steps(problem, model, train, val, scale: str = "convex"):
    from fastmtl import training
    from fastmtl.hooks import GramHooks
    from fastmtl.training import slgrad_backward
    from fastmtl.methods import SLGrad

    xb, yb = train
    xv, yv = val
    shared = list(model.trunk.parameters())
    method = SLGrad(scale=scale)
    hooks = GramHooks(model.trunk)

    def val_loss():
        return problem.per_sample_losses(model(xv), yv)[0].mean()

    def zero():
        for p in model.parameters():
            p.grad = None

    def jvp_step():
        zero()
        return training.slgrad_step(model.trunk, lambda h: problem.per_sample_losses(model.from_features(h), yb),
                                    val_loss, shared, inputs=(xb,), method=method)

    def hooks_step():
        zero()
        losses = problem.per_sample_losses(model(xb), yb)
        return slgrad_backward(losses, hooks, val_loss_fn=val_loss, method=method)

    return jvp_step, hooks_step, hooks


def slgrad_b4(reps: int = 30, batch: int = 16) -> Dict[str, float]:
    """Max |W_hooks − W_jvp| and |grad| differences in float64; median ms per step (float32),
    the two paths interleaved."""
    problem, model, train, val = _setup(torch.float64, batch=batch)
    jvp_step, hooks_step, hooks = _steps(problem, model, train, val)
    a = jvp_step()
    ga = [p.grad.clone() for p in model.parameters()]
    b = hooks_step()
    gb = [p.grad.clone() for p in model.parameters()]
    hooks.remove()
    out = {"K": float(problem.K), "B": float(batch),
           "max |dW|": float((a.weights - b.weights).abs().max()),
           "max |W|": float(a.weights.abs().max()),
           "max |d dots|": float((a.dots - b.dots).abs().max()),
           "max |d grad|": max(float((x - y).abs().max()) for x, y in zip(ga, gb))}

    problem, model, train, val = _setup(torch.float32, batch=batch)
    jvp_step, hooks_step, hooks = _steps(problem, model, train, val)
    times = {"jvp": [], "hooks": []}
    for _ in range(3):
        jvp_step()
        hooks_step()
    for _ in range(reps):
        for name, fn in (("jvp", jvp_step), ("hooks", hooks_step)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    hooks.remove()
    out["jvp ms"] = statistics.median(times["jvp"]) * 1e3
    out["hooks ms"] = statistics.median(times["hooks"]) * 1e3
    return out
