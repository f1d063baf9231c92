"""Sharded method state (DB-MTL, per-parameter GradVac) under ``combine(..., process_group=pg)``:
the sharded run equals the unsharded one, and its checkpoint (``torch.distributed.checkpoint``, or
``torch.save`` per rank) resumes bitwise on the same world size and fails clearly on another.

One 2-process gloo spawn under a wall-clock guard (as in test_distributed_faults.py); every rank
records its results and the parent asserts them.
"""

from __future__ import annotations

import datetime
import io
import os

import pytest
import torch
import torch.distributed as dist

import fastmtl
from fastmtl.methods import DBMTL, GradVac
from _spawn import launch

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

GUARD_S = 150
WORLD, K, N = 2, 3, 6
SHAPES = [(5, 3), (4,), (3, 2), (1,)]  # (1,): one rank holds an empty shard


def full_grads(step):
    g = torch.Generator().manual_seed(300 + step)
    grads = [[torch.randn(s, generator=g, dtype=torch.float64) for s in SHAPES] for _ in range(K)]
    losses = torch.rand(K, generator=g, dtype=torch.float64) + 0.5
    return grads, losses


def shard(t, rank):
    """FSDP2-style: chunks of the first dimension (an empty chunk where there are too few rows)."""
    chunks = torch.chunk(t, WORLD, 0)
    return chunks[rank] if rank < len(chunks) else t[t.shape[0]:]


def local(step, rank):
    grads, losses = full_grads(step)
    # Each rank's own losses; their rank average is the unsharded run's losses.
    own = losses * (1.0 + 0.2 * (rank - (WORLD - 1) / 2))
    return [[shard(t, rank) for t in row] for row in grads], own


def make(name):
    return DBMTL() if name == "db_mtl" else GradVac(granularity="per_param")


def run(m, gen, pg, rank, start, stop):
    out = []
    for step in range(start, stop):
        grads, losses = local(step, rank)
        d = fastmtl.combine(grads, m, losses=losses, generator=gen, process_group=pg)
        out.append([t.clone() for t in d])
    return out


def _attempt(res, key, fn):
    from torch.distributed.checkpoint.api import CheckpointException  # not an Exception subclass

    try:
        res[key] = {"ok": fn()}
    except (Exception, CheckpointException) as exc:  # recorded, asserted in the parent
        res[key] = {"error": f"{type(exc).__name__}: {exc}"}


def _worker(rank, world, port, outdir):
    import torch.distributed.checkpoint as dcp

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=30))
    pg = dist.group.WORLD
    res = {}
    for name in ("db_mtl", "gradvac"):
        # The unsharded run on the whole gradients (rank-averaged losses, rank 0's generator seed).
        ref, gen = make(name), torch.Generator().manual_seed(11)
        whole = [fastmtl.combine(full_grads(s)[0], ref, losses=full_grads(s)[1], generator=gen) for s in range(N)]
        res[f"{name}/whole"] = [[shard(t, rank) for t in d] for d in whole]
        # Sharded, uninterrupted; the ranks' generators are seeded differently (rank 0's decides).
        res[f"{name}/sharded"] = run(make(name), torch.Generator().manual_seed(11 + 7 * rank), pg, rank, 0, N)
        # Sharded, checkpointed with DCP half-way, resumed into fresh instances.
        m, gen = make(name), torch.Generator().manual_seed(11 + 7 * rank)
        run(m, gen, pg, rank, 0, N // 2)
        path = os.path.join(outdir, f"dcp_{name}")
        dcp.save({"method": m.state_dict(), "generator": gen.get_state()}, checkpoint_id=path)
        res[f"{name}/keys"] = sorted(m.state_dict())
        m2, gen2 = make(name), torch.Generator()
        template = {"method": m2.state_dict(process_group=pg), "generator": gen2.get_state()}
        dcp.load(template, checkpoint_id=path)
        m2.load_state_dict(template["method"], process_group=pg)
        gen2.set_state(template["generator"])
        res[f"{name}/resumed_dcp"] = run(m2, gen2, pg, rank, N // 2, N)
        # The same through torch.save per rank, weights_only.
        buf = io.BytesIO()
        torch.save(m.state_dict(), buf)
        buf.seek(0)
        m3 = make(name)
        m3.load_state_dict(torch.load(buf, weights_only=True), process_group=pg)
        gen3 = torch.Generator()
        gen3.set_state(template["generator"])
        res[f"{name}/resumed_save"] = run(m3, gen3, pg, rank, N // 2, N)
        sd = m.state_dict()
        # Errors: another world size (a group of this rank alone), no group, a larger world in dcp.load.
        alone = [dist.new_group([r]) for r in range(world)]  # a collective: every rank creates every group
        _attempt(res, f"{name}/world1", lambda name=name, sd=sd, g=alone[rank]: make(name).load_state_dict(sd, process_group=g))
        _attempt(res, f"{name}/nogroup", lambda name=name, sd=sd: make(name).load_state_dict(sd))
        _attempt(res, f"{name}/unsharded_into_sharded", lambda name=name: run(
            _stepped_unsharded(name), torch.Generator(), pg, rank, 0, 1))
        bigger = {"method": dict(m2.state_dict(process_group=pg), **{"shard2": None})}
        _attempt(res, f"{name}/world3", lambda b=bigger, p=path: dcp.load(b, checkpoint_id=p))
        dist.barrier()
    torch.save(res, os.path.join(outdir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def _stepped_unsharded(name):
    m = make(name)
    fastmtl.combine(full_grads(0)[0], m, losses=full_grads(0)[1], generator=torch.Generator())
    return m


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    codes, results = launch(_worker, WORLD, tmp_path_factory.mktemp("sharded_state"), GUARD_S)
    assert codes == [0] * WORLD and all(r is not None for r in results), codes
    return results


def _flat(steps):
    return torch.cat([t.reshape(-1) for d in steps for t in d])


@pytest.mark.parametrize("name", ["db_mtl", "gradvac"])
def test_sharded_equals_unsharded(results, name):
    for r in results:
        torch.testing.assert_close(_flat(r[f"{name}/sharded"]), _flat(r[f"{name}/whole"]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["db_mtl", "gradvac"])
@pytest.mark.parametrize("how", ["dcp", "save"])
def test_resume_on_the_same_world_size_is_bitwise(results, name, how):
    for rank, r in enumerate(results):
        assert r[f"{name}/keys"] == ["_method", "_version", f"shard{rank}", "world_size"]
        assert torch.equal(_flat(r[f"{name}/resumed_{how}"]), _flat(r[f"{name}/sharded"][N // 2:])), (rank, how)


@pytest.mark.parametrize("name", ["db_mtl", "gradvac"])
def test_other_world_size_and_missing_group_raise(results, name):
    for r in results:
        assert r[f"{name}/world1"]["error"].startswith(
            f"ValueError: {name} state key 'world_size': saved on 2 ranks, loading on 1; its state is sharded"), r
        assert r[f"{name}/nogroup"]["error"] == (
            f"ValueError: this {name} state dict was saved under a process group of 2 ranks: pass process_group= "
            "to load_state_dict"), r
        assert r[f"{name}/unsharded_into_sharded"]["error"] == (
            f"ValueError: this {name} instance holds state from calls without process_group; create a new "
            "instance for sharded gradients"), r
        assert "Missing key in checkpoint state_dict: method.shard2" in r[f"{name}/world3"]["error"], r
