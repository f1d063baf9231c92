"""The bulk validation of per-parameter gradients in C++ (``fastmtl._C.describe_params``) against its
Python specification (``fastmtl.gradients.params_fast_python``): the same inputs accepted, the same
description returned, and ``None`` (the detailed path) for everything else."""

import pytest
import torch

import fastmtl
from fastmtl import gradients

describe = pytest.importorskip("fastmtl._C").__dict__.get("describe_params")
pytestmark = pytest.mark.skipif(describe is None, reason="fastmtl._C was built without describe_params")


def _grads(K=3, shapes=((4, 3), (5,), (2, 2, 2)), dtype=torch.float32, none_at=()):
    gen = torch.Generator().manual_seed(0)
    return [[None if (k, p) in none_at else torch.randn(s, generator=gen, dtype=dtype)
             for p, s in enumerate(shapes)] for k in range(K)]


def _same_description(grads):
    found = describe(grads)
    spec = gradients.params_fast_python(grads)
    if spec is None:
        assert found is None
        return None
    rows, shapes, numels, dtype, device = found
    assert rows == spec.entries and all(a is b for ra, rb in zip(rows, spec.entries) for a, b in zip(ra, rb))
    assert shapes == spec.shapes and all(s is None or type(s) is torch.Size for s in shapes)
    assert numels == spec.numels and all(type(n) is int for n in numels)
    assert (dtype, device) == (spec.dtype, spec.device)
    return found


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_valid_inputs_described_as_the_python_path(dtype):
    assert _same_description(_grads(dtype=dtype)) is not None


def test_none_entries_and_untouched_parameters():
    grads = _grads(none_at={(0, 0), (1, 1), (0, 1), (2, 1)})  # parameter 1: no task
    rows, shapes, numels, *_ = _same_description(grads)
    assert shapes[1] is None and numels[1] == 0
    assert shapes[0] == torch.Size((4, 3)) and numels[0] == 12  # first owner: task 1


def test_tuples_parameters_and_empty_tensors():
    grads = tuple(tuple(row) for row in _grads(shapes=((0,), (3,))))
    params = [[torch.nn.Parameter(t, requires_grad=False) if t is not None else None for t in row] for row in grads]
    assert _same_description(grads) is not None
    assert _same_description(params) is not None


class _Subclass(torch.Tensor):
    pass


@pytest.mark.parametrize("case", [
    "mixed_dtype", "int_dtype", "requires_grad", "shape_mismatch", "ragged", "all_none", "subclass",
    "sparse", "row_is_tensor", "row_is_str", "entry_is_int", "empty_rows", "grads_is_generator_like",
])
def test_everything_else_goes_to_the_detailed_path(case):
    grads = _grads()
    if case == "mixed_dtype":
        grads[2][1] = grads[2][1].double()
    elif case == "int_dtype":
        grads = [[t.to(torch.int32) for t in row] for row in grads]
    elif case == "requires_grad":
        grads[1][2] = grads[1][2].clone().requires_grad_()
    elif case == "shape_mismatch":
        grads[2][0] = torch.zeros(3, 4)
    elif case == "ragged":
        grads[1] = grads[1][:2]
    elif case == "all_none":
        grads = [[None] * 3 for _ in range(3)]
    elif case == "subclass":
        grads[0][0] = grads[0][0].as_subclass(_Subclass)
    elif case == "sparse":
        grads[1][1] = grads[1][1].to_sparse()
    elif case == "row_is_tensor":
        grads[0] = torch.zeros(3)
    elif case == "row_is_str":
        grads[0] = "abc"
    elif case == "entry_is_int":
        grads[2][2] = 3
    elif case == "empty_rows":
        grads = [[], [], []]
    elif case == "grads_is_generator_like":
        grads = range(3)
    assert describe(grads) is None
    assert gradients.params_fast_python(grads) is None


def test_mixed_devices_go_to_the_detailed_path():
    grads = _grads()
    grads[1][0] = grads[1][0].to("meta")
    assert describe(grads) is None
    with pytest.raises(ValueError, match="task 1, parameter 0: is on meta"):
        fastmtl.combine(grads, method="mean")


def test_combine_gives_the_same_result_through_either_path(monkeypatch):
    grads = _grads(none_at={(0, 2)})
    fast = fastmtl.combine(grads, method="upgrad")
    monkeypatch.setattr(gradients, "_DESCRIBE_PARAMS", None)
    slow = fastmtl.combine(grads, method="upgrad")
    assert all(torch.equal(a, b) for a, b in zip(fast, slow))
