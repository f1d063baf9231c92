"""fastmtl.integrations.lightning: the callback for manual optimisation, and the Lightning example."""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import pytest
import torch

L = pytest.importorskip("lightning")

import fastmtl  # noqa: E402
from fastmtl.integrations.lightning import FastMTLCallback  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _example():
    spec = importlib.util.spec_from_file_location("lightning_mtl_example", ROOT / "examples" / "lightning_mtl.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EX = _example()
QUIET = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
             enable_model_summary=False, num_sanity_val_steps=0)


def test_example_trains_end_to_end():
    model, trainer, before, after = EX.train("upgrad", epochs=3, **QUIET)
    assert trainer.global_step == 3 * 16
    assert all(a < b for a, b in zip(after, before)), (before, after)
    logged = trainer.callback_metrics
    for name in EX.TASKS:
        assert f"mtl/weight/{name}" in logged and f"mtl/grad_norm/{name}" in logged
    assert "mtl/cosine/sine_anti_sine" in logged and "mtl/direction_norm" in logged


def _loader(seed=0):
    return torch.utils.data.DataLoader(EX.make_data(256, seed), batch_size=64, shuffle=False)


def _plain_loop(method, epochs, seed, generator=None):
    """The same training without Lightning: fastmtl.backward in a plain PyTorch loop."""
    torch.manual_seed(seed)
    model = EX.MultiTaskRegression(method)
    m = model.mtl.method
    opt = model.configure_optimizers()
    for _ in range(epochs):
        for batch in _loader():
            opt.zero_grad()
            losses = model.task_losses(batch)
            fastmtl.backward(losses, model.trunk.parameters(), m, head_params=model.heads, generator=generator)
            opt.step()
        if callable(getattr(m, "end_epoch", None)):
            m.end_epoch()
    return model


def _lightning(method, epochs, seed, generator=None, ckpt_path=None, **kwargs):
    torch.manual_seed(seed)
    model = EX.MultiTaskRegression(method, generator=generator)
    trainer = L.Trainer(max_epochs=epochs, **{**QUIET, **kwargs})
    trainer.fit(model, _loader(), ckpt_path=ckpt_path)
    return model, trainer


@pytest.mark.parametrize("method", ["upgrad", "dwa", "pcgrad"])
def test_lightning_step_is_fastmtl_backward(method):
    # DWA changes its weights from the third epoch on: the callback must close epochs as the loop does.
    epochs = 3
    gen = (lambda: torch.Generator().manual_seed(1)) if method == "pcgrad" else (lambda: None)
    ours, _ = _lightning(method, epochs, seed=0, generator=gen())
    ref = _plain_loop(method, epochs, seed=0, generator=gen())
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    if method == "dwa":                                  # the third epoch was really weighted
        prev2, prev1 = ours.mtl.method.state_dict()["history"]
        lam = 3 * torch.softmax(prev1 / prev2 / 2, 0)
        assert float((lam - 1).abs().max()) > 1e-4


def test_method_state_and_generator_resume_from_a_lightning_checkpoint(tmp_path):
    seed = 2
    full, _ = _lightning("gradvac", 2, seed, generator=torch.Generator().manual_seed(7))
    first, trainer = _lightning("gradvac", 1, seed, generator=torch.Generator().manual_seed(7))
    ckpt = tmp_path / "one_epoch.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=False)["callbacks"]
    assert any(k.startswith("FastMTLCallback") and v["method"]["_method"] == "gradvac" for k, v in saved.items())
    # A different generator seed: the checkpoint's generator state must win.
    resumed, _ = _lightning("gradvac", 2, seed, generator=torch.Generator().manual_seed(99), ckpt_path=ckpt)
    for a, b in zip(resumed.parameters(), full.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.equal(resumed.mtl.method.state_dict()["phi"], full.mtl.method.state_dict()["phi"])


def test_bf16_mixed_precision_runs():
    model, trainer = _lightning("mgda", 1, seed=3, precision="bf16-mixed", limit_train_batches=2)
    assert trainer.global_step == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())


