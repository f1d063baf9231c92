"""A CPU allocation probe: live, peak and largest bytes of the storages that ATen ops create.

A ``TorchDispatchMode`` sees every ATen op run under it, counts the bytes of each *new* storage an
op returns (outputs aliasing an input — views, in-place and ``out=`` ops — are not new), and
releases them when the storage is freed (a ``weakref`` finaliser on the storage object, which
PyTorch keeps unique per storage). It does not see scratch memory a kernel allocates and frees
internally (BLAS workspaces). Used by ``python -m fastmtl.bench memory`` and the memory tests.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["AllocationProbe"]


class AllocationProbe(TorchDispatchMode):
    """Live and peak bytes of the storages created by the ATen ops run under this mode."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self.largest = 0  # the largest single storage
        self._tracked = set()

    def _free(self, key, nbytes):
        self._tracked.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and t.device.type != "meta"}
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = id(storage)
            if storage.data_ptr() in inputs or key in self._tracked:
                continue
            nbytes = storage.nbytes()
            self._tracked.add(key)
            weakref.finalize(storage, self._free, key, nbytes)
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            self.largest = max(self.largest, nbytes)
        return out
