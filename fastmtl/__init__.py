"""fastmtl: fast, exact multi-task gradient combination for PyTorch.

``fastmtl.combine(grads, method="pcgrad")`` turns K task gradients into one update direction
through the Gram matrix ``G = J Jᵀ``: one pass to form G, a K×K solve on the device, one pass to
form ``Σ λ_k g_k``. See the README for the methods, their papers and scale conventions.
"""

from .api import CombineInfo, combine
from .training import backward
from .methods import METHODS, Method
from .ops import available_backends, gramian, use_backend, weighted_sum
from . import gradients, hooks, methods, training

__version__ = "0.1.0"

__all__ = ["combine", "backward", "training", "CombineInfo", "gramian", "weighted_sum", "use_backend", "available_backends",
           "methods", "gradients", "hooks", "Method", "METHODS", "__version__"]
