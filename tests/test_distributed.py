"""torch.distributed: sharded ``combine(..., process_group=...)`` and ``ddp_combine``, over gloo on CPU.

One spawn per world size (2 and 3 processes) runs every case; the workers save their results and
the assertions run here, against single-process ``combine`` on the concatenated gradients.
"""

from __future__ import annotations

import datetime
import os
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import fastmtl
from fastmtl.distributed import shard_bounds
from fastmtl.distributed.sharded import pack_generator_state, unpack_generator_state
from fastmtl.methods import METHODS, Direction, DirectionMethod, WeightedPCGrad
from _spawn import launch

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

ROOT = Path(__file__).resolve().parents[1]
WORLDS = (2, 3)
K = 4
SHAPES = [(6, 3), (5,), (2, 4), (1, 7), (3,)]
NONE = {(1, 2), (3, 4)}  # (task, parameter) pairs that are None (task does not touch the parameter)
D = sum(int(torch.Size(s).numel()) for s in SHAPES)  # 18 + 5 + 8 + 7 + 3 = 41

def random_cuts(n, world, seed, force_empty=None):
    """``world + 1`` sorted cut points of ``[0, n]`` at random (seeded); rank ``force_empty`` gets
    an empty slice."""
    g = torch.Generator().manual_seed(seed)
    cuts = [0] + sorted(torch.randint(0, n + 1, (world - 1,), generator=g).tolist()) + [n]
    if force_empty == world - 1:
        cuts[world - 1] = n
    elif force_empty is not None:
        cuts[force_empty + 1] = cuts[force_empty]
    return cuts


# Column cuts of the matrix/vector layouts (rank 0's shard is empty with 2 ranks, rank 1's with 3),
# and the dim-0 cuts of every parameter in the per-parameter layout (the last rank's shard of the
# first parameter is empty).
CUTS = {w: random_cuts(D, w, seed=w, force_empty=w % 2) for w in (2, 3)}
PARAM_CUTS = {w: [random_cuts(s[0], w, seed=10 * w + p, force_empty=w - 1 if p == 0 else None)
                  for p, s in enumerate(SHAPES)] for w in (2, 3)}
LAYOUTS = ("matrix", "vectors", "params")
TIMEOUT_S = 150


def nan_rank(world):
    """The rank whose shard gets a NaN in the check_finite / NaN-policy cases (it holds rows of
    parameter 0; the last rank's shard of it is empty)."""
    return world - 2


# ----------------------------------------------------------------------------------------------
# Data shared by the workers and the checks (deterministic, same in every process).
# ----------------------------------------------------------------------------------------------

def full_data():
    g = torch.Generator().manual_seed(1234)
    base = torch.randn(D, generator=g, dtype=torch.float64)
    signs = torch.tensor([1.0, -1.0, 1.0, -0.5], dtype=torch.float64)
    J = signs[:, None] * base + 0.6 * torch.randn(K, D, generator=g, dtype=torch.float64)
    reference = base + 0.3 * torch.randn(D, generator=g, dtype=torch.float64)
    return J, reference


def rank_losses(rank):
    return torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=torch.float64) * (1.0 + 0.25 * rank)


def mean_losses(world):
    return torch.stack([rank_losses(r) for r in range(world)]).sum(0) / world


def ddp_local(world, rank):
    """Rank ``rank``'s local task gradients and reference under data parallelism (its own batch)."""
    J, reference = full_data()
    noise = torch.randn(K + 1, D, generator=torch.Generator().manual_seed(900 + rank), dtype=torch.float64)
    return J + 0.3 * noise[:K], reference + 0.3 * noise[K]


def ddp_mean(world):
    """The rank average of :func:`ddp_local`: what DDP's all-reduce would give."""
    locals_ = [ddp_local(world, r) for r in range(world)]
    return (torch.stack([j for j, _ in locals_]).sum(0) / world, torch.stack([v for _, v in locals_]).sum(0) / world)


