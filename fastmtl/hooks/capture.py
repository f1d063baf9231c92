"""Module hooks that record, for every call of a known layer, its input and the gradient edge of
its output: the factors of the layer's weight gradient, taken without any per-task gradient."""

from __future__ import annotations

import contextlib
import warnings
import weakref
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.autograd.graph import get_gradient_edge

__all__ = ["GramHooks", "CallRecord", "hooks_for", "KNOWN_LAYERS"]

#: Layer types whose weight gradient the hooks write as ``Σ_n δ_n a_nᵀ`` (their own forward only:
#: a subclass that overrides ``forward`` is an unknown layer).
KNOWN_LAYERS = {nn.Linear: "linear", nn.Conv2d: "conv2d"}

# module → (a weak reference to) the GramHooks registered on it, so that the module itself can
# stand for its hooks. Weak both ways: the hooks hold their modules, so a strong value would keep
# every registered module alive for ever.
_REGISTRY: "weakref.WeakKeyDictionary[nn.Module, weakref.ref]" = weakref.WeakKeyDictionary()


def _layer_kind(module: nn.Module) -> Optional[str]:
    for cls, kind in KNOWN_LAYERS.items():
        if isinstance(module, cls) and type(module).forward is cls.forward:
            if nn.utils.parametrize.is_parametrized(module):
                return None  # weight computed from other tensors: not a leaf
            return kind
    return None


@dataclass
class CallRecord:
    """One call of a hooked layer: its input and where its output sits in the autograd graph."""

    module: nn.Module
    name: str
    kind: str
    x: torch.Tensor  # the input (autograd saves it for the weight gradient anyway)
    version: int  # x._version at the call: an in-place change afterwards is an error
    out_edge: object  # GradientEdge of the output
    in_edge: Optional[object]  # GradientEdge of the input, when it requires grad
    out_shape: Tuple[int, ...]


