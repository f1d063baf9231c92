"""Faults in the sharded path (gloo, 2–3 processes): clear errors on every rank, never a hang.

Two spawns. The 3-process one runs, on one process group with a 3 s timeout, the recoverable cases
(ranks disagreeing on K, parameters, shapes or method; a rank whose own validation or local work
fails; all with ``check_finite=True``), then a call that must still succeed, and last a rank that
raises mid-step without ``check_finite`` (the others wait for the timeout). The 2-process one has a
rank die (``os._exit``) mid-step. The parent kills everything and fails if a spawn outlives its
wall-clock guard, so a regression to a hang is a failure, not a stuck run.
"""

from __future__ import annotations

import datetime
import os
import time

import pytest
import torch
import torch.distributed as dist

import fastmtl
from _spawn import launch

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

PG_TIMEOUT_S = 3.0
GUARD_S = 120  # per spawn: imports on a loaded 2-core machine plus one 3 s timeout
SHAPES = [(2, 3), (5,), (1, 4)]
K = 4


def _shard(rank, k=K, shapes=SHAPES):
    g = torch.Generator().manual_seed(100 + rank)
    return [[torch.randn(s, generator=g, dtype=torch.float64) for s in shapes] for _ in range(k)]


def _attempt(results, key, fn):
    start = time.monotonic()
    try:
        out = fn()
        results[key] = {"ok": out}
    except Exception as exc:  # recorded, asserted in the parent
        results[key] = {"error": f"{type(exc).__name__}: {exc}"}
    results[key]["seconds"] = time.monotonic() - start


def _init(rank, world, port):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=PG_TIMEOUT_S))
    return dist.group.WORLD


def _inject(rank, bad_rank, action):
    """Make this rank's local Gram (mid-step, before the all_reduce) fail with ``action``."""
    import fastmtl.distributed.sharded as fd

    original = fd.gram_of

    def failing(*args, **kwargs):
        if rank == bad_rank:
            action()
        return original(*args, **kwargs)
    fd.gram_of = failing
    return lambda: setattr(fd, "gram_of", original)


def _raise():
    raise RuntimeError("injected backend failure")


def _worker_checks(rank, world, port, outdir):
    pg = _init(rank, world, port)
    res = {}
    ok = _shard(rank)

    def call(grads, method="upgrad", **kw):
        return lambda: fastmtl.combine(grads, method, process_group=pg, check_finite=True, **kw)

    _attempt(res, "k", call(_shard(rank, k=3) if rank == 2 else ok))
    _attempt(res, "params", call(_shard(rank, shapes=SHAPES[:2]) if rank == 0 else ok))
    _attempt(res, "shape", call(_shard(rank, shapes=[(2, 3), (5,), (4, 1)]) if rank == 1 else ok))
    _attempt(res, "method", call(ok, "mgda" if rank == 1 else "upgrad"))
    ragged = [list(row) for row in ok]
    ragged[1][0] = torch.randn(3, 3, dtype=torch.float64)
    _attempt(res, "local_error", call(ragged if rank == 1 else ok))
    restore = _inject(rank, 2, _raise)
    _attempt(res, "raise_checked", call(ok))
    restore()
    _attempt(res, "ddp_k", lambda: fastmtl.distributed.ddp_combine(
        _shard(rank, k=3) if rank == 0 else ok, "upgrad", process_group=pg, check_finite=True))
    # After all that the group is still in step: a good call succeeds on every rank.
    _attempt(res, "after", lambda: fastmtl.combine(ok, "upgrad", process_group=pg, check_finite=True,
                                                   return_info=True)[1].weights)
    # Last (the group is broken afterwards): rank 2 raises mid-step without check_finite and stays
    # alive; the others are left in the all_reduce until the timeout.
    restore = _inject(rank, 2, _raise)
    _attempt(res, "raise_unchecked", lambda: fastmtl.combine(ok, "upgrad", process_group=pg))
    restore()
    if rank == 2:
        time.sleep(PG_TIMEOUT_S + 3)  # alive, so the others see the timeout, not a closed socket
    torch.save(res, os.path.join(outdir, f"rank{rank}.pt"))
    os._exit(0)  # the group is unusable now; do not wait in destroy_process_group


def _worker_death(rank, world, port, outdir):
    pg = _init(rank, world, port)
    res = {}
    _inject(rank, 1, lambda: os._exit(13))
    _attempt(res, "death", lambda: fastmtl.combine(_shard(rank), "upgrad", process_group=pg))
    torch.save(res, os.path.join(outdir, f"rank{rank}.pt"))
    os._exit(0)


