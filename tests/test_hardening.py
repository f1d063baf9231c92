"""Hardening: every bad input of docs/bad_input.md, numerics at the edges, the NaN policy, determinism.

``BAD_INPUTS`` is the single source of the table in docs/bad_input.md: each row is run here (exact
message, nothing modified) and ``test_doc_table_lists_every_row`` checks that the document shows
each row verbatim, so the two cannot drift.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

import fastmtl
from fastmtl.methods import METHODS, DirectionMethod, PCGrad, WeightedPCGrad
from fastmtl.gradients import canonicalize
from fastmtl.ops import registry
from _families import make_jacobian, split_params

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad_input.md"
GRAM_METHODS = sorted(n for n, c in METHODS.items() if c.requires_gram and not issubclass(c, DirectionMethod))
ALL_METHODS = sorted(n for n, c in METHODS.items() if not issubclass(c, DirectionMethod))


# ----------------------------------------------------------------------------------------------
# The bad-input table.
# ----------------------------------------------------------------------------------------------

@dataclass
class Row:
    id: str
    input: str  # markdown description of the call
    build: Callable[[], tuple]  # → (args, kwargs) of fastmtl.combine
    exc: type
    message: str  # exact message; with prefix=True, what the message starts with
    prefix: bool = False

    def markdown(self) -> str:
        msg = self.message + (" …" if self.prefix else "")
        return f"| `{self.id}` | {self.input} | `{self.exc.__name__}` | `{msg}` |"


def _v(*shape, dtype=torch.float32, **kw):
    """A deterministic tensor (no RNG state is consumed while building the table)."""
    n = 1
    for s in shape:
        n *= s
    return (torch.arange(n, dtype=torch.float64).reshape(shape) * 0.37 - 1.1).sin().to(dtype).requires_grad_(
        kw.get("requires_grad", False))


def _nan_at(t, index, value=float("nan")):
    t = t.clone()
    t.view(-1)[index] = value
    return t


def _out(n=8):
    return torch.full((n,), 7.0)


def _wpcgrad_used_with_3():
    m = WeightedPCGrad()
    fastmtl.combine(_v(3, 8), m, losses=[1.0, 2.0, 3.0])
    return m


BAD_INPUTS = [
    # --- structure -----------------------------------------------------------------------------
    Row("k0-matrix", "`torch.randn(0, 5)`", lambda: ((torch.zeros(0, 5),), {}), ValueError,
        "grads has K = 0 tasks; at least one task gradient is needed"),
    Row("k0-list", "`[]`", lambda: (([],), {}), ValueError,
        "grads is empty (K = 0 tasks); at least one task gradient is needed"),
    Row("matrix-1d", "`torch.randn(5)`", lambda: ((_v(5),), {}), ValueError,
        "a tensor of task gradients must be 2-D [K, D] (rows are tasks), got shape (5,); pass a list of tensors "
        "for other layouts"),
    Row("matrix-3d", "`torch.randn(2, 3, 4)`", lambda: ((_v(2, 3, 4),), {}), ValueError,
        "a tensor of task gradients must be 2-D [K, D] (rows are tasks), got shape (2, 3, 4); pass a list of "
        "tensors for other layouts"),
    Row("not-a-sequence", "`\"abc\"`", lambda: (("abc",), {}), TypeError,
        "grads must be a [K, D] tensor, a sequence of K tensors, or a sequence of K sequences of per-parameter "
        "tensors; got str"),
    Row("dict", "`{\"a\": torch.randn(3)}`", lambda: (({"a": _v(3)},), {}), TypeError,
        "grads must be a [K, D] tensor, a sequence of K tensors, or a sequence of K sequences of per-parameter "
        "tensors; got dict"),
    Row("ragged-vectors", "`[torch.randn(3), torch.randn(4)]`", lambda: (([_v(3), _v(4)],), {}), ValueError,
        "task 1: gradient has length 4 but task 0 has 3"),
    Row("vector-not-1d", "`[torch.randn(3), torch.randn(3, 1)]`", lambda: (([_v(3), _v(3, 1)],), {}), ValueError,
        "task 1: a sequence of tensors must hold 1-D task gradients, got shape (3, 1); use a sequence of "
        "sequences for per-parameter gradients"),
    Row("ragged-params", "`[[a], [a, b]]`", lambda: (([[_v(3)], [_v(3), _v(2)]],), {}), ValueError,
        "task 1: has 2 parameter gradients but task 0 has 1; every task must list the same parameters (use None "
        "for untouched ones)"),
    Row("param-shape", "`[[torch.randn(3)], [torch.randn(4)]]`", lambda: (([[_v(3)], [_v(4)]],), {}), ValueError,
        "task 1, parameter 0: shape (4,) differs from task 0's (3,) for the same parameter"),
    Row("param-shape-2d", "`[[torch.randn(2, 3)], [torch.randn(3, 2)]]`", lambda: (([[_v(2, 3)], [_v(3, 2)]],), {}),
        ValueError, "task 1, parameter 0: shape (3, 2) differs from task 0's (2, 3) for the same parameter"),
    Row("mixed-forms", "`[torch.randn(3), [torch.randn(3)]]`", lambda: (([_v(3), [_v(3)]],), {}), TypeError,
        "task 0: expected a sequence of per-parameter tensors (or None), got Tensor(shape=(3,), "
        "dtype=torch.float32, device=cpu); do not mix tensors and sequences across tasks"),
    Row("zero-params", "`[[], []]`", lambda: (([[], []],), {}), ValueError,
        "every task lists zero parameters; nothing to combine"),
    Row("all-none", "`[[None], [None]]`", lambda: (([[None], [None]],), {}), ValueError,
        "every task gradient is None: no task touches any parameter"),
    Row("not-a-tensor", "`[[torch.randn(2), 3.0]]`", lambda: (([[_v(2), 3.0]],), {}), TypeError,
        "task 0, parameter 1: expected a tensor or None, got float"),
    # --- dtypes, devices, layouts ---------------------------------------------------------------
    Row("mixed-dtypes", "`[torch.randn(3), torch.randn(3, dtype=torch.float64)]`",
        lambda: (([_v(3), _v(3, dtype=torch.float64)],), {}), TypeError,
        "task 1: has dtype torch.float64 but task 0 has torch.float32; all task gradients must share one dtype"),
    Row("mixed-dtypes-params", "task 1, parameter 1 in float16, the rest float32",
        lambda: (([[_v(2), _v(3)], [_v(2), _v(3, dtype=torch.float16)]],), {}), TypeError,
        "task 1, parameter 1: has dtype torch.float16 but task 0, parameter 0 has torch.float32; all task "
        "gradients must share one dtype"),
    Row("mixed-devices", "`[torch.randn(3), torch.empty(3, device=\"meta\")]`",
        lambda: (([_v(3), torch.empty(3, device="meta")],), {}), ValueError,
        "task 1: is on meta but task 0 is on cpu; all task gradients must be on one device"),
    Row("int-matrix", "`torch.ones(2, 3, dtype=torch.int64)`", lambda: ((torch.ones(2, 3, dtype=torch.int64),), {}),
        TypeError, "grads: dtype torch.int64 is not supported; gradients must be one of float16, bfloat16, float32, "
        "float64"),
    Row("int-param", "task 0, parameter 1 is `torch.int32`",
        lambda: (([[_v(2), torch.ones(3, dtype=torch.int32)]],), {}), TypeError,
        "task 0, parameter 1: dtype torch.int32 is not supported; gradients must be one of float16, bfloat16, "
        "float32, float64"),
    Row("bool", "`[torch.ones(3, dtype=torch.bool)]`", lambda: (([torch.ones(3, dtype=torch.bool)],), {}), TypeError,
        "task 0: dtype torch.bool is not supported; gradients must be one of float16, bfloat16, float32, float64"),
    Row("complex", "`[torch.ones(3, dtype=torch.complex64)]`", lambda: (([torch.ones(3, dtype=torch.complex64)],), {}),
        TypeError, "task 0: dtype torch.complex64 is not supported; gradients must be one of float16, bfloat16, "
        "float32, float64"),
    Row("sparse-coo", "`[torch.randn(3).to_sparse()]`", lambda: (([_v(3).to_sparse()],), {}), TypeError,
        "task 0: sparse or non-strided tensors are not supported (layout torch.sparse_coo); call .to_dense() first"),
    Row("sparse-csr", "task 1, parameter 0 is `torch.randn(2, 3).to_sparse_csr()`",
        lambda: (([[_v(2, 3)], [_v(2, 3).to_sparse_csr()]],), {}), TypeError,
        "task 1, parameter 0: sparse or non-strided tensors are not supported (layout torch.sparse_csr); call "
        ".to_dense() first"),
    Row("requires-grad", "`[torch.randn(3, requires_grad=True)]`", lambda: (([_v(3, requires_grad=True)],), {}),
        ValueError, "task 0: the tensor requires grad; pass detached gradients (torch.autograd.grad(..., "
        "create_graph=False) or .detach())"),
    Row("requires-grad-matrix", "`torch.randn(2, 3, requires_grad=True)`",
        lambda: ((_v(2, 3, requires_grad=True),), {}), ValueError,
        "grads: the tensor requires grad; pass detached gradients (torch.autograd.grad(..., create_graph=False) "
        "or .detach())"),
    # --- out= ----------------------------------------------------------------------------------
    Row("out-shape", "`J = torch.randn(3, 8)`, `out=torch.empty(7)`", lambda: ((_v(3, 8),), {"out": _out(7)}),
        ValueError, "out: shape (7,) does not match the gradient shape (8,)"),
    Row("out-int", "`out=torch.zeros(8, dtype=torch.int64)`",
        lambda: ((_v(3, 8),), {"out": torch.zeros(8, dtype=torch.int64)}), TypeError,
        "out: dtype torch.int64 is not a supported floating dtype"),
    Row("out-requires-grad", "`out=torch.zeros(8, requires_grad=True)`",
        lambda: ((_v(3, 8),), {"out": torch.zeros(8, requires_grad=True)}), ValueError,
        "out: requires grad; write into .grad buffers or detached tensors"),
    Row("out-device", "`out=torch.empty(8, device=\"meta\")`",
        lambda: ((_v(3, 8),), {"out": torch.empty(8, device="meta")}), ValueError,
        "out: is on meta but the task gradients are on cpu"),
    Row("out-count", "2 parameters, `out=[torch.empty(2)]`",
        lambda: (([[_v(2), _v(3)], [_v(2), _v(3)]],), {"out": [_out(2)]}), TypeError,
        "out must be a sequence of 2 tensors (one per parameter), got list"),
    Row("out-tensor-for-params", "2 parameters, `out=torch.empty(5)`",
        lambda: (([[_v(2), _v(3)], [_v(2), _v(3)]],), {"out": _out(5)}), TypeError,
        "out must be a sequence of 2 tensors (one per parameter), got Tensor(shape=(5,), dtype=torch.float32, "
        "device=cpu)"),
    Row("out-none", "`out=[buf, None]` where a task has parameter 1",
        lambda: (([[_v(2), _v(3)], [_v(2), None]],), {"out": [_out(2), None]}), ValueError,
        "out[1]: is None but some task has a gradient for parameter 1"),
    # --- losses --------------------------------------------------------------------------------
    Row("losses-count", "K = 3, `losses=[1.0, 2.0]`", lambda: ((_v(3, 8),), {"losses": [1.0, 2.0], "out": _out()}),
        ValueError, "losses has 2 entries but there are 3 task gradients"),
    Row("losses-str", "`losses=\"bad\"`", lambda: ((_v(3, 8),), {"losses": "bad", "out": _out()}), TypeError,
        "losses must be a tensor or a sequence of K numbers, got str"),
    Row("losses-element", "`losses=[1.0, \"x\", 2.0]`",
        lambda: ((_v(3, 8),), {"losses": [1.0, "x", 2.0], "out": _out()}), TypeError,
        "losses must be a tensor or a sequence of K numbers / scalar tensors"),
    Row("losses-complex", "`losses=torch.ones(3, dtype=torch.complex64)`",
        lambda: ((_v(3, 8),), {"losses": torch.ones(3, dtype=torch.complex64), "out": _out()}), TypeError,
        "losses must be real numbers, got dtype torch.complex64"),
    # --- non-finite values (check_finite=True) -------------------------------------------------
    Row("nan-task", "NaN in task 2, `check_finite=True`",
        lambda: ((_nan_at(_v(4, 8), 2 * 8 + 3),), {"check_finite": True, "method": "upgrad", "out": _out()}),
        ValueError, "non-finite values (NaN or Inf) in the gradient of task 2"),
    Row("inf-param", "Inf in task 1, parameter 1, `check_finite=True`",
        lambda: (([[_v(2), _v(3)], [_v(2), _nan_at(_v(3), 1, float("inf"))]],),
                 {"check_finite": True, "out": [_out(2), _out(3)]}), ValueError,
        "non-finite values (NaN or Inf) in the gradient of task 1 (parameter 1)"),
    Row("nan-loss", "`losses=[1.0, nan, 2.0]`, `check_finite=True`",
        lambda: ((_v(3, 8),), {"losses": [1.0, float("nan"), 2.0], "check_finite": True, "out": _out()}),
        ValueError, "non-finite task losses: [1.0, nan, 2.0]"),
    Row("gram-overflow", "float32 gradients of norm ~1e30 (finite), `method=\"mgda\"`, `check_finite=True`",
        lambda: ((_v(2, 8) * 1e30,), {"method": "mgda", "check_finite": True, "out": _out()}), ValueError,
        "the Gram matrix is not finite although the gradients are: dot products overflowed torch.float32 (max "
        "3.4e+38) for task 0, task 1; pass float64 gradients or scale the losses down"),
    # --- methods and hyper-parameters -----------------------------------------------------------
    Row("unknown-method", "`method=\"pcgard\"`", lambda: ((_v(2, 8),), {"method": "pcgard", "out": _out()}),
        ValueError, "unknown method 'pcgard'; did you mean 'pcgrad'", prefix=True),
    Row("method-type", "`method=3`", lambda: ((_v(2, 8),), {"method": 3, "out": _out()}), TypeError,
        "method must be a name or a fastmtl.methods.Method instance, got int"),
    Row("unknown-hyperparameter", "`method=\"cagrad\", alpha=0.3`",
        lambda: ((_v(2, 8),), {"method": "cagrad", "alpha": 0.3, "out": _out()}), TypeError,
        "bad hyper-parameters for method 'cagrad': CAGrad.__init__() got an unexpected keyword argument 'alpha'"),
    Row("instance-with-hyperparameters", "`method=PCGrad(), shuffle=False`",
        lambda: ((_v(2, 8),), {"method": PCGrad(), "shuffle": False, "out": _out()}), TypeError,
        "hyper-parameters ['shuffle'] were given with a method instance; set them in its constructor"),
    Row("negative-c", "`method=\"cagrad\", c=-0.1`", lambda: ((_v(2, 8),), {"method": "cagrad", "c": -0.1}),
        ValueError, "c must be finite and ≥ 0, got -0.1"),
    Row("nan-c", "`method=\"cagrad\", c=float(\"nan\")`",
        lambda: ((_v(2, 8),), {"method": "cagrad", "c": float("nan")}), ValueError, "c must be finite and ≥ 0, got nan"),
    Row("negative-gamma", "`method=\"wpcgrad\", gamma=-1.0`",
        lambda: ((_v(2, 8),), {"method": "wpcgrad", "gamma": -1.0}), ValueError, "gamma must be finite and ≥ 0, got -1.0"),
    Row("negative-eps", "`method=\"pcgrad\", eps=-1e-8`", lambda: ((_v(2, 8),), {"method": "pcgrad", "eps": -1e-8}),
        ValueError, "eps must be finite and ≥ 0, got -1e-08"),
    Row("negative-pref", "`method=\"upgrad\", pref=[1.0, -1.0]`",
        lambda: ((_v(2, 8),), {"method": "upgrad", "pref": [1.0, -1.0]}), ValueError,
        "pref must be finite and non-negative"),
    Row("negative-priorities", "`method=\"wpcgrad\", priorities=[1.0, -1.0]`",
        lambda: ((_v(2, 8),), {"method": "wpcgrad", "priorities": [1.0, -1.0]}), ValueError,
        "priorities must be finite, non-negative and not all zero"),
    Row("pref-length", "K = 3, `method=\"upgrad\", pref=[1.0, 1.0]`",
        lambda: ((_v(3, 8),), {"method": "upgrad", "pref": [1.0, 1.0], "out": _out()}), ValueError,
        "pref has 2 entries for K=3 tasks"),
    Row("priorities-length", "K = 3, `method=\"wpcgrad\", priorities=[1.0, 1.0]`",
        lambda: ((_v(3, 8),), {"method": "wpcgrad", "priorities": [1.0, 1.0], "out": _out()}), ValueError,
        "priorities has 2 entries for K=3 tasks"),
    Row("bad-choice", "`method=\"pcgrad\", reduction=\"max\"`",
        lambda: ((_v(2, 8),), {"method": "pcgrad", "reduction": "max"}), ValueError,
        "reduction must be one of ['sum', 'mean'], got 'max'"),
    Row("main-task-range", "K = 2, `method=\"hydalearn\", main_task=3`",
        lambda: ((_v(2, 8),), {"method": "hydalearn", "main_task": 3, "out": _out()}), ValueError,
        "main_task=3 is out of range for K=2 tasks"),
    Row("main-task-negative", "`method=\"hydalearn\", main_task=-1`",
        lambda: ((_v(2, 8),), {"method": "hydalearn", "main_task": -1}), ValueError,
        "main_task must be a non-negative int, got -1"),
    Row("reference-shape", "D = 8, `method=\"hydalearn\", reference=torch.randn(7)`",
        lambda: ((_v(2, 8),), {"method": "hydalearn", "reference": _v(7), "out": _out()}), ValueError,
        "reference: expected a 1-D tensor of length 8, got Tensor(shape=(7,), dtype=torch.float32, device=cpu)"),
    Row("reference-unused", "`method=\"mgda\", reference=torch.randn(8)`",
        lambda: ((_v(2, 8),), {"method": "mgda", "reference": _v(8)}), TypeError,
        "method 'mgda' does not use a reference gradient"),
    Row("mgda-needs-losses", "`method=\"mgda\", normalization=\"loss\"` without `losses`",
        lambda: ((_v(2, 8),), {"method": "mgda", "normalization": "loss", "out": _out()}), ValueError,
        "MGDA normalization='loss' needs the task losses"),
    Row("stateful-other-k", "a `WeightedPCGrad()` instance used with K = 3, then with K = 2",
        lambda: ((_v(2, 8),), {"method": _wpcgrad_used_with_3(), "losses": [1.0, 2.0], "out": _out()}), ValueError,
        "this WeightedPCGrad instance saw 3 tasks before, now 2; a stateful method keeps per-task state: create a "
        "new instance for a different number of tasks"),
    Row("unknown-backend", "`backend=\"nope\"`", lambda: ((_v(2, 8),), {"backend": "nope", "out": _out()}),
        ValueError, "unknown backend 'nope'; known:", prefix=True),
]


def _watched(args, kwargs):
    """Every dense, non-meta tensor the call could write to or read (inputs, out, method state)."""
    found = []

    def visit(x):
        if isinstance(x, torch.Tensor):
            if x.layout == torch.strided and x.device.type != "meta":
                found.append(x)
        elif isinstance(x, (list, tuple)):
            for y in x:
                visit(y)
        elif isinstance(x, dict):
            for y in x.values():
                visit(y)
        elif hasattr(x, "__dict__") and not isinstance(x, type):
            visit(vars(x))

    visit(args)
    visit(kwargs)
    return found


@pytest.mark.parametrize("row", BAD_INPUTS, ids=[r.id for r in BAD_INPUTS])
def test_bad_input(row):
    args, kwargs = row.build()
    watched = _watched(args, kwargs)
    before = [t.detach().clone() for t in watched]
    state_before = {k: v for k, v in vars(kwargs["method"]).items()} if hasattr(kwargs.get("method"), "__dict__") \
        else None
    with pytest.raises(row.exc) as info:
        fastmtl.combine(*args, **kwargs)
    msg = str(info.value)
    if row.prefix:
        assert msg.startswith(row.message), msg
    else:
        assert msg == row.message
    for t, b in zip(watched, before):  # nothing modified: inputs, out buffers, method state
        assert torch.equal(t.isnan(), b.isnan()) and torch.equal(t.nan_to_num(), b.nan_to_num())
    if state_before is not None:
        assert vars(kwargs["method"]).keys() == state_before.keys()
        for k, v in state_before.items():
            assert vars(kwargs["method"])[k] is v, k


def test_bad_input_rows_with_out_buffers():
    # Rows whose error is raised late (after validation) carry an out= buffer: it stays untouched.
    late = {"nan-task", "gram-overflow", "pref-length", "priorities-length", "main-task-range", "stateful-other-k",
            "mgda-needs-losses", "reference-shape", "losses-count", "nan-loss"}
    for row in BAD_INPUTS:
        if row.id in late:
            assert "out" in row.build()[1], row.id


def test_doc_table_lists_every_row():
    text = DOC.read_text(encoding="utf-8")
    missing = [r.markdown() for r in BAD_INPUTS if r.markdown() not in text]
    assert not missing, "docs/bad_input.md lacks:\n" + "\n".join(missing)
    ids = [r.id for r in BAD_INPUTS]
    assert len(ids) == len(set(ids))
    listed = re.findall(r"^\| `([a-z0-9-]+)` \|", text, flags=re.M)
    assert sorted(listed) == sorted(ids), "docs/bad_input.md lists rows that the tests do not run"


# ----------------------------------------------------------------------------------------------
# Numerics.
# ----------------------------------------------------------------------------------------------

# Absolute thresholds switched off, so that λ is exactly scale-invariant (see docs/bad_input.md).
SCALE_FREE = {name: {} for name in ALL_METHODS}
SCALE_FREE.update(pcgrad={"eps": 0.0}, wpcgrad={"eps": 0.0}, upgrad={"norm_eps": 0.0},
                  dualproj={"norm_eps": 0.0})
# How each method's output responds to g → s·g: λ unchanged (d scales with s), or d unchanged
# (λ ∝ 1/s: Nash-MTL's bargaining solution). Methods not listed are checked for finiteness only.
LAMBDA_INVARIANT = {"mean", "sum", "pcgrad", "wpcgrad", "cagrad", "mgda", "imtl_g", "upgrad", "dualproj",
                    "aligned_mtl", "hydalearn", "config", "olaux", "dwa", "famo", "gemtl", "rlw", "uw",
                    "constant", "krum", "imtl"}
DIRECTION_INVARIANT = {"nash_mtl"}


def _check_scaled(method, scale, J, d1, lam1, ds, lams, rtol, atol, family):
    """Compare the outputs at g and s·g; for the rank-1 "opposite" family λ is not unique (every λ
    giving the same d is optimal), so only d is compared there."""
    size = float(J.norm(dim=1).max())
    if method in LAMBDA_INVARIANT:
        if family != "opposite":
            torch.testing.assert_close(lams, lam1, rtol=rtol, atol=atol, msg=family)
        torch.testing.assert_close(ds.double() / scale, d1, rtol=rtol, atol=atol * size, msg=family)
    elif method in DIRECTION_INVARIANT and family != "opposite":
        # (Nash-MTL has no solution for the "opposite" family: it keeps the previous α and clips the
        # norm of d, which is not scale-covariant by design.)
        torch.testing.assert_close(lams * scale, lam1, rtol=rtol, atol=atol * float(lam1.abs().max()), msg=family)
        torch.testing.assert_close(ds.double(), d1, rtol=rtol, atol=atol * float(d1.abs().max()) + 1e-12,
                                   msg=family)


def _combine(J, method, **kw):
    return fastmtl.combine(J, method, generator=torch.Generator().manual_seed(0), return_info=True,
                           losses=[1.0, 2.0, 0.5, 1.5][: len(J)], **kw)


def _families(K=4, D=50):
    J = make_jacobian("conflict", K, D, seed=3)
    Jz = J.clone()
    Jz[1] = 0  # a zero-norm task
    g = J[0]
    return {"conflict": J, "zero-row": Jz, "opposite": torch.stack([g, -g, 2 * g, -0.5 * g])}


@pytest.mark.parametrize("scale", [1e30, 1e-30])
@pytest.mark.parametrize("method", ALL_METHODS)
def test_float64_extreme_scales_are_scale_invariant(method, scale):
    for family, J in _families().items():
        d1, i1 = _combine(J, method, **SCALE_FREE[method])
        ds, i_s = _combine(J * scale, method, **SCALE_FREE[method])
        assert torch.isfinite(ds).all() and torch.isfinite(i_s.weights).all(), family
        _check_scaled(method, scale, J, d1, i1.weights, ds, i_s.weights, 1e-7, 1e-9, family)


def test_imtl_g_large_scale():
    # IMTL-G's degeneracy test is relative, so a huge scale does not zero λ.
    J = make_jacobian("conflict", 4, 50, seed=3)
    _, i1 = _combine(J, "imtl_g")
    _, i2 = _combine(J * 1e30, "imtl_g")
    torch.testing.assert_close(i2.weights, i1.weights, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("scale", [1e15, 1e-15])
@pytest.mark.parametrize("method", ALL_METHODS)
def test_float32_within_range_matches_float64(method, scale):
    # ‖g‖² stays inside float32's normal range: same λ as float64 up to float32 rounding.
    for family, J in _families().items():
        _, i64 = _combine(J, method, **SCALE_FREE[method])
        d64, _ = _combine(J, method, **SCALE_FREE[method])
        d32, i32 = _combine((J * scale).float(), method, **SCALE_FREE[method])
        assert d32.dtype == torch.float32 and (i32.gram is None or i32.gram.dtype == torch.float32)
        assert torch.isfinite(d32).all(), family
        _check_scaled(method, scale, J, d64, i64.weights, d32, i32.weights, 2e-3, 2e-3, family)


@pytest.mark.parametrize("method", GRAM_METHODS)
def test_float32_gram_overflow_gives_nan_not_a_wrong_direction(method):
    J = (make_jacobian("conflict", 4, 50, seed=3) * 1e30).float()  # finite, but ‖g‖² > 3.4e38
    d, info = _combine(J, method)
    assert not torch.isfinite(info.gram).all()
    assert torch.isnan(info.weights).all() and torch.isnan(d).all()


@pytest.mark.parametrize("method", ["mean", "sum"])
def test_float32_huge_scale_without_gram_is_exact(method):
    J = (make_jacobian("conflict", 4, 50, seed=3) * 1e30).float()
    d = fastmtl.combine(J, method)
    expected = J.double().mean(0) if method == "mean" else J.double().sum(0)
    assert torch.isfinite(d).all()
    torch.testing.assert_close(d.double(), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_float32_underflow_is_finite(method):
    # ‖g‖² below float32's smallest subnormal: the Gram is 0, every task looks zero-norm (documented);
    # the direction stays a finite combination of the gradients.
    J = (make_jacobian("conflict", 4, 50, seed=3) * 1e-30).float()
    d, info = _combine(J, method)
    assert torch.equal(info.gram, torch.zeros(4, 4))
    assert torch.isfinite(d).all() and torch.isfinite(info.weights).all()
    torch.testing.assert_close(d.double(), info.weights @ J.double(), rtol=1e-5, atol=1e-36)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["matrix", "params"])
def test_low_precision_within_twice_pytorch_error(dtype, layout):
    """fp32 accumulation: the Gram and Jᵀλ of bf16/fp16 inputs are at most ~2× as far from float64 as
    PyTorch's own low-precision matmul (DESIGN: "error at most ~2× that of PyTorch at the same precision")."""
    J64 = make_jacobian("gauss", 5, 4099, seed=4)
    Jl = J64.to(dtype)
    exact = Jl.double() @ Jl.double().T
    lam = torch.tensor([0.5, -1.0, 2.0, 0.25, 1.0], dtype=torch.float64)
    grads = Jl if layout == "matrix" else split_params(Jl, [(4000,), (3, 33)])
    G = fastmtl.gramian(grads)
    d = fastmtl.weighted_sum(grads, lam)
    d = d if layout == "matrix" else torch.cat([t.reshape(-1) for t in d])
    assert G.dtype == torch.float32 and d.dtype == dtype
    torch_G = (Jl @ Jl.T).double()
    torch_d = (lam.to(dtype) @ Jl).double()
    d_exact = lam @ Jl.double()
    floor = torch.finfo(dtype).eps * exact.abs().max()
    assert (G.double() - exact).abs().max() <= 2 * (torch_G - exact).abs().max() + floor
    assert (d.double() - d_exact).abs().max() <= 2 * (torch_d - d_exact).abs().max() + \
        torch.finfo(dtype).eps * d_exact.abs().max()