class GramHooks:
    """Forward hooks on the known layers (``nn.Linear``, ``nn.Conv2d``) of the shared modules.

    Create it once, before the forward passes; every forward under autograd records each call's
    input and output edge (no copy: the input is the tensor autograd keeps for the weight
    gradient). :func:`fastmtl.training.hooks_backward` (``fastmtl.backward(...,
    gram_mode="hooks")``) and the per-sample functions read the records of the calls on the
    losses' graph and then clear them; :meth:`clear` drops them by hand (e.g. after a forward
    pass that is not back-propagated). Forward passes under ``torch.no_grad()`` or inside
    :meth:`paused` record nothing.

    Parameters of the modules that are not the weight or bias of a known layer (norm layers,
    embeddings, a subclass with its own ``forward``, a weight tied to an unknown layer) are
    *fallback* parameters: their K gradients are materialised, for them only; a warning lists
    them once, here.

    Args:
        modules: the shared modules (e.g. the trunk). Their parameters that require grad are the
            shared parameters, in ``module.parameters()`` order (:attr:`params`).
        layer_gram: ``"auto"`` (per layer, the cheaper of the ghost products and this layer's
            materialised gradients, see :mod:`fastmtl.hooks.cost`), ``"ghost"`` or
            ``"materialize"``.
        check_uses: walk the losses' graph (in Python, skipping the inside of every hooked
            call) at every Gram and raise when a hooked parameter is used outside its layer's
            forward (a parent module reading ``child.weight``, a weight penalty inside the loss):
            the hooks would miss that use and the Gram would be silently wrong. ``False`` skips
            the walk (for very large graphs whose uses are known to be plain).

    Use as a context manager (``with GramHooks(trunk) as hooks:``) or call :meth:`remove`.
    """

    def __init__(self, *modules: nn.Module, layer_gram: str = "auto", check_uses: bool = True):
        if not modules:
            raise ValueError("GramHooks needs at least one module")
        for i, m in enumerate(modules):
            if not isinstance(m, nn.Module):
                raise TypeError(f"modules[{i}]: expected an nn.Module, got {type(m).__name__}")
        if layer_gram not in ("auto", "ghost", "materialize"):
            raise ValueError(f"layer_gram must be 'auto', 'ghost' or 'materialize', got {layer_gram!r}")
        self.layer_gram = layer_gram
        self.check_uses = bool(check_uses)
        self.modules = list(modules)
        self._records: List[CallRecord] = []
        self._paused = 0
        self._handles = []
        self.batched_failed = False

        params: List[torch.Tensor] = []
        names: Dict[int, str] = {}
        owners: Dict[int, List[Tuple[str, nn.Module, str]]] = {}  # id(param) → (module name, module, role)
        layers: List[Tuple[str, nn.Module, str]] = []
        seen_modules = set()
        for i, root in enumerate(self.modules):
            prefix = f"modules[{i}]." if len(self.modules) > 1 else ""
            for mname, m in root.named_modules(prefix=prefix.rstrip(".")):
                if id(m) in seen_modules:
                    continue
                seen_modules.add(id(m))
                kind = _layer_kind(m)
                if kind is not None:
                    layers.append((mname, m, kind))
                for pname, p in m.named_parameters(recurse=False):
                    if not p.requires_grad:
                        continue
                    role = pname if kind is not None and pname in ("weight", "bias") else None
                    owners.setdefault(id(p), []).append((mname, m, role))
                    if id(p) not in names:
                        names[id(p)] = f"{mname}.{pname}" if mname else pname
                        params.append(p)
        if not params:
            raise ValueError("the modules have no parameter that requires grad")
        self.params = params
        self.param_names = [names[id(p)] for p in params]
        hooked: Dict[int, Tuple[str, List[Tuple[nn.Module, str]]]] = {}
        fallback = []
        for p in params:
            uses = owners[id(p)]
            roles = {role for _, _, role in uses}
            if None in roles or len(roles) != 1:
                fallback.append(p)
            else:
                hooked[id(p)] = (roles.pop(), [(m, name) for name, m, _ in uses])
        self.fallback_params = fallback
        self.hooked = hooked  # id(param) → (role, [(module, name)])
        hooked_modules = {id(m) for _, uses in hooked.values() for m, _ in uses}
        self.layers = [(n, m, k) for n, m, k in layers if id(m) in hooked_modules]
        self._names = {id(m): n for n, m, _ in self.layers}
        self._kinds = {id(m): k for _, m, k in self.layers}
        for _, m, _ in self.layers:
            self._handles.append(m.register_forward_hook(self._on_forward, with_kwargs=True))
            _REGISTRY[m] = weakref.ref(self)
        for root in self.modules:
            _REGISTRY[root] = weakref.ref(self)
        if fallback:
            listed = ", ".join(names[id(p)] for p in fallback[:8]) + (" ..." if len(fallback) > 8 else "")
            warnings.warn(f"fastmtl.hooks: {len(fallback)} shared parameter(s) are not the weight or bias of an "
                          f"nn.Linear / nn.Conv2d ({listed}); their K task gradients are materialised (only theirs)",
                          RuntimeWarning, stacklevel=2)

    # -- recording ---------------------------------------------------------------------------

    def _on_forward(self, module, args, kwargs, output):
        if self._paused or not torch.is_grad_enabled():
            return
        if not isinstance(output, torch.Tensor) or not output.requires_grad:
            return
        x = args[0] if args else kwargs.get("input")
        if not isinstance(x, torch.Tensor):
            return
        self._records.append(CallRecord(module, self._names[id(module)], self._kinds[id(module)], x, x._version,
                                        get_gradient_edge(output),
                                        get_gradient_edge(x) if x.requires_grad else None, tuple(output.shape)))

    @property
    def records(self) -> List[CallRecord]:
        """The calls recorded since the last :meth:`clear` (in call order)."""
        return list(self._records)

    def clear(self) -> None:
        """Forget the recorded calls (they keep the inputs alive until then)."""
        self._records = []

    @contextlib.contextmanager
    def paused(self):
        """Record nothing inside (e.g. a validation forward whose loss is differentiated apart)."""
        self._paused += 1
        try:
            yield self
        finally:
            self._paused -= 1

    def remove(self) -> None:
        """Remove the hooks and forget the records."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self.clear()
        for m in [*self.modules, *(m for _, m, _ in self.layers)]:
            ref = _REGISTRY.get(m)
            if ref is not None and ref() is self:
                del _REGISTRY[m]

    def __enter__(self) -> "GramHooks":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        return (f"GramHooks({len(self.layers)} layers, {len(self.params)} parameters, "
                f"{len(self.fallback_params)} fallback, {len(self._records)} recorded calls)")

    # -- the calls on a graph ----------------------------------------------------------------

    def calls_on_path(self, roots: List[object]) -> List[CallRecord]:
        """The recorded calls whose output the graph from ``roots`` (grad_fn nodes) reaches.

        The walk skips the inside of every hooked call (it jumps from a call's output to its
        input) and, with ``check_uses``, raises when it reaches a hooked parameter elsewhere.
        Without ``check_uses`` there is no walk: every record is returned and the calls off the
        path are told apart later (their output gradient is ``None``).
        """
        if not self.check_uses:
            on_path = list(self._records)
        else:
            by_node: Dict[object, List[CallRecord]] = {}
            for r in self._records:
                by_node.setdefault(r.out_edge.node, []).append(r)
            found = set()
            visited = set()
            stack = [n for n in roots if n is not None]
            while stack:
                node = stack.pop()
                if node in visited:
                    continue
                visited.add(node)
                recs = by_node.get(node)
                if recs is not None:
                    found.update(id(r) for r in recs)
                    stack.extend(r.in_edge.node for r in recs if r.in_edge is not None)
                    continue
                var = getattr(node, "variable", None)
                if var is not None and id(var) in self.hooked:
                    name = self.param_names[[id(p) for p in self.params].index(id(var))]
                    raise ValueError(f"shared parameter {name} is used outside a recorded forward call of its layer: "
                                     "a parent module reading it directly, a penalty on it in the loss, or a forward "
                                     "pass the hooks did not record (run before GramHooks was created, inside "
                                     "hooks.paused(), or whose records were cleared). The hooks cannot see that use; "
                                     "call the layer, or use gram_mode='materialize'")
                stack.extend(nxt for nxt, _ in node.next_functions if nxt is not None)
            on_path = [r for r in self._records if id(r) in found]
        return on_path

    @staticmethod
    def check_versions(records: List[CallRecord]) -> None:
        """Raise when the input of a call changed in place since the call."""
        for r in records:
            if r.x._version != r.version:
                raise RuntimeError(f"the input of {r.name} was modified in place after its forward call; its "
                                   "recorded activations are no longer those of the graph")


def hooks_for(obj) -> Optional[GramHooks]:
    """The :class:`GramHooks` that ``obj`` is, or that is registered on the module ``obj``."""
    if isinstance(obj, GramHooks):
        return obj
    if isinstance(obj, nn.Module):
        ref = _REGISTRY.get(obj)
        return None if ref is None else ref()
    return None
