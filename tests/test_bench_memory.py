"""``python -m fastmtl.bench memory`` at a tiny size: every mode runs, the peak-memory probes see
what they claim to see, hooks mode's λ equals the materialised one, and the report files appear."""

from __future__ import annotations

import os

import pytest
import torch

from fastmtl.bench import memory
from fastmtl.bench.__main__ import main as bench_main

TINY = memory.Config(depth=2, width=32, K=3, batch=4, head_hidden=8)


def test_probe_sees_forward_backward_and_vmapped_allocations():
    lin = torch.nn.Linear(256, 256)
    x = torch.randn(8, 256)
    with memory.AllocationProbe() as probe:
        out = lin(x).relu()
        losses = torch.stack([out[:, :128].mean(), out[:, 128:].mean()])
        g = torch.autograd.grad(losses, lin.weight, grad_outputs=torch.eye(2), is_grads_batched=True)[0]
    assert g.shape == (2, 256, 256)
    assert probe.peak >= g.numel() * 4  # the K task gradients, allocated under vmap inside the backward
    del g, out, losses
    assert probe.live < 2 * 256 * 256 * 4


def test_materialized_step_peaks_at_least_at_the_task_gradients():
    trunk, heads, x, y = memory.build(memory.Config(depth=2, width=64, K=4, batch=4, head_hidden=8), torch.float32)
    step, _ = memory.make_step("materialize", "mean", trunk, heads, x, y)
    D = sum(p.numel() for p in trunk.parameters())
    assert memory.probe_peak(step, "cpu") >= 4 * D * 4


def test_measure_every_mode_and_lambda_agreement():
    rows = memory.measure(TINY, "upgrad", reps=1, rss=False)
    assert [r.mode for r in rows] == list(memory.MODES)
    for r in rows:
        assert r.note or (r.peak_mb > 0 and r.ms > 0)
    lam = memory.lambda_agreement(TINY, methods=("mgda", "pcgrad"))
    for method in ("mgda", "pcgrad"):
        assert lam[method]["hooks dλ"] < 1e-12
        assert lam[method]["hooks dG (rel.)"] < 1e-12


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_rss_child_measures_a_positive_step():
    assert memory.rss_peak("materialize", "mean", memory.Config(depth=2, width=256, K=4, batch=8)) > 0


def test_command_writes_the_report(tmp_path):
    bench_main(["memory", "--depth", "1", "--width", "16", "--K", "2", "--batch", "4", "--reps", "1", "--no-rss",
                "--no-lambda-check", "--no-slgrad", "--out-dir", str(tmp_path)])
    names = sorted(os.listdir(tmp_path))
    assert [n.rsplit("_", 1)[-1] for n in names] == ["memory.csv", "memory.md", "memory.png"]
    text = (tmp_path / names[1]).read_text()
    assert "| hooks |" in text and "| materialize |" in text and "MLP trunk 1 × 16" in text


def test_slgrad_b4_hooks_equal_jvp():
    out = __import__("fastmtl.bench.memory_slgrad", fromlist=["slgrad_b4"]).slgrad_b4(reps=1)
    assert out["max |dW|"] < 1e-12 and out["max |d grad|"] < 1e-12 and out["max |W|"] > 0
    assert out["jvp ms"] > 0 and out["hooks ms"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_peaks_from_the_allocator():
    cfg = memory.Config(depth=2, width=512, K=4, batch=16, device="cuda")
    rows = {r.mode: r for r in memory.measure(cfg, "upgrad", modes=("materialize", "hooks"), reps=1, rss=False)}
    assert rows["hooks"].peak_mb < rows["materialize"].peak_mb
    lam = memory.lambda_agreement(cfg, methods=("upgrad",))
    assert lam["upgrad"]["hooks dλ"] < 1e-10