def load_example():
    import importlib.util

    spec = importlib.util.spec_from_file_location("fsdp_mtl_example", ROOT / "examples" / "fsdp_mtl.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def to_params(flat_rows, drop=NONE):
    """K flat rows of length D → [K][P] per-parameter tensors with the SHAPES (None in ``drop``)."""
    out = []
    for k, row in enumerate(flat_rows):
        start, ps = 0, []
        for p, shape in enumerate(SHAPES):
            n = int(torch.Size(shape).numel())
            ps.append(None if (k, p) in drop else row[start:start + n].reshape(shape).clone())
            start += n
        out.append(ps)
    return out


def zeroed(J):
    """J with the NONE entries zeroed: the matrix equivalent of the per-parameter input."""
    J = J.clone()
    start = 0
    for p, shape in enumerate(SHAPES):
        n = int(torch.Size(shape).numel())
        for k in range(K):
            if (k, p) in NONE:
                J[k, start:start + n] = 0
        start += n
    return J


def param_rows(p, world, rank):
    """Rank ``rank``'s rows of parameter ``p`` (random dim-0 split, as FSDP-style sharding)."""
    cuts = PARAM_CUTS[world][p]
    return cuts[rank], cuts[rank + 1]


def shard(layout, J, world, rank, reference=None):
    """This rank's shard of J (and of the reference) in ``layout``."""
    if layout in ("matrix", "vectors"):
        lo, hi = CUTS[world][rank], CUTS[world][rank + 1]
        Jz = zeroed(J)
        grads = Jz[:, lo:hi].clone() if layout == "matrix" else [Jz[k, lo:hi].clone() for k in range(K)]
        return grads, None if reference is None else reference[lo:hi].clone()
    params = to_params(list(J))
    ref = None if reference is None else to_params([reference], drop=())[0]
    grads = []
    for k in range(K):
        row = []
        for p, _shape in enumerate(SHAPES):
            t = params[k][p]
            lo, hi = param_rows(p, world, rank)
            row.append(None if t is None else t[lo:hi].clone())
        grads.append(row)
    if ref is not None:
        ref = [t[slice(*param_rows(p, world, rank))].clone() for p, t in enumerate(ref)]
    return grads, ref


def unshard(layout, shards):
    """Concatenate the per-rank directions back into one."""
    if layout in ("matrix", "vectors"):
        return torch.cat(shards)
    out = []
    for p in range(len(SHAPES)):
        pieces = [s[p] for s in shards]
        out.append(None if pieces[0] is None else torch.cat(pieces, 0))
    return out


def full_input(layout, J, reference=None):
    if layout == "params":
        return to_params(list(J)), None if reference is None else to_params([reference], drop=())[0]
    Jz = zeroed(J)
    return (Jz if layout == "matrix" else list(Jz)), reference


def cases():
    """(case id, method name, hyper-parameters); "REF" is replaced by the (sharded) reference."""
    out = [(name, name, {}) for name, cls in sorted(METHODS.items()) if not issubclass(cls, DirectionMethod)]
    out += [("mgda[loss+]", "mgda", {"normalization": "loss+"}),
            ("hydalearn[reference]", "hydalearn", {"reference": "REF"}),
            ("pcgrad[mean]", "pcgrad", {"reduction": "mean"})]
    return out


def _hp(hp, ref):
    return {k: (ref if v == "REF" else v) for k, v in hp.items()}


class SignAgree(DirectionMethod):
    """Toy elementwise method: Σ g_k where every task agrees in sign, else 0 (shard-local)."""

    name = "sign_agree_test"
    shard_local = True

    def direction(self, engine, ctx):
        tg, out = engine.tg, engine.targets
        parts = []
        for p in range(tg.num_params):
            if tg.shapes[p] is None:
                parts.append(None)
                continue
            S = torch.stack([v for v in tg.flat_views(p) if v is not None])
            agree = (S > 0).all(0) | (S < 0).all(0)
            d = torch.where(agree, S.sum(0), torch.zeros_like(S[0])).view(tg.shapes[p])
            if out is not None:
                out[p].copy_(d)
                d = out[p]
            parts.append(d)
        return Direction(parts)


class WholeGradient(SignAgree):
    name = "whole_gradient_test"
    shard_local = False


# ----------------------------------------------------------------------------------------------
# Worker (runs in each spawned process).
# ----------------------------------------------------------------------------------------------

def _record(results, key, fn):
    start = time.perf_counter()
    try:
        results[key] = fn()
    except Exception as exc:  # recorded, asserted in the parent
        results[key] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    group = key[0] if isinstance(key, tuple) else key
    seconds = results.setdefault("_seconds", {})
    seconds[group] = seconds.get(group, 0.0) + time.perf_counter() - start


def _worker(rank, world, port, outdir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    pg = dist.group.WORLD
    results = {}
    J, reference = full_data()
    losses = rank_losses(rank)
    try:
        # 1. Every Gram method, every layout, rank-dependent generators and losses.
        for layout in LAYOUTS:
            grads, ref = shard(layout, J, world, rank, reference)
            for case, name, hp in cases():
                def run(grads=grads, ref=ref, name=name, hp=hp):
                    gen = torch.Generator().manual_seed(100 + rank)
                    d, info = fastmtl.combine(grads, name, losses=losses, generator=gen, process_group=pg,
                                              return_info=True, **_hp(hp, ref))
                    return {"d": d, "lam": info.weights, "G": info.gram, "gen": gen.get_state()}
                _record(results, (layout, case), run)

        # 2. generator=None: rank 0's default generator decides; other ranks' global RNG untouched.
        def no_generator():
            grads, _ = shard("matrix", J, world, rank)
            torch.manual_seed(50 + rank)
            d, info = fastmtl.combine(grads, "pcgrad", process_group=pg, return_info=True)
            return {"d": d, "lam": info.weights, "global_state": torch.get_rng_state()}
        _record(results, "no_generator", no_generator)

        # 3. A stateful instance across steps (losses averaged, so its state agrees on every rank).
        def stateful():
            grads, _ = shard("params", J, world, rank)
            m = WeightedPCGrad(gamma=2.0)
            gen = torch.Generator().manual_seed(7 + rank)
            for step in range(2):
                fastmtl.combine(grads, m, losses=losses * (step + 1), generator=gen, process_group=pg)
            m.end_epoch()
            d, info = fastmtl.combine(grads, m, losses=losses, generator=gen, process_group=pg, return_info=True)
            return {"d": d, "lam": info.weights}
        _record(results, "stateful", stateful)

        # 4. out= buffers, and a DeviceMesh as the group.
        def out_buffers():
            from torch.distributed.device_mesh import init_device_mesh
            mesh = init_device_mesh("cpu", (world,))
            grads, _ = shard("params", J, world, rank)
            bufs = [None if all(row[p] is None for row in grads) else torch.full_like(
                next(row[p] for row in grads if row[p] is not None), 7.0) for p in range(len(SHAPES))]
            d = fastmtl.combine(grads, "upgrad", process_group=mesh, out=bufs)
            return {"d": [None if t is None else t.clone() for t in d],
                    "same": all(a is b for a, b in zip(d, bufs))}
        _record(results, "out", out_buffers)

        # 5. check_finite: NaN in one rank's shard of task 2 → every rank raises the same error.
        poisoned = [list(row) for row in shard("params", J, world, rank)[0]]
        if rank == nan_rank(world):
            poisoned[2][0] = poisoned[2][0].clone()
            poisoned[2][0].view(-1)[1] = float("nan")
        for method in ("upgrad", "mean"):
            def finite_check(method=method):
                fastmtl.combine(poisoned, method, process_group=pg, check_finite=True)
                return {"raised": None}
            _record(results, ("check_finite", method), finite_check)

            # ... and without it: Gram methods NaN everywhere on every rank, mean only where poisoned.
            def nan_policy(method=method):
                d = fastmtl.combine(poisoned, method, process_group=pg)
                return {"nan": [None if t is None else torch.isnan(t) for t in d]}
            _record(results, ("nan_policy", method), nan_policy)

        def finite_losses():
            grads, _ = shard("params", J, world, rank)
            bad = losses.clone()
            if rank == nan_rank(world):
                bad[1] = float("nan")
            fastmtl.combine(grads, "mgda", losses=bad, process_group=pg, check_finite=True)
            return {"raised": None}
        _record(results, "check_finite_losses", finite_losses)

        # 6. Elementwise DirectionMethods: shard-local when they say so.
        for cls in (SignAgree, WholeGradient):
            def gram_free(cls=cls):
                grads, _ = shard("params", J, world, rank)
                return {"d": fastmtl.combine(grads, cls(), process_group=pg)}
            _record(results, ("gram_free", cls.name), gram_free)
        if "graddrop" in METHODS:
            def graddrop():
                grads, _ = shard("params", J, world, rank)
                gen = torch.Generator().manual_seed(5 + rank)  # per-rank seeds: independent masks
                return {"d": fastmtl.combine(grads, "graddrop", process_group=pg, generator=gen)}
            _record(results, ("gram_free", "graddrop"), graddrop)

        # 7. DDP: local gradients that differ per rank; reduced=False (reduce-scatter) and reduced=True.
        local_J, local_ref = ddp_local(world, rank)
        mean_J, mean_ref = ddp_mean(world)
        for layout in ("matrix", "params"):
            for reduced in (False, True):
                src_J, src_ref = (mean_J, mean_ref) if reduced else (local_J, local_ref)
                grads, ref = full_input(layout, src_J, src_ref)
                for case, name, hp in cases():
                    def ddp(grads=grads, ref=ref, name=name, hp=hp, reduced=reduced):
                        gen = torch.Generator().manual_seed(300 + rank)
                        d, info = fastmtl.distributed.ddp_combine(
                            grads, name, process_group=pg, reduced=reduced, losses=losses, generator=gen,
                            return_info=True, **_hp(hp, ref))
                        return {"d": d, "lam": info.weights}
                    _record(results, ("ddp", layout, reduced, case), ddp)

        # 8. The FSDP2 example (fully_shard on gloo), checked against an unsharded model.
        example = load_example()
        for method in ("upgrad", "pcgrad"):
            def fsdp2(method=method):
                import argparse

                args = argparse.Namespace(method=method, steps=2, seed=0, check=True)
                return example.train(rank, world, args)
            _record(results, ("fsdp2", method), fsdp2)
    finally:
        torch.save(results, os.path.join(outdir, f"rank{rank}.pt"))
        dist.destroy_process_group()


def _launch(world, outdir):
    codes, results = launch(_worker, world, outdir, TIMEOUT_S)
    assert codes == [0] * world and all(r is not None for r in results), codes
    return results


@pytest.fixture(scope="module", params=WORLDS, ids=lambda w: f"world{w}")
def run(request, tmp_path_factory):
    world = request.param
    return world, _launch(world, tmp_path_factory.mktemp(f"world{world}"))


def _ok(results, key):
    rs = [r[key] for r in results]
    for rank, r in enumerate(rs):
        assert "error" not in r, f"rank {rank}, {key}: {r['error']}\n{r['traceback']}"
    return rs


def _close(a, b, **kw):
    kw = {"rtol": 1e-8, "atol": 1e-10, **kw}
    if isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert (x is None) == (y is None)
            if x is not None:
                torch.testing.assert_close(x, y, **kw)
    else:
        torch.testing.assert_close(a, b, **kw)


# ----------------------------------------------------------------------------------------------
# Checks.
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case, name, hp", cases(), ids=[c[0] for c in cases()])
def test_sharded_equals_single_process(run, layout, case, name, hp):
    world, results = run
    rs = _ok(results, (layout, case))
    J, reference = full_data()
    grads, ref = full_input(layout, J, reference)
    gen = torch.Generator().manual_seed(100)  # rank 0's generator decides the random choices
    d, info = fastmtl.combine(grads, name, losses=mean_losses(world), generator=gen, return_info=True,
                              **_hp(hp, ref))
    for r in rs[1:]:  # identical λ and Gram on every rank, bit for bit
        assert torch.equal(r["lam"], rs[0]["lam"]) and torch.equal(r["G"], rs[0]["G"])
    _close(rs[0]["G"], info.gram)
    _close(rs[0]["lam"], info.weights)
    _close(unshard(layout, [r["d"] for r in rs]), d)
    # Random methods: every rank's generator now sits where the single-process one does.
    from fastmtl.methods import make_method
    if make_method(name, _hp(hp, ref)).uses_generator:
        for r in rs:
            assert torch.equal(r["gen"], gen.get_state())


def test_random_shards_include_empty_ones():
    for world in WORLDS:
        cuts = CUTS[world]
        assert cuts[0] == 0 and cuts[-1] == D and cuts == sorted(cuts)
        assert any(cuts[r] == cuts[r + 1] for r in range(world))
        for p, shape in enumerate(SHAPES):
            pc = PARAM_CUTS[world][p]
            assert pc[0] == 0 and pc[-1] == shape[0] and pc == sorted(pc)
        assert param_rows(0, world, world - 1)[0] == param_rows(0, world, world - 1)[1]
    print({w: CUTS[w] for w in WORLDS}, {w: PARAM_CUTS[w] for w in WORLDS})


def test_generator_none_follows_rank0_default_generator(run):
    world, results = run
    rs = _ok(results, "no_generator")
    for r in rs[1:]:
        assert torch.equal(r["lam"], rs[0]["lam"])
    J, _ = full_data()
    torch.manual_seed(50)
    d = fastmtl.combine(zeroed(J), "pcgrad")
    _close(unshard("matrix", [r["d"] for r in rs]), d)
    assert torch.equal(rs[0]["global_state"], torch.get_rng_state())  # rank 0 advanced as one process would
    for rank in range(1, world):  # the other ranks' global RNG is untouched
        torch.manual_seed(50 + rank)
        assert torch.equal(rs[rank]["global_state"], torch.get_rng_state())


def test_stateful_method_agrees_across_ranks(run):
    world, results = run
    rs = _ok(results, "stateful")
    J, _ = full_data()
    grads, _ = full_input("params", J)
    m = WeightedPCGrad(gamma=2.0)
    gen = torch.Generator().manual_seed(7)
    ml = mean_losses(world)
    for step in range(2):
        fastmtl.combine(grads, m, losses=ml * (step + 1), generator=gen)
    m.end_epoch()
    d, info = fastmtl.combine(grads, m, losses=ml, generator=gen, return_info=True)
    for r in rs[1:]:
        assert torch.equal(r["lam"], rs[0]["lam"])
    _close(rs[0]["lam"], info.weights)
    _close(unshard("params", [r["d"] for r in rs]), d)


def test_out_buffers_and_device_mesh(run):
    world, results = run
    rs = _ok(results, "out")
    assert all(r["same"] for r in rs)
    J, _ = full_data()
    _close(unshard("params", [r["d"] for r in rs]), fastmtl.combine(full_input("params", J)[0], "upgrad"))


@pytest.mark.parametrize("method", ["upgrad", "mean"])
def test_check_finite_raises_on_every_rank(run, method):
    world, results = run
    for rank, r in enumerate(results):
        msg = r[("check_finite", method)].get("error", "")
        assert msg.startswith(f"ValueError: non-finite values (NaN or Inf) in the gradient of task 2 "
                              f"(on 1 of {world} ranks); "), (rank, msg)
        if rank == nan_rank(world):
            assert msg.endswith("this rank's shard: task 2 (parameter 0)"), msg
        else:
            assert msg.endswith("this rank's shard is finite"), msg


def test_check_finite_losses_on_every_rank(run):
    world, results = run
    for rank, r in enumerate(results):
        msg = r["check_finite_losses"].get("error", "")
        assert msg.startswith(f"ValueError: non-finite task losses on 1 of {world} ranks"), (rank, msg)
        assert ("this rank's losses: [" in msg and "nan" in msg) == (rank == nan_rank(world)), (rank, msg)


def test_nan_policy_is_global_for_gram_methods(run):
    world, results = run
    for rank, r in enumerate(_ok(results, ("nan_policy", "upgrad"))):
        assert all(t is None or t.all() for t in r["nan"]), rank  # NaN everywhere, on every rank
    for rank, r in enumerate(_ok(results, ("nan_policy", "mean"))):
        count = sum(int(t.sum()) for t in r["nan"] if t is not None)
        assert count == (1 if rank == nan_rank(world) else 0)  # only the poisoned coordinate


def test_gram_free_methods_shard_local_only(run):
    world, results = run
    rs = _ok(results, ("gram_free", SignAgree.name))
    J, _ = full_data()
    _close(unshard("params", [r["d"] for r in rs]), fastmtl.combine(full_input("params", J)[0], SignAgree()))
    for r in results:
        assert r[("gram_free", WholeGradient.name)]["error"].startswith(
            "NotImplementedError: method 'whole_gradient_test' computes its direction from whole task gradients")


def test_graddrop_runs_shard_locally(run):
    if "graddrop" not in METHODS:
        pytest.skip("GradDrop is not registered")
    world, results = run
    d = unshard("params", [r["d"] for r in _ok(results, ("gram_free", "graddrop"))])
    J, _ = full_data()
    rows = to_params(list(J))
    for p, t in enumerate(d):
        S = torch.stack([row[p] for row in rows if row[p] is not None])
        pos, neg = S.clamp_min(0).sum(0), S.clamp_max(0).sum(0)
        # Elementwise sign dropout: each coordinate keeps the positive or the negative parts.
        assert bool((torch.isclose(t, pos) | torch.isclose(t, neg)).all()), p


@pytest.mark.parametrize("reduced", [False, True], ids=["reduce_scatter", "already_reduced"])
@pytest.mark.parametrize("layout", ["matrix", "params"])
@pytest.mark.parametrize("case, name, hp", cases(), ids=[c[0] for c in cases()])
def test_ddp_combine_equals_combine_of_mean_gradients(run, layout, reduced, case, name, hp):
    world, results = run
    rs = _ok(results, ("ddp", layout, reduced, case))
    grads, ref = full_input(layout, *ddp_mean(world))
    d, info = fastmtl.combine(grads, name, losses=mean_losses(world), generator=torch.Generator().manual_seed(300),
                              return_info=True, **_hp(hp, ref))
    for r in rs:
        assert torch.equal(r["lam"], rs[0]["lam"])
        _close(r["d"], d, rtol=1e-7, atol=1e-9)  # the full direction on every rank
    _close(rs[0]["lam"], info.weights, rtol=1e-7, atol=1e-9)


# ----------------------------------------------------------------------------------------------
# Single-process checks (no spawn).
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("grads", [torch.zeros(3, 0), [torch.zeros(0)] * 3, [[torch.zeros(0, 4), None]] * 3],
                         ids=["matrix", "vectors", "params"])
def test_empty_shard_input_is_accepted(grads):
    for method in ("mean", "upgrad", "hydalearn", "pcgrad"):
        d, info = fastmtl.combine(grads, method, return_info=True)
        assert torch.equal(info.gram, torch.zeros(3, 3))
        flat = d if isinstance(d, torch.Tensor) else d[0]
        assert flat.numel() == 0


def test_zero_tasks_still_rejected():
    with pytest.raises(ValueError, match="K = 0"):
        fastmtl.combine(torch.zeros(0, 0))


def test_process_group_without_init_process_group():
    if dist.is_initialized():
        pytest.skip("a process group is initialised in this process")
    with pytest.raises(RuntimeError, match="torch.distributed is not initialised"):
        fastmtl.combine(torch.randn(2, 3), "upgrad", process_group=object())


def test_shard_bounds_partition():
    for numel in (0, 1, 5, 41):
        for world in (1, 2, 3, 7):
            spans = [shard_bounds(numel, world, r) for r in range(world)]
            assert spans[0][0] == 0 and spans[-1][1] == numel
            assert all(a[1] == b[0] and a[0] <= a[1] for a, b in zip(spans, spans[1:]))


def test_generator_state_roundtrip():
    for gen in (torch.Generator().manual_seed(3), torch.Generator().manual_seed(2**40 + 1)):
        gen.manual_seed(5)
        torch.rand(7, generator=gen)
        state = gen.get_state()
        assert torch.equal(unpack_generator_state(pack_generator_state(state, 5058)), state)


@pytest.mark.parametrize("method", ["upgrad", "pcgrad"])
def test_fsdp2_example(run, method):
    """examples/fsdp_mtl.py's training loop (FSDP2 fully_shard, empty shards on some ranks), with its
    step-0 check against an unsharded model and single-process combine."""
    world, results = run
    rs = _ok(results, ("fsdp2", method))
    for r in rs:
        assert r["grad_error"] <= 1e-5 and r["weights_error"] <= 1e-5, r
    assert any(r["empty_shards"] for r in rs)  # the 1-row layer leaves some rank an empty shard
