"""fastmtl in PyTorch Lightning: a callback for manual optimisation that calls :func:`fastmtl.backward`.

Multi-task combination needs the K task losses, not one loss, so the LightningModule uses manual
optimisation and asks the callback for the backward pass::

    class Model(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.trunk, self.heads = ..., nn.ModuleList(...)
            self.mtl = FastMTLCallback("upgrad")              # keeps the method (and its state)

        def configure_callbacks(self):
            return [self.mtl]

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            opt.zero_grad()
            losses = ...                                        # K scalar losses
            self.mtl.backward(self, losses, self.trunk.parameters(), head_params=self.heads)
            opt.step()

The callback

* runs :func:`fastmtl.backward` (task gradients of the shared parameters, the combination added to
  their ``.grad``, the heads back-propagated with the method's convention) and logs the step's
  weights, gradient norms and cosines with ``log_dict`` (see :mod:`fastmtl.integrations.logging`;
  0-d tensors, so logging does not synchronise until Lightning writes);
* calls the method's ``end_epoch()`` at the end of every training epoch (DWA, weighted PCGrad,
  GradNorm);
* saves the method's state (and the generator's) in Lightning checkpoints and restores it on
  resume.

Mixed precision: with ``precision="16-mixed"`` the Trainer's ``GradScaler`` is passed to
:func:`fastmtl.backward` (``grad_scaler=``), so ``.grad`` holds the scaled direction that
Lightning's optimizer step unscales, and overflowing steps are skipped; ``bf16-mixed`` needs no
scaler.

Not covered, and refused with an error rather than run wrongly: automatic optimisation; more than
one process (each rank would combine its own unsynchronised gradients: use
:func:`fastmtl.distributed.ddp_combine` or ``combine(..., process_group=...)`` in your step).

Imports ``lightning`` (or, without it, ``pytorch_lightning``); the callback derives from that
package's ``Callback``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

try:
    from lightning.pytorch import Callback
except ImportError:  # pragma: no cover - the standalone package
    try:
        from pytorch_lightning import Callback
    except ImportError as exc:
        raise ImportError("fastmtl.integrations.lightning needs Lightning (pip install lightning)") from exc

import fastmtl
from fastmtl.methods import Method, make_method

from .logging import scalars

__all__ = ["FastMTLCallback"]


class FastMTLCallback(Callback):
    """Lightning callback holding a fastmtl method; :meth:`backward` is the module's backward pass.

    Args:
        method: a registry name (built with ``hyperparameters``), a method class, or an instance.
            The callback keeps the instance, so stateful methods carry their state across steps.
        generator: ``torch.Generator`` for the method's random choices (saved in checkpoints).
        log: log the step's scalars with ``pl_module.log_dict`` (on every step).
        log_prefix, task_names, log_cosines: passed to :func:`fastmtl.integrations.logging.scalars`.
    """

    def __init__(self, method: Any = "mean", *, generator: Optional[torch.Generator] = None, log: bool = True,
                 log_prefix: str = "mtl/", task_names: Optional[Sequence[str]] = None, log_cosines: bool = True,
                 **hyperparameters: Any):
        super().__init__()
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.method: Method = make_method(method, hyperparameters)
        self.generator = generator
        self.log = bool(log)
        self.log_prefix = log_prefix
        self.task_names = None if task_names is None else list(task_names)
        self.log_cosines = bool(log_cosines)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(method=self.method.name)

    # -- the backward pass --------------------------------------------------------------------

    def backward(self, pl_module: Any, losses: Any, shared_params: Any, head_params: Any = None, *,
                 return_info: bool = True, **kwargs: Any) -> Optional[fastmtl.CombineInfo]:
        """:func:`fastmtl.backward` with this callback's method; logs and returns the step's info.

        ``kwargs`` go to :func:`fastmtl.backward` (``main_task``, ``reference_grad``,
        ``head_weighting``, ``backend``, ``batched``, ...). Call it inside ``training_step``
        between ``optimizer.zero_grad()`` and ``optimizer.step()``. With ``log=False`` and
        ``return_info=False``, loss-only methods skip the Gram pass.
        """
        scaler = self._check_setting(pl_module)
        for reserved in ("generator", "grad_scaler"):
            if reserved in kwargs:
                raise TypeError(f"{reserved}= is set by the callback (the generator given to FastMTLCallback, the "
                                "Trainer's GradScaler)")
        info = fastmtl.backward(losses, shared_params, self.method, head_params=head_params, generator=self.generator,
                                return_info=self.log or return_info, grad_scaler=scaler, **kwargs)
        if self.log:
            values = scalars(info, self.log_prefix, task_names=self.task_names, losses=losses,
                             cosines=self.log_cosines)
            pl_module.log_dict(values, on_step=True, on_epoch=False)
        return info if return_info else None

    def _check_setting(self, pl_module: Any):
        """Refuse what would run wrongly; returns the Trainer's GradScaler (``16-mixed``) or ``None``."""
        if getattr(pl_module, "automatic_optimization", False):
            raise RuntimeError("FastMTLCallback.backward needs manual optimisation: set "
                               "self.automatic_optimization = False in the LightningModule")
        trainer = getattr(pl_module, "_trainer", None)
        if trainer is None:
            return None
        if getattr(trainer, "world_size", 1) > 1:
            raise NotImplementedError("FastMTLCallback runs fastmtl.backward on one process; with several, each rank "
                                      "would combine its own gradients without synchronising them. Use "
                                      "fastmtl.distributed.ddp_combine or combine(..., process_group=...) in "
                                      "training_step")
        # Lightning's optimizer step unscales .grad with the precision plugin's GradScaler (and skips
        # overflowing steps): fastmtl.backward(grad_scaler=...) leaves s·d in .grad, as a scaled
        # loss.backward() would.
        return getattr(getattr(trainer, "precision_plugin", None), "scaler", None)

    # -- Lightning hooks --------------------------------------------------------------------------

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if getattr(pl_module, "automatic_optimization", False):
            raise RuntimeError("FastMTLCallback needs manual optimisation: set self.automatic_optimization = False "
                               "in the LightningModule and call callback.backward(self, losses, shared_params, ...) "
                               "in training_step")

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        end_epoch = getattr(self.method, "end_epoch", None)
        if callable(end_epoch):
            end_epoch()

    def state_dict(self) -> dict:
        state = {"method": self.method.state_dict()}
        if self.generator is not None:
            state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self.method.load_state_dict(state_dict["method"])
        if "generator" in state_dict:
            if self.generator is None:
                raise ValueError("the checkpoint holds a generator state but this FastMTLCallback has no generator: "
                                 "pass generator=torch.Generator()")
            self.generator.set_state(state_dict["generator"])
