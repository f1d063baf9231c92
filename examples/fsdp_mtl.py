"""Multi-task training with FSDP2 (``fully_shard``) and exact gradient surgery on sharded gradients.

Each rank holds a shard of every parameter. Per step:

1. forward once, K task losses on this rank's batch;
2. K backward passes (``retain_graph``): FSDP2 reduce-scatters each task's gradient, so after pass
   k every shared parameter's ``.grad`` is this rank's shard of the rank-averaged gradient of task k
   — we keep those local shards (``DTensor.to_local()``, no copy);
3. ``fastmtl.combine(shards, method, process_group=mesh, out=...)``: partial Gram per rank, one
   all_reduce of K×K values, the same λ on every rank, and the combined shard written straight
   into the sharded ``.grad`` of the shared parameters;
4. the task heads keep their own task's gradient; ``optimizer.step()`` as usual.

Run::

    python examples/fsdp_mtl.py                       # spawns 2 gloo processes on the CPU
    python examples/fsdp_mtl.py --world 3 --method pcgrad --check
    torchrun --nproc-per-node=8 examples/fsdp_mtl.py  # NCCL on GPUs (gloo on CPU)

``--check`` recomputes the first step on an unsharded copy of the model with every rank's batch
and single-process ``fastmtl.combine`` and compares (rank 0 prints the difference).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import socket

import torch
import torch.distributed as dist
from torch import nn

import fastmtl

K = 3


class MultiTaskNet(nn.Module):
    """Shared trunk, one small head per task. The last trunk layer has 1 output row, so with 2+
    ranks some ranks hold an empty shard of it."""

    def __init__(self, d_in: int = 6, hidden: int = 16, bottleneck: int = 1, tasks: int = K):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                   nn.Linear(hidden, bottleneck))
        self.heads = nn.ModuleList(nn.Linear(bottleneck, 1) for _ in range(tasks))

    def forward(self, x):
        h = self.trunk(x)
        return [head(h) for head in self.heads]  # [n, 1] each


def batch(step: int, rank: int, n: int = 8):
    """This rank's batch at ``step`` (seeded so that the check can rebuild every rank's batch)."""
    g = torch.Generator().manual_seed(10_000 * step + rank)
    x = torch.randn(n, 6, generator=g)
    targets = torch.stack([x[:, 0] - x[:, 1], -x[:, 0] + 0.5 * x[:, 2], x[:, 3].sin()])
    return x, targets


def task_losses(model, x, targets):
    return [nn.functional.mse_loss(o[:, 0], t) for o, t in zip(model(x), targets)]


def train(rank: int, world: int, args) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    device = torch.device(device_type, torch.cuda.current_device()) if device_type == "cuda" else torch.device("cpu")
    mesh = init_device_mesh(device_type, (world,))

    torch.manual_seed(0)  # identical initial weights on every rank
    model = MultiTaskNet().to(device)
    reference = copy.deepcopy(model) if args.check else None
    for layer in model.trunk:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    shared = list(model.trunk.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(args.seed)  # rank 0's generator decides random choices
    report = {"empty_shards": any(p.to_local().numel() == 0 for p in shared)}

    for step in range(args.steps):
        x, targets = batch(step, rank)
        losses = task_losses(model, x.to(device), targets.to(device))
        opt.zero_grad(set_to_none=True)
        task_grads = []
        for k, loss in enumerate(losses):
            for p in shared:  # a fresh .grad per task; the heads accumulate their own task only
                p.grad = None
            loss.backward(retain_graph=k < K - 1)
            task_grads.append([p.grad.to_local() for p in shared])
        for p in shared:
            p.grad = torch.zeros_like(p)  # sharded DTensor .grad to write the combined direction into
        out = [p.grad.to_local() for p in shared]
        _, info = fastmtl.combine(task_grads, args.method, losses=torch.stack([l.detach() for l in losses]),
                                  generator=gen, process_group=mesh, out=out, return_info=True)
        if step == 0 and args.check:
            report.update(check(rank, world, args, reference, shared, info))
        opt.step()
        if rank == 0:
            print(f"step {step}: losses {[round(l.item(), 4) for l in losses]}  "
                  f"λ {[round(v, 4) for v in info.weights.tolist()]}", flush=True)
    return report


def check(rank, world, args, reference, shared, info) -> None:
    """Step 0 again on the unsharded copy, with every rank's batch; compare the combined gradients."""
    per_rank = [task_losses(reference, *(t.to(next(reference.parameters()).device) for t in batch(0, r)))
                for r in range(world)]
    mean_losses = [sum(ls[k] for ls in per_rank) / world for k in range(K)]
    params = list(reference.trunk.parameters())
    grads = [list(torch.autograd.grad(loss, params, retain_graph=True)) for loss in mean_losses]
    gen = torch.Generator().manual_seed(args.seed)
    expected, exp_info = fastmtl.combine(grads, args.method, losses=torch.stack([l.detach() for l in mean_losses]),
                                         generator=gen, return_info=True)
    got = [p.grad.full_tensor() for p in shared]  # collective: every rank takes part
    err = max(float((a - b).abs().max()) for a, b in zip(got, expected))
    lam_err = float((info.weights - exp_info.weights).abs().max())
    if rank == 0:
        print(f"check: max |sharded - reference| = {err:.2e}, max |Δλ| = {lam_err:.2e}", flush=True)
    if err > 1e-5 or lam_err > 1e-5:
        raise RuntimeError(f"rank {rank}: check failed ({err:.2e}, {lam_err:.2e})")
    if rank == 0:
        print("check passed", flush=True)
    return {"grad_error": err, "weights_error": lam_err}


def _worker(rank: int, world: int, port: int, args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        train(rank, world, args)
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="upgrad", choices=sorted(fastmtl.METHODS))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--world", type=int, default=2, help="processes to spawn (without torchrun)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true", help="compare step 0 with an unsharded model")
    args = parser.parse_args()

    if "RANK" in os.environ:  # launched by torchrun
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        try:
            train(dist.get_rank(), dist.get_world_size(), args)
        finally:
            dist.destroy_process_group()
        return

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(args.world, port, args), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