class _AutoModel(EX.MultiTaskRegression):
    def __init__(self):
        super().__init__("mean")
        self.automatic_optimization = True

    def training_step(self, batch, batch_idx):
        return sum(self.task_losses(batch))


def test_refuses_automatic_optimisation():
    trainer = L.Trainer(max_epochs=1, **QUIET)
    with pytest.raises(RuntimeError, match="manual optimisation"):
        trainer.fit(_AutoModel(), _loader())


def test_refuses_settings_it_cannot_run_correctly():
    cb = FastMTLCallback("mean")
    losses = [torch.ones((), requires_grad=True)]
    module = types.SimpleNamespace(automatic_optimization=False,
                                   _trainer=types.SimpleNamespace(world_size=2, precision_plugin=None))
    with pytest.raises(NotImplementedError, match="ddp_combine"):
        cb.backward(module, losses, [torch.ones(1, requires_grad=True)])
    module.automatic_optimization = True
    with pytest.raises(RuntimeError, match="manual optimisation"):
        cb.backward(module, losses, [torch.ones(1, requires_grad=True)])
    with pytest.raises(TypeError, match="grad_scaler= is set by the callback"):
        FastMTLCallback("mean").backward(types.SimpleNamespace(automatic_optimization=False), losses,
                                         [torch.ones(1, requires_grad=True)], grad_scaler=None)
    with pytest.raises(TypeError, match="generator= is set by the callback"):
        FastMTLCallback("pcgrad").backward(types.SimpleNamespace(automatic_optimization=False), losses,
                                           [torch.ones(1, requires_grad=True)], generator=torch.Generator())
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        FastMTLCallback("pcgrad", generator=1)
    with pytest.raises(ValueError, match="unknown method"):
        FastMTLCallback("upgard")
    state = FastMTLCallback("pcgrad", generator=torch.Generator()).state_dict()
    with pytest.raises(ValueError, match="no generator"):
        FastMTLCallback("pcgrad").load_state_dict(state)


def test_the_trainers_grad_scaler_reaches_fastmtl_backward():
    # 16-mixed: Lightning's optimizer step unscales .grad with its GradScaler, so the callback must
    # leave the scaled direction there, as fastmtl.backward(grad_scaler=...) does.
    torch.manual_seed(4)
    model = EX.MultiTaskRegression("upgrad")
    batch = next(iter(_loader()))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    module = types.SimpleNamespace(automatic_optimization=False, log_dict=lambda *a, **k: None,
                                   _trainer=types.SimpleNamespace(world_size=1,
                                                                  precision_plugin=types.SimpleNamespace(scaler=scaler)))
    model.mtl.backward(module, model.task_losses(batch), model.trunk.parameters(), head_params=model.heads)
    scaled = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    fastmtl.backward(model.task_losses(batch), model.trunk.parameters(), "upgrad", head_params=model.heads)
    for s_grad, p in zip(scaled, model.parameters()):
        torch.testing.assert_close(s_grad, 1024.0 * p.grad, rtol=1e-5, atol=1e-6)


def test_16_mixed_with_a_grad_scaler_trains_like_the_plain_loop():
    from lightning.pytorch.plugins import MixedPrecision

    def scaler():
        return torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, growth_interval=2)

    torch.manual_seed(5)
    ours = EX.MultiTaskRegression("mgda")
    trainer = L.Trainer(max_epochs=1, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler())], **QUIET)
    trainer.fit(ours, _loader())

    torch.manual_seed(5)
    ref = EX.MultiTaskRegression("mgda")
    opt, s = ref.configure_optimizers(), scaler()
    for batch in _loader():
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            losses = ref.task_losses(batch)
            fastmtl.backward(losses, ref.trunk.parameters(), ref.mtl.method, head_params=ref.heads, grad_scaler=s)
        s.step(opt)
        s.update()
    assert float(s.get_scale()) != 2.0 ** 8                # the scaler did act (growth every 2 steps)
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
