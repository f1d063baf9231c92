"""The two hot-path primitives, ``gramian`` and ``weighted_sum``: the only places that pick a backend."""

from .registry import (Backend, available_backends, backends, get_backend, register_backend, unregister_backend,
                       register_implementation, select, use_backend)
from .primitives import gramian, gramian_of, weighted_sum, weighted_sum_of
from .engine import Engine
from . import reference_backend  # noqa: F401  (registers the reference backend)
from . import cpu_backend  # noqa: F401  (registers "cpu": fastmtl._C's CPU kernels; a missing build shows in its probe)
from . import cuda_backend  # noqa: F401  (registers "cuda"; never raises: a missing fastmtl._C shows in its probe)
from . import triton_backend  # noqa: F401  (registers "triton"; never raises, imports Triton lazily)

__all__ = ["Engine", "Backend", "available_backends", "backends", "get_backend", "register_backend", "unregister_backend",
           "register_implementation", "select", "use_backend", "gramian", "gramian_of",
           "weighted_sum", "weighted_sum_of"]