# ----------------------------------------------------------------------------------------------
# NaN policy (docs/bad_input.md, "Non-finite values").
# ----------------------------------------------------------------------------------------------

def _poisoned(value):
    J = make_jacobian("conflict", 4, 30, seed=5)
    J[2, 7] = value
    return J


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("method", ["mean", "sum"])
def test_nan_policy_loss_only_methods_poison_only_that_coordinate(method, value):
    J = _poisoned(value)
    d = fastmtl.combine(J, method)
    bad = ~torch.isfinite(d)
    assert bad.nonzero().flatten().tolist() == [7]
    clean = J.clone()
    clean[2, 7] = 0
    expected = clean.mean(0) if method == "mean" else clean.sum(0)
    torch.testing.assert_close(d[~bad], expected[~bad])


# Elementwise methods: the direction at a coordinate depends on that coordinate only.
ELEMENTWISE = sorted(n for n, c in METHODS.items() if getattr(c, "shard_local", False) or n == "graddrop")
# Every other method whose direction depends on the gradients' values (Gram methods and those
# computing their own direction), as opposed to the loss-only ones above.
VALUE_DEPENDENT = sorted(n for n, c in METHODS.items()
                         if (c.requires_gram or issubclass(c, DirectionMethod)) and n not in ELEMENTWISE)


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("method", ELEMENTWISE)
def test_nan_policy_elementwise_methods_poison_only_that_coordinate(method, value):
    J = _poisoned(value)
    d = fastmtl.combine(J, method, generator=torch.Generator().manual_seed(0))
    clean = J.clone()
    clean[2, 7] = 0
    d_clean = fastmtl.combine(clean, method, generator=torch.Generator().manual_seed(0))
    bad = ~torch.isfinite(d)
    assert bad.nonzero().flatten().tolist() == [7]
    torch.testing.assert_close(d[~bad], d_clean[~bad])


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("layout", ["matrix", "params"])
@pytest.mark.parametrize("method", VALUE_DEPENDENT)
def test_nan_policy_gram_methods_poison_everything(method, layout, value):
    clean = make_jacobian("conflict", 4, 30, seed=5)
    split = [(10,), (4, 5)]
    try:
        fastmtl.combine(clean if layout == "matrix" else split_params(clean, split), method, losses=[1.0, 2, 3, 4])
    except (TypeError, ValueError) as exc:
        pytest.skip(f"{method} needs more than plain task gradients: {exc}")
    J = _poisoned(value)
    grads = J if layout == "matrix" else split_params(J, split)
    d = fastmtl.combine(grads, method, losses=[1.0, 2, 3, 4], generator=torch.Generator().manual_seed(0))
    flat = d if layout == "matrix" else torch.cat([t.reshape(-1) for t in d])
    assert torch.isnan(flat).all()  # never a finite direction computed from poisoned values
    if not issubclass(METHODS[method], DirectionMethod):
        _, info = _combine(grads, method)
        assert torch.isnan(info.weights).all()


