"""The one pipeline: per-call inputs in the context, sources of the Gram, deprecated paths."""

from __future__ import annotations

import datetime
import os
import warnings

import pytest
import torch
import torch.distributed as dist

import fastmtl
from fastmtl.methods import HydaLearn, NashMTL, SLGrad
from fastmtl.pipeline import LOCAL, prepare, run
from _spawn import free_port


def _J(K=3, D=40, seed=0):
    return torch.randn(K, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_reference_is_a_call_input_and_never_stored_on_the_instance():
    J, v = _J(), _J(1, 40, seed=1)[0]
    m = HydaLearn(main_task=0)
    d, info = fastmtl.combine(J, m, reference=v, return_info=True)
    assert m.reference is None  # nothing was left behind on the instance
    torch.testing.assert_close(info.weights, fastmtl.combine(J, "hydalearn", reference=v, return_info=True)[1].weights)
    # Without a reference HydaLearn reads the main row of G: a different λ.
    assert not torch.allclose(fastmtl.combine(J, m, return_info=True)[1].weights, info.weights)


def test_a_reference_given_to_the_constructor_is_deprecated_but_still_used():
    J, v = _J(), _J(1, 40, seed=1)[0]
    with pytest.warns(DeprecationWarning, match=r"HydaLearn\(reference=...\) is deprecated"):
        m = HydaLearn(reference=v)
    torch.testing.assert_close(fastmtl.combine(J, m), fastmtl.combine(J, "hydalearn", reference=v))
    with pytest.warns(DeprecationWarning, match=r"SLGrad\(reference=...\) is deprecated"):
        SLGrad(val_grad=v)


def test_backward_passes_the_reference_per_call():
    torch.manual_seed(0)
    trunk = torch.nn.Linear(4, 3)
    x = torch.randn(5, 4)
    losses = [trunk(x)[:, k].pow(2).mean() for k in range(3)]
    v = [torch.randn_like(p) for p in trunk.parameters()]
    m = HydaLearn()
    info = fastmtl.backward(losses, trunk.parameters(), m, reference_grad=v)
    assert m.reference is None and info.weights.shape == (3,)


def test_stateful_task_count_is_recorded_only_after_a_successful_call():
    J = _J()
    m = NashMTL()
    with pytest.raises(ValueError):
        fastmtl.combine(J, m, losses=[1.0, 2.0])  # 2 losses for 3 tasks: fails in prepare
    assert getattr(m, "_fastmtl_num_tasks", None) is None
    fastmtl.combine(J, m)
    with pytest.raises(ValueError, match="saw 3 tasks before, now 2"):
        fastmtl.combine(J[:2], m)


def test_run_reports_the_backend_that_formed_the_direction():
    call = prepare(_J(), "pcgrad", {}, generator=torch.Generator().manual_seed(0), backend="reference")
    outcome = run(call, LOCAL, need_info=True)
    assert outcome.backend == "reference" and outcome.info().weights.shape == (3,)


@pytest.fixture
def world_of_one():
    """A one-process gloo group, for the collective entry points' local checks."""
    if dist.is_initialized():
        pytest.fail("a process group is already initialised in the test process")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=30))
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def test_ddp_combine_checks_the_task_count_of_a_stateful_instance(world_of_one):
    m = NashMTL()
    J = _J()
    d = fastmtl.distributed.ddp_combine(J, m, process_group=world_of_one)
    torch.testing.assert_close(d, fastmtl.combine(J, NashMTL()))
    with pytest.raises(ValueError, match="saw 3 tasks before, now 4"):
        fastmtl.distributed.ddp_combine(_J(4), m, process_group=world_of_one)


def test_sharded_combine_of_one_rank_equals_combine(world_of_one):
    J = _J(4, 33)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("upgrad", "gradnorm", "db_mtl"):
            kw = {"losses": [1.0, 2.0, 0.5, 1.5]}
            if name == "gradnorm":
                kw["param_indices"] = [0]
            a = fastmtl.combine([[J[k, :20], J[k, 20:]] for k in range(4)], name, process_group=world_of_one, **kw)
            b = fastmtl.combine([[J[k, :20], J[k, 20:]] for k in range(4)], name, **kw)
            for x, y in zip(a, b):
                torch.testing.assert_close(x, y)