def _launch(worker, world, outdir):
    return launch(worker, world, outdir, GUARD_S)


@pytest.fixture(scope="module")
def checks(tmp_path_factory):
    codes, results = _launch(_worker_checks, 3, tmp_path_factory.mktemp("faults3"))
    assert codes == [0, 0, 0] and all(r is not None for r in results), codes
    return results


def _errors(results, key):
    return [r[key].get("error", f"no error, got {r[key].get('ok')!r}") for r in results]


@pytest.mark.parametrize("key, expected", [
    ("k", "rank 2 has K = 3 task gradients where rank 0 has K = 4"),
    ("params", ("rank 1 has 3 parameters where rank 0 has 2 parameters",
                "rank 2 has 3 parameters where rank 0 has 2 parameters")),
    ("shape", "rank 1 has other parameter shapes (after the first, sharded, dimension"),
    ("method", "rank 1 has a different method than rank 0"),
])
def test_mismatch_is_reported_on_every_rank(checks, key, expected):
    for rank, msg in enumerate(_errors(checks, key)):
        assert msg.startswith("ValueError: combine(..., process_group=...): the ranks' inputs disagree: "), (rank, msg)
        for part in (expected,) if isinstance(expected, str) else expected:
            assert part in msg, (rank, msg)
        assert checks[rank][key]["seconds"] < PG_TIMEOUT_S, (rank, checks[rank][key])  # at once, no timeout


def test_local_validation_error_is_reported_on_every_rank(checks):
    for rank, msg in enumerate(_errors(checks, "local_error")):
        if rank == 1:  # its own error, unchanged
            assert msg.startswith("ValueError: task 1, parameter 0: shape (3, 3) differs from task 0's (2, 3)"), msg
        else:
            assert msg.startswith("ValueError: combine(..., process_group=...): 1 of 3 ranks failed before the "
                                  "collective, so no rank continues (rank 1 of 3: ValueError: task 1, parameter 0:"), msg
        assert checks[rank]["local_error"]["seconds"] < PG_TIMEOUT_S


def test_rank_raising_mid_step_with_check_finite_stops_every_rank_at_once(checks):
    for rank, msg in enumerate(_errors(checks, "raise_checked")):
        if rank == 2:
            assert msg == "RuntimeError: injected backend failure", msg
        else:
            assert msg.startswith("RuntimeError: combine(..., process_group=...): 1 of 3 ranks failed before the "
                                  "collective, so no rank continues (rank 2 of 3: RuntimeError: injected backend "
                                  "failure)"), msg
        assert checks[rank]["raise_checked"]["seconds"] < PG_TIMEOUT_S


def test_ddp_combine_mismatch(checks):
    for rank, msg in enumerate(_errors(checks, "ddp_k")):
        assert msg.startswith("ValueError: ddp_combine: the ranks' inputs disagree: rank 1 has K = 4 task "
                              "gradients where rank 0 has K = 3"), (rank, msg)


def test_group_still_usable_after_reported_faults(checks):
    lams = [r["after"].get("ok") for r in checks]
    assert all(isinstance(lam, torch.Tensor) for lam in lams), _errors(checks, "after")
    assert all(torch.equal(lam, lams[0]) for lam in lams)


def test_rank_raising_mid_step_without_check_finite_fails_the_others_at_the_timeout(checks):
    for rank, msg in enumerate(_errors(checks, "raise_unchecked")):
        seconds = checks[rank]["raise_unchecked"]["seconds"]
        if rank == 2:
            assert msg == "RuntimeError: injected backend failure", msg
            continue
        assert msg.startswith(f"RuntimeError: fastmtl: the all_reduce of the partial Gram matrices failed on rank "
                              f"{rank} of 3: "), msg
        assert "Timed out" in msg and "leaves the other ranks here until the process group's timeout" in msg, msg
        assert 0.8 * PG_TIMEOUT_S <= seconds < PG_TIMEOUT_S + 30, seconds


def test_rank_dying_mid_step_fails_the_others(tmp_path):
    codes, results = _launch(_worker_death, 2, tmp_path)
    assert codes == [0, 13], codes
    assert results[1] is None  # it died before writing anything
    r = results[0]["death"]
    assert r.get("error", "").startswith("RuntimeError: fastmtl: the all_reduce of the partial Gram matrices "
                                         "failed on rank 0 of 2: "), r
    assert r["seconds"] < PG_TIMEOUT_S + 30, r