def test_nan_policy_reference_gradient():
    J = make_jacobian("conflict", 3, 20, seed=6)
    ref = torch.ones(20, dtype=torch.float64)
    ref[4] = float("nan")
    d, info = fastmtl.combine(J, "hydalearn", reference=ref, return_info=True)
    assert torch.isnan(info.weights).all() and torch.isnan(d).all()
    assert torch.isfinite(info.gram).all()


# ----------------------------------------------------------------------------------------------
# Determinism.
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ALL_METHODS)
def test_same_seed_bitwise_identical_output(method):
    J = make_jacobian("conflict", 6, 301, seed=7)
    layouts = {"matrix": J, "params": split_params(J, [(100,), (7, 11), (124,)], drop={(1, 0), (4, 2)})}
    for name, grads in layouts.items():
        outs = []
        for _ in range(2):
            d, info = fastmtl.combine(grads, method, losses=torch.arange(1.0, 7.0), backend="reference",
                                      generator=torch.Generator().manual_seed(42), return_info=True)
            flat = d if name == "matrix" else torch.cat([t.reshape(-1) for t in d if t is not None])
            outs.append((flat, info.weights, info.gram))
        for a, b in zip(*outs):
            assert torch.equal(a, b), (method, name)


def test_deterministic_mode_end_to_end():
    """Under torch.use_deterministic_algorithms(True) automatic selection avoids a non-deterministic
    backend for both passes, and repeated calls are bitwise identical; without it, it is used."""
    calls = []
    ref = registry.get_backend("reference")

    def gram(tg):
        calls.append("gramian")
        return ref.implementations["gramian"](tg)

    def wsum(tg, lam, out):
        calls.append("weighted_sum")
        return ref.implementations["weighted_sum"](tg, lam, out)

    fake = registry.Backend(name="nondet_e2e_test", priority=999, devices=("cpu",), dtypes=(torch.float32,),
                            deterministic=False, probe=lambda: None,
                            implementations={"gramian": gram, "weighted_sum": wsum})
    registry.register_backend(fake)
    J = make_jacobian("conflict", 4, 1000, seed=8).float()
    try:
        _, info = fastmtl.combine(J, "upgrad", return_info=True)
        assert info.backend == "nondet_e2e_test" and calls == ["gramian", "weighted_sum"]
        calls.clear()
        torch.use_deterministic_algorithms(True)
        try:
            results = [fastmtl.combine(J, m, generator=torch.Generator().manual_seed(1), return_info=True)
                       for m in ("upgrad", "pcgrad") for _ in range(2)]
            # What remains: the CPU kernel forms the direction of a float32 matrix (the reference
            # where the extension is missing).
            expected = registry.select("weighted_sum", canonicalize(J)).name
        finally:
            torch.use_deterministic_algorithms(False)
        assert expected in ("cpu", "reference")
        assert calls == [] and all(i.backend == expected for _, i in results)
        for (d1, i1), (d2, i2) in (results[:2], results[2:]):
            assert torch.equal(d1, d2) and torch.equal(i1.weights, i2.weights)
    finally:
        registry.unregister_backend("nondet_e2e_test")
