"""fastmtl.integrations.logging.scalars and the TensorBoard example."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastmtl
from fastmtl.integrations.logging import scalars

ROOT = Path(__file__).resolve().parents[1]


def _jacobian(K=3, D=41, seed=0):
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(K, D, generator=g, dtype=torch.float64)
    J[1] -= 1.5 * J[0]                                   # a conflicting pair
    return J


def test_scalars_match_the_gradients():
    J = _jacobian()
    losses = torch.tensor([0.5, 1.5, 2.5], dtype=torch.float64)
    d, info = fastmtl.combine(J, method="upgrad", return_info=True)
    s = scalars(info, "mtl/", losses=losses)
    K = J.shape[0]
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in s.values())
    for k in range(K):
        assert float(s[f"mtl/weight/{k}"]) == float(info.weights[k])
        assert math.isclose(float(s[f"mtl/grad_norm/{k}"]), float(J[k].norm()), rel_tol=1e-12)
        assert float(s[f"mtl/loss/{k}"]) == float(losses[k])
    for a in range(K):
        for b in range(a + 1, K):
            cos = float(J[a] @ J[b] / (J[a].norm() * J[b].norm()))
            assert math.isclose(float(s[f"mtl/cosine/{a}_{b}"]), cos, rel_tol=1e-12, abs_tol=1e-15)
    assert float(s["mtl/cosine/0_1"]) < 0                # the conflict shows
    assert math.isclose(float(s["mtl/direction_norm"]), float(d.norm()), rel_tol=1e-10)
    expected = {f"mtl/{kind}/{k}" for kind in ("weight", "grad_norm", "loss") for k in range(K)}
    expected |= {f"mtl/cosine/{a}_{b}" for a in range(K) for b in range(a + 1, K)} | {"mtl/direction_norm"}
    assert set(s) == expected


def test_no_host_transfer_unless_asked(monkeypatch):
    J = _jacobian(K=4)
    _, info = fastmtl.combine(J, method="mgda", return_info=True)

    def forbidden(*args, **kwargs):
        raise AssertionError("scalars() moved a value to the host")

    for name in ("item", "tolist", "cpu", "numpy", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    s = scalars(info, losses=torch.ones(4))
    monkeypatch.undo()
    assert len(s) == 4 + 4 + 6 + 1 + 4
    synced = scalars(info, losses=torch.ones(4), sync=True)
    assert set(synced) == set(s)
    assert all(type(v) is float for v in synced.values())
    assert all(synced[k] == float(s[k].double()) for k in s)


def test_names_prefix_and_options():
    J = _jacobian()
    _, info = fastmtl.combine(J, method="mean", return_info=True)
    s = scalars(info, "train/", task_names=["depth", "seg", "normal"], cosines=False)
    assert "train/weight/seg" in s and "train/grad_norm/normal" in s and "train/direction_norm" in s
    assert not any("/cosine/" in k for k in s)
    assert float(s["train/weight/depth"]) == pytest.approx(1 / 3)


def test_methods_without_weights_log_norms_and_cosines():
    J = _jacobian()
    _, info = fastmtl.combine(J.float(), method="graddrop", generator=torch.Generator().manual_seed(0),
                              return_info=True)
    assert info.weights is None
    s = scalars(info)
    assert not any("/weight/" in k for k in s) and "mtl/direction_norm" not in s
    assert math.isclose(float(s["mtl/grad_norm/2"]), float(J[2].norm()), rel_tol=1e-5)


def test_bad_arguments():
    J = _jacobian()
    _, info = fastmtl.combine(J, method="mean", return_info=True)
    with pytest.raises(ValueError, match="task_names has 2 names"):
        scalars(info, task_names=["a", "b"])
    with pytest.raises(ValueError, match="distinct"):
        scalars(info, task_names=["a", "a", "b"])
    with pytest.raises(TypeError, match="task_names must be a sequence"):
        scalars(info, task_names="abc")
    with pytest.raises(ValueError, match="losses has 2 entries"):
        scalars(info, losses=[1.0, 2.0])
    with pytest.raises(TypeError, match="CombineInfo"):
        scalars({"weights": None})
    with pytest.raises(TypeError, match="prefix"):
        scalars(info, prefix=None)


def _load_example(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tensorboard_example_writes_the_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    example = _load_example("tensorboard_logging")
    last = example.train(str(tmp_path), steps=3, method="upgrad")
    events = list(tmp_path.glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert tags == set(last)
    names = example.TASKS
    assert {f"mtl/weight/{n}" for n in names} <= tags and f"mtl/cosine/{names[0]}_{names[1]}" in tags
    for tag, value in last.items():
        logged = acc.Scalars(tag)
        assert [e.step for e in logged] == [0, 1, 2]
        assert logged[-1].value == pytest.approx(float(value), rel=1e-6, abs=1e-7)


def test_integrations_package_imports_no_peer_library():
    code = ("import sys, fastmtl.integrations, fastmtl.integrations.logging, fastmtl.integrations.peer_names\n"
            "loaded = [m for m in ('torchjd', 'lightning', 'pytorch_lightning', 'tensorboard') if m in sys.modules]\n"
            "assert not loaded, loaded\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
