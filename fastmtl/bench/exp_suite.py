"""The added offline experiments, each writing a per-seed CSV and a PNG to ``bench_out/`` and
printing a markdown table (mean ± std over seeds):

* ``b2``            GradNorm σ-scale toy (:mod:`.exp_gradnorm`): weights and gradient-norm ratios
* ``wpcgrad-toy``   weighted PCGrad on conflicting quadratics (:mod:`.exp_wpcgrad`)
* ``traj-b3b``      HydaLearn (first-order, look-ahead) and OL-AUX task shares on clean B3b
* ``traj-drift``    the same on B3b-drift (the helpful auxiliary switches half-way)
* ``gemtl``         GeMTL (p = −0.5, p → 0, linear schedule) against ``mean`` on B4 and B5
* ``wpcgrad-b5``    weighted PCGrad (uniform, current-loss, static 2:1, previous-epoch priorities) on B5
* ``b3``            SLGrad's Toy_reg with the released code's recipe and options (:mod:`.exp_toyreg`)
* ``traj-b4``       HydaLearn / OL-AUX task shares on B4, clean and with 60% flipped main labels

``quick=True`` is the seconds-long preset the tests use.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

from . import exp_gradnorm, exp_io, exp_toyreg, exp_traj_b4, exp_trajectories, exp_wpcgrad, experiments


def _emit(name: str, title: str, rows, table, metrics, out_dir: str, seconds: float, plot_metrics=None,
          draw: Optional[Callable[[str], bool]] = None) -> str:
    """CSV + PNG (``draw(png)``, or bars of ``plot_metrics``, default all) + the markdown block."""
    csv_path = exp_io.write_csv(os.path.join(out_dir, f"{name}.csv"), rows)
    png = os.path.join(out_dir, f"{name}.png")
    drawn = draw(png) if draw is not None else exp_io.plot_bars(table, plot_metrics or metrics, png, title)
    text = (f"# {title}\n" + exp_io.table_markdown(table, metrics) +
            f"\n({seconds:.0f} s; per-seed numbers in {csv_path}{'; ' + png if drawn else ''})\n")
    print(text)
    return text


def run_b2(seeds, quick: bool, out_dir: str) -> str:
    t = time.time()
    rows, traj = exp_gradnorm.b2_experiment(seeds, quick=quick)
    table = exp_io.summarize_rows(rows, "method", exp_gradnorm.B2_METRICS)
    exp_io.plot_trajectories({"GradNorm weights": {f"w{k + 1} (σ={s:g})": traj["gradnorm"]["weights"][..., k]
                                                   for k, s in enumerate(exp_gradnorm.SIGMAS)},
                              "weighted grad-norm ratio G2/G1": {
                                  m: traj[m]["norms"][..., 1] / traj[m]["norms"][..., 0] for m in traj}},
                             os.path.join(out_dir, "b2_traj.png"), window=20, ylabel="")
    return _emit("b2", f"B2 GradNorm σ-scale toy, σ = {exp_gradnorm.SIGMAS}, seeds {list(seeds)}", rows, table,
                 exp_gradnorm.B2_METRICS, out_dir, time.time() - t)


def run_wpcgrad_toy(seeds, quick: bool, out_dir: str) -> str:
    t = time.time()
    curves: Dict = {}
    rows = exp_wpcgrad.wpcgrad_toy_experiment(seeds, steps=800 if quick else 1500, curves=curves)
    exp_io.plot_trajectories({lab: {f"L{k + 1}": c[..., k] for k in range(c.shape[-1])} for lab, c in curves.items()},
                             os.path.join(out_dir, "wpcgrad_toy_lines.png"), ylabel="task loss",
                             title="Weighted PCGrad toy: task losses per step (band: ±std over seeds)")
    metrics = ("x1", "pred x1", "x2", "pred x2", "L1 final", "L2 final", "L3 final")
    table = exp_io.summarize_rows(rows, "setting", metrics)
    return _emit("wpcgrad_toy", "Weighted PCGrad toy: mean iterate vs Σ p̂_i a_i", rows, table, metrics,
                 out_dir, time.time() - t)


def _run_traj(setting: str, seeds, quick: bool, out_dir: str) -> str:
    t = time.time()
    rows, traj = exp_trajectories.trajectory_experiment(setting, seeds, quick=quick)
    names = ("main", "aux1", "aux2") if setting == "drift" else ("main", "helpful", "harmful")
    metrics = ["main MAE"] + [f"{n} {h}" for n in names[1:] for h in ("1st half", "2nd half")]
    table = exp_io.summarize_rows(rows, "method", metrics)
    steps = next(iter(traj.values())).shape[1]
    exp_io.plot_trajectories({m: {n: S[..., k] for k, n in enumerate(names)} for m, S in traj.items()},
                             os.path.join(out_dir, f"traj_{setting}_lines.png"), window=max(5, steps // 40),
                             vline=steps / 2 if setting == "drift" else None)
    return _emit(f"traj_{setting}", f"Task shares λ_k/Σλ on {'B3b-drift' if setting == 'drift' else 'clean B3b'}",
                 rows, table, metrics, out_dir, time.time() - t)


def _run_variants(name: str, problem: str, methods: Sequence[str], seeds, out_dir: str, **kw) -> str:
    t = time.time()
    kept, skipped = experiments.available_methods(methods)

    def runs():  # one problem (data split) per seed, shared by the methods
        for seed in seeds:
            p = experiments.PROBLEMS[problem](seed, **kw)
            for m in kept:
                yield p, m, seed

    results, prob = [], None
    for prob, m, seed in exp_io.progress(runs(), total=len(seeds) * len(kept), desc=name):
        results.append(experiments.train_one(prob, m, seed))
    rows = [dict({"method": r.method, "seed": r.seed, "seconds": r.seconds}, **r.metrics) for r in results]
    metrics = [k for k, _ in prob.metrics]
    table = exp_io.summarize_rows(rows, "method", metrics)
    title = f"{name}: {problem}, " + "; ".join(prob.notes) + f", {prob.epochs} epochs"
    if skipped:
        title += f" (not registered: {', '.join(skipped)})"
    return _emit(name, title, rows, table, metrics, out_dir, time.time() - t)


def run_b3(seeds, quick: bool, out_dir: str) -> str:
    t = time.time()
    rows, traces = exp_toyreg.b3_experiment(seeds, quick=quick)
    seconds = time.time() - t
    out = []
    for name, keep, metrics, plot in (
            ("b3_paper", ("paper",), exp_toyreg.B3_METRICS, ("main MAE", "aux MAE", "w noisy main", "w clean main")),
            ("b3_clean", ("clean",), ("main MAE", "aux MAE", "aux share", "dead main head"), ("main MAE", "aux MAE")),
            ("b3_options", None, exp_toyreg.B3_OPTION_METRICS, None)):
        sub = [dict(r, key=r["method"] if keep else f"{r['setting']} / {r['method']}") for r in rows
               if (r["setting"] in keep if keep else r["setting"] not in ("paper", "clean"))]
        if not sub:
            continue
        table = exp_io.summarize_rows(sub, "key", metrics)
        title = {"b3_paper": "B3 Toy_reg, the code's configuration: SGD, 30% of main targets → −0.5",
                 "b3_clean": "B3 Toy_reg, clean targets (SGD)",
                 "b3_options": "B3 Toy_reg options: corruption mode, noise on all tasks, Adam (30%)"}[name]
        title += f", seeds {list(seeds)}"
        draw = None
        if not keep:  # the options: one cluster of bars per setting, one bar per method
            grouped: dict = {}
            for key, row in table.items():
                setting, method = key.split(" / ")
                grouped.setdefault(setting, {})[method] = row
            draw = functools.partial(exp_io.plot_grouped_bars, grouped, ("main MAE", "w noisy/clean main"),
                                     title=title)
        out.append(_emit(name, title, sub, table, metrics, out_dir, seconds, plot, draw))
    # One line per seed (no band): seeds differ in kind here (a dead head freezes SLGrad's weights at 0).
    panels = {}
    for key, tr in traces.items():
        if not key.startswith("paper: "):
            continue
        method = key.split(": ", 1)[1]
        for step, prefix in (("", ""), (" (look-ahead step)", "LA-step ")):
            if f"{prefix}w noisy main" in tr:
                panels[method + step] = {f"seed {s} {kind}": tr[f"{prefix}w {kind} main"][i:i + 1]
                                         for i, s in enumerate(seeds) for kind in ("clean", "noisy")}
    if panels:
        exp_io.plot_trajectories(panels, os.path.join(out_dir, "b3_weights.png"), xlabel="epoch",
                                 ylabel="weight / uniform 1/(K·B)",
                                 title="SLGrad weights on corrupted vs clean main samples per epoch "
                                       "(B3, code's configuration)")
    return "".join(out)


def run_traj_b4(seeds, quick: bool, out_dir: str) -> str:
    t = time.time()
    rows, traj = exp_traj_b4.b4_trajectory_experiment(seeds, quick=quick)
    metrics = ("main AUC", "aux AUC") + exp_traj_b4.B4_TRAJ_METRICS[1:]
    table = exp_io.summarize_rows(rows, "setting", metrics)
    panels = {f"{lab}: {m}": {"main": S[..., 0], "auxiliary (mean of 9)": S[..., 1:].mean(-1)}
              for lab, d in traj.items() for m, S in d.items()}
    steps = next(iter(panels.values()))["main"].shape[1]
    exp_io.plot_trajectories(panels, os.path.join(out_dir, "traj_b4_lines.png"), window=max(5, steps // 40))
    return _emit("traj_b4", "Task shares λ_k/Σλ on B4 (digit-0 main task, clean or 60% flipped)", rows, table,
                 metrics, out_dir, time.time() - t, ("main AUC", "main share early", "main share late"))


GEMTL_METHODS = ("mean", "gemtl", "gemtl_p0", "gemtl_linear")
WPCGRAD_METHODS = ("mean", "pcgrad", "wpcgrad_uniform", "wpcgrad", "wpcgrad_static", "wpcgrad_prev")


def run_gemtl(seeds, quick: bool, out_dir: str) -> str:
    return (_run_variants("gemtl_b4", "b4", GEMTL_METHODS, seeds, out_dir, epochs=3 if quick else 30) +
            _run_variants("gemtl_b5", "b5", GEMTL_METHODS, seeds, out_dir, epochs=1 if quick else 20))


def run_wpcgrad_b5(seeds, quick: bool, out_dir: str) -> str:
    return _run_variants("wpcgrad_b5", "b5", WPCGRAD_METHODS, seeds, out_dir, epochs=1 if quick else 20)


SUITE: Dict[str, Callable] = {
    "b2": run_b2,
    "wpcgrad-toy": run_wpcgrad_toy,
    "traj-b3b": lambda s, q, o: _run_traj("b3b", s, q, o),
    "traj-drift": lambda s, q, o: _run_traj("drift", s, q, o),
    "gemtl": run_gemtl,
    "wpcgrad-b5": run_wpcgrad_b5,
    "b3": run_b3,
    "traj-b4": run_traj_b4,
}


def run_suite(names: Sequence[str] = tuple(SUITE), *, seeds: Sequence[int] = (0, 1, 2), quick: bool = False,
              out_dir: str = exp_io.OUT_DIR) -> List[str]:
    """Run the named experiments; returns their markdown blocks."""
    unknown = [n for n in names if n not in SUITE]
    if unknown:
        raise ValueError(f"unknown experiments {unknown}; choose from {list(SUITE)}")
    out = []
    for n in names:
        print(f"[{n}]", file=sys.stderr, flush=True)
        out.append(SUITE[n](list(seeds), quick, out_dir))
    return out
