"""Method state in checkpoints: round trips, errors, and resumed runs equal to uninterrupted ones."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
import torch

import _method_resume as drv
import fastmtl
from fastmtl.methods import METHODS, make_method

HERE = os.path.dirname(os.path.abspath(__file__))


def _save_load(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_resume_in_a_fresh_process_is_bitwise_equal(tmp_path):
    """N steps in one go vs N/2, save, load into fresh instances in a fresh process, N/2 more —
    for every stateful method directly through combine and through fastmtl.backward."""
    whole, ckpt = {}, {}
    for label, name, hp in drv.configs():
        whole[label] = drv.run_steps(drv.fresh(name, hp), torch.Generator().manual_seed(3), 0, drv.N)
        m, gen = drv.fresh(name, hp), torch.Generator().manual_seed(3)
        drv.run_steps(m, gen, 0, drv.N // 2)
        ckpt[label] = {"method": m.state_dict(), "generator": gen.get_state()}
    torch.save(ckpt, tmp_path / "ckpt.combine")
    trained, tckpt = {}, {}
    for name in drv.train_names():
        net, opt, m, gen = drv.new_run(name)
        drv.train_steps(net, opt, m, gen, 0, drv.N)
        trained[name] = net.state_dict()
        net, opt, m, gen = drv.new_run(name)
        drv.train_steps(net, opt, m, gen, 0, drv.N // 2)
        tckpt[name] = drv.checkpoint(net, opt, m, gen)
    torch.save(tckpt, tmp_path / "ckpt.train")

    env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, os.path.join(HERE, "_method_resume.py"), str(tmp_path / "ckpt"),
                    str(tmp_path / "out")], check=True, env=env, timeout=300)
    resumed = torch.load(tmp_path / "out.combine", weights_only=True)
    for label, _, _ in drv.configs():
        assert torch.equal(resumed[label], whole[label][drv.N // 2:]), label
    rtrained = torch.load(tmp_path / "out.train", weights_only=True)
    for name in drv.train_names():
        for key, v in trained[name].items():
            assert torch.equal(rtrained[name][key], v), (name, key)


def test_registry_stateful_methods_are_covered_and_state_attrs_complete():
    """Every attribute a method changes while stepping is declared state (or the step counter of
    an always-reset cache); a stateless method changes nothing."""
    for label, name, hp in drv.configs() + [(n, n, {}) for n in sorted(METHODS) if not METHODS[n].stateful
                                            and n not in ("slgrad", "hydalearn")]:
        m = drv.fresh(name, hp)
        before = {k: v for k, v in vars(m).items()}
        drv.run_steps(m, torch.Generator().manual_seed(0), 0, 4)
        declared = set(type(m)._state_attrs) | {"_device", "_fastmtl_num_tasks"}  # DB-MTL's device is derived from its buffers
        changed = {k for k, v in vars(m).items() if k not in before or before[k] is not v}
        assert changed <= declared, (label, changed - declared)
        sd = _save_load(m.state_dict())
        assert sd["_method"] == name and sd["_version"] == 1
        if not m.stateful:
            assert set(sd) == {"_method", "_version"}


@pytest.mark.parametrize("label,name,hp", drv.configs(), ids=[c[0] for c in drv.configs()])
def test_lazy_state_round_trips(label, name, hp):
    """State not created yet (before the first step) round-trips, and continues like a fresh instance."""
    a = drv.fresh(name, hp)
    b = drv.fresh(name, hp)
    b.load_state_dict(_save_load(a.state_dict()))
    da = drv.run_steps(a, torch.Generator().manual_seed(1), 0, 2)
    db = drv.run_steps(b, torch.Generator().manual_seed(1), 0, 2)
    assert torch.equal(da, db)


def test_errors_name_method_and_key():
    m = make_method("famo", {})
    drv.run_steps(m, torch.Generator(), 0, 2)
    sd = m.state_dict()
    with pytest.raises(ValueError, match="'famo'.*'nash_mtl'|belongs to method 'famo', not 'nash_mtl'"):
        make_method("nash_mtl", {}).load_state_dict(sd)
    other = make_method("famo", {})
    drv_grads = [[torch.randn(3)] for _ in range(4)]
    fastmtl.combine(drv_grads, other, losses=torch.ones(4))  # K = 4
    with pytest.raises(ValueError, match=r"famo state key 'logits': shape \(3,\) in the checkpoint, \(4,\)"):
        other.load_state_dict(sd)
    bad = dict(sd, logits=sd["logits"].float())
    fresh = make_method("famo", {})
    drv.run_steps(fresh, torch.Generator(), 0, 1)
    with pytest.raises(ValueError, match="famo state key 'logits': dtype torch.float32"):
        fresh.load_state_dict(bad)
    with pytest.raises(ValueError, match="famo state key 'adam.t': expected a number, got a tensor"):
        make_method("famo", {}).load_state_dict(dict(sd, **{"adam.t": torch.tensor(1)}))
    with pytest.raises(KeyError, match=r"famo.*missing keys \['logits'\]"):
        make_method("famo", {}).load_state_dict({k: v for k, v in sd.items() if k != "logits"})
    with pytest.raises(KeyError, match=r"unexpected keys \['extra'\]"):
        make_method("famo", {}).load_state_dict(dict(sd, extra=1))
    with pytest.raises(ValueError, match="version 99"):
        make_method("famo", {}).load_state_dict(dict(sd, _version=99))
    # Non-strict: reported, not raised; a failed strict load changed nothing.
    res = make_method("famo", {}).load_state_dict(dict(sd, extra=1), strict=False)
    assert res.unexpected_keys == ["extra"] and res.missing_keys == []
    assert other.logits.shape == (4,)


def test_loaded_state_is_cloned_and_parameters_stay_in_place():
    a = make_method("db_mtl", {})
    drv.run_steps(a, torch.Generator(), 0, 2)
    b, c = make_method("db_mtl", {}), make_method("db_mtl", {})
    sd = a.state_dict()
    b.load_state_dict(sd)
    c.load_state_dict(sd)
    assert b._buffers[0].data_ptr() != c._buffers[0].data_ptr() != sd["buffers"][0].data_ptr()
    uw = make_method("uw", {"num_tasks": 3, "lr": 0.1})
    s = uw.s
    src = make_method("uw", {"num_tasks": 3, "lr": 0.1})
    drv.run_steps(src, torch.Generator(), 0, 2)
    uw.load_state_dict(_save_load(src.state_dict()))
    assert uw.s is s and torch.equal(uw.s, src.s)


def test_map_location_moves_state():
    m = make_method("nash_mtl", {})
    drv.run_steps(m, torch.Generator(), 0, 2)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True, map_location="meta")
    n = make_method("nash_mtl", {})
    n.load_state_dict(sd)
    assert n.alpha.device.type == "meta"
