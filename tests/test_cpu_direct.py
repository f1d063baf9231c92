"""The direct eager entry points of the CPU kernels (``csrc/cpu_direct.cpp``) against the ops they
stand in for: the same bits and the same errors, with the version counters of ``out`` bumped; and the ops, not the
entry points, wherever the dispatcher does something (dispatch/function modes, the profiler)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastmtl import cpu_ops

_C = pytest.importorskip("fastmtl._C")
pytestmark = pytest.mark.skipif(not cpu_ops._DIRECT, reason="fastmtl._C was built without the direct entry points")

K = 3
SHAPES = [(5, 3), (7,), (1,), (2, 2, 2), (300,)]


def _entries(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rows = [[torch.randn(s, generator=gen).to(dtype) for s in SHAPES] for _ in range(K)]
    rows[0][1] = None
    rows[2][3] = None
    return [t for row in rows for t in row]


def _op(name):
    return getattr(torch.ops.fastmtl, name)


def _direct(name):
    return cpu_ops._DIRECT[name]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_gramian_and_weighted_sum_bitwise(dtype):
    entries = _entries(dtype)
    assert torch.equal(_direct("gramian_cpu")(entries, K), _op("gramian_cpu")(entries, K))
    lam = torch.tensor([0.5, -1.25, 2.0])
    a = _direct("weighted_sum_cpu")(entries, K, lam)
    b = _op("weighted_sum_cpu")(entries, K, lam)
    assert type(a) is list and len(a) == len(b)
    assert all(torch.equal(x, y) and x.shape == y.shape and x.dtype == y.dtype for x, y in zip(a, b))


def test_out_variants_bitwise_and_bump_versions():
    entries = _entries()
    lam = torch.tensor([0.5, -1.25, 2.0])
    outs = {}
    for how in ("direct", "op"):
        out = [torch.full(s, 7.0) for s in SHAPES]
        versions = [o._version for o in out]
        fn = _direct("weighted_sum_cpu_out") if how == "direct" else _op("weighted_sum_cpu_out")
        fn(entries, K, lam, out)
        if how == "direct":  # autograd sees the write (the op itself leaves the counters alone)
            assert all(o._version > v for o, v in zip(out, versions))
        outs[how] = out
    assert all(torch.equal(x, y) for x, y in zip(outs["direct"], outs["op"]))


@pytest.mark.parametrize("leak", [None, [0.0, 0.5, 1.0]])
def test_graddrop_bitwise(leak):
    entries = _entries()
    leak = torch.zeros(K) if leak is None else torch.tensor(leak)
    args = (entries, K, leak, 2 ** 40 + 3, 17, 1e-7)
    a = _direct("graddrop_cpu")(*args)
    b = _op("graddrop_cpu")(*args)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    out_a = [torch.empty(s, dtype=torch.float64) for s in SHAPES]
    out_b = [torch.empty(s, dtype=torch.float64) for s in SHAPES]
    _direct("graddrop_cpu_out")(*args, out_a)
    _op("graddrop_cpu_out")(*args, out_b)
    assert all(torch.equal(x, y) for x, y in zip(out_a, out_b))


def _error(fn, *args):
    with pytest.raises(Exception) as info:
        fn(*args)
    return type(info.value), str(info.value).split("\n")[0]


@pytest.mark.parametrize("case", ["shape", "dtype", "all_none", "out_count", "out_overlap", "weights"])
def test_same_errors_as_the_ops(case):
    entries = _entries()
    lam = torch.ones(K)
    name, args = "gramian_cpu", None
    if case == "shape":
        entries[len(SHAPES) + 0] = torch.zeros(4, 4)
        args = (entries, K)
    elif case == "dtype":
        entries[-1] = entries[-1].double()
        args = (entries, K)
    elif case == "all_none":  # (the weights give the op call its dispatch key)
        name, args = "weighted_sum_cpu", ([None] * len(entries), K, lam)
    elif case == "out_count":
        name, args = "weighted_sum_cpu_out", (entries, K, lam, [torch.empty(s) for s in SHAPES[:-1]])
    elif case == "out_overlap":
        out = [torch.empty(s) for s in SHAPES]
        out[0] = entries[len(SHAPES) + 2].reshape(1).expand(1)  # another parameter's input
        out[2] = entries[len(SHAPES) + 0]
        name, args = "weighted_sum_cpu_out", (entries, K, lam, out)
    elif case == "weights":
        name, args = "weighted_sum_cpu", (entries, K, torch.ones(K + 1))
    direct = _error(_direct(name), *args)
    op = _error(_op(name), *args)
    assert direct == op


def test_argument_types_are_checked():
    with pytest.raises(TypeError, match="tensors must be a list or tuple"):
        _direct("gramian_cpu")(torch.zeros(3), K)
    with pytest.raises(TypeError, match=r"tensors\[1\] must be a tensor or None"):
        _direct("gramian_cpu")([torch.zeros(2), 3, None], K)
    with pytest.raises(TypeError, match="num_tasks must be an int"):
        _direct("gramian_cpu")(_entries(), 3.0)
    with pytest.raises(TypeError, match="takes 2 positional arguments"):
        _direct("gramian_cpu")(_entries())


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_the_ops_run_wherever_the_dispatcher_does_something():
    assert cpu_ops._op("gramian_cpu") is cpu_ops._DIRECT["gramian_cpu"]
    with _Recorder() as rec:
        assert cpu_ops._op("gramian_cpu") is not cpu_ops._DIRECT["gramian_cpu"]
        cpu_ops._op("gramian_cpu")(_entries(), K)
    assert any("gramian_cpu" in name for name in rec.ops)
    with torch.overrides.TorchFunctionMode():
        assert cpu_ops._op("gramian_cpu") is not cpu_ops._DIRECT["gramian_cpu"]
    with torch.autograd.profiler.profile():
        assert cpu_ops._op("weighted_sum_cpu") is not cpu_ops._DIRECT["weighted_sum_cpu"]
    assert cpu_ops._op("gramian_cpu") is cpu_ops._DIRECT["gramian_cpu"]


def _rows(entries):
    P = len(entries) // K
    return [entries[k * P:(k + 1) * P] for k in range(K)]


@pytest.mark.parametrize("form", ["list_rows", "tuple_rows"])
def test_rows_form_gives_the_flat_forms_bits(form):
    entries = _entries()
    rows = _rows(entries)
    if form == "tuple_rows":
        rows = tuple(tuple(r) for r in rows)
    lam = torch.tensor([0.5, -1.25, 2.0])
    assert torch.equal(_direct("gramian_cpu")(rows, K), _op("gramian_cpu")(entries, K))
    a = _direct("weighted_sum_cpu")(rows, K, lam)
    b = _op("weighted_sum_cpu")(entries, K, lam)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    args = (K, torch.zeros(K), 11, 0, 1e-7)
    a = _direct("graddrop_cpu")(rows, *args)
    b = _op("graddrop_cpu")(entries, *args)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_rows_form_errors():
    rows = _rows(_entries())
    with pytest.raises(RuntimeError, match="got 2 rows for num_tasks = 3"):
        _direct("gramian_cpu")(rows[:2], K)
    ragged = [rows[0], rows[1][:-1], rows[2]]
    with pytest.raises(RuntimeError, match="row 1 has 4 entries, row 0 has 5"):
        _direct("gramian_cpu")(ragged, K)
    with pytest.raises(TypeError, match=r"tensors\[1\] must be a list or tuple \(a row\)"):
        _direct("gramian_cpu")([rows[0], torch.zeros(3), rows[2]], K)


@pytest.mark.parametrize("name", ["weighted_sum_cpu", "graddrop_cpu"])
def test_direct_results_are_independent_slices_of_one_buffer(name):
    # The direct entry points return one allocation cut into per-parameter tensors: each must behave
    # as a tensor of its own (writes stay in it, its own version counter, usable as a .grad).
    entries = _entries()
    extra = (torch.ones(K),) if name == "weighted_sum_cpu" else (torch.zeros(K), 5, 0, 1e-7)
    parts = _direct(name)(entries, K, *extra)
    expected = [p.clone() for p in parts]
    assert len({p.untyped_storage().data_ptr() for p in parts}) == 1
    assert all(p.is_contiguous() and p.shape == s for p, s in zip(parts, SHAPES))
    parts[1].fill_(123.0)
    assert parts[1]._version == 1 and all(p._version == 0 for i, p in enumerate(parts) if i != 1)
    assert all(torch.equal(p, e) for i, (p, e) in enumerate(zip(parts, expected)) if i != 1)
    param = torch.nn.Parameter(torch.zeros(SHAPES[4]))
    param.grad = parts[4]
    (param * 2).sum().backward()
    assert torch.equal(param.grad, expected[4] + 2)
    del parts, param
    # The storage outlives the list while any slice is alive.
    keep = _direct(name)(entries, K, *extra)[4]
    assert torch.equal(keep, expected[4])


def test_direct_results_in_inference_mode_are_inference_tensors():
    with torch.inference_mode():
        parts = _direct("weighted_sum_cpu")(_entries(), K, torch.ones(K))
    assert all(p.is_inference() for p in parts)
    parts = _direct("weighted_sum_cpu")(_entries(), K, torch.ones(K))
    assert not any(p.is_inference() for p in parts)
