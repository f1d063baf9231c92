"""The peer-name table: every row names a registered method, the README shows exactly the table, and
the TorchJD rows' options and scale factors reproduce TorchJD's own classes."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import torch

import fastmtl
from fastmtl.integrations.peer_names import ROWS, PeerName, markdown_table
from fastmtl.methods import METHODS, make_method

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- peer-names:begin -->", "<!-- peer-names:end -->"


def test_rows_name_registered_methods_with_valid_options():
    for r in ROWS:
        assert r.ours in METHODS, f"{r.library} {r.theirs}: {r.ours!r} is not registered"
        make_method(r.ours, dict(r.options))             # the options are valid hyper-parameters
    keys = [(r.library, r.theirs) for r in ROWS]
    assert len(keys) == len(set(keys)), "a peer class appears twice"


def test_readme_shows_the_table():
    text = (ROOT / "README.md").read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    block = text[text.index(BEGIN) + len(BEGIN):text.index(END)].strip()
    assert block == markdown_table(), "README table out of date: python -m fastmtl.integrations.peer_names"


def test_bad_rows_are_refused():
    with pytest.raises(ValueError, match="factor"):
        PeerName("TorchJD", "aggregation.X", "mean", factor="2")
    with pytest.raises(ValueError, match="library"):
        PeerName("torchjd", "aggregation.X", "mean")


TORCHJD_ROWS = [r for r in ROWS if r.library == "TorchJD" and r.check not in ("none", "stateful")]
STATEFUL_TORCHJD_ROWS = [r for r in ROWS if r.library == "TorchJD" and r.check == "stateful"]
RANDOM_TORCHJD_ROWS = [r for r in ROWS if r.library == "TorchJD" and r.check == "none"]


def _their(r: PeerName, K: int):
    module, name = r.theirs.split(".")
    cls = getattr(importlib.import_module(f"torchjd.{module}"), name)
    special = {"K": K, "ones_K": torch.ones(K, dtype=torch.float64)}
    return cls(**{k: special.get(v, v) if isinstance(v, str) else v for k, v in r.their_args})


def _jacobian(K, seed, conflicting=True):
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(K, 43, generator=g, dtype=torch.float64)
    if not conflicting:
        return J
    J[1] -= 1.3 * J[0]
    return J * torch.logspace(-0.5, 0.5, K, dtype=torch.float64)[:, None]


@pytest.mark.parametrize("row", TORCHJD_ROWS, ids=[r.theirs for r in TORCHJD_ROWS])
def test_torchjd_row_reproduces_torchjd(row):
    pytest.importorskip("torchjd")
    ks = {"two_tasks": (2,), "three_tasks": (3, 4)}.get(row.check, (2, 3, 4))
    for K in ks:
        factor = K if row.factor == "K" else 1
        if row.check == "first_call":
            losses = torch.linspace(0.5, 2.0, K, dtype=torch.float64)
            x = losses.clone().float().requires_grad_()
            _their(row, K)(x).backward()                 # d(scalarized loss)/dℓ_k = their weight of task k
            _, info = fastmtl.combine(_jacobian(K, K), method=row.ours, losses=losses, return_info=True,
                                      **dict(row.options))
            torch.testing.assert_close(info.weights, factor * x.grad.double(), rtol=1e-6, atol=1e-7)
            continue
        # TorchJD's Nash-MTL solver does not converge on the conflicting, scaled family (see the row's note).
        J = _jacobian(K, seed=10 + K, conflicting=row.ours != "nash_mtl")
        ours = fastmtl.combine(J, method=row.ours, **dict(row.options))
        theirs = _their(row, K)(J)
        # TorchJD's CAGrad and Nash-MTL run conic solvers (to ~1e-4, and to a 1e-3 residual).
        tol = 1e-3 if row.ours in ("cagrad", "nash_mtl") else 1e-8
        assert float((ours - factor * theirs).norm() / theirs.norm()) < tol, (row.theirs, K)


@pytest.mark.parametrize("row", RANDOM_TORCHJD_ROWS, ids=[r.theirs for r in RANDOM_TORCHJD_ROWS])
def test_random_torchjd_rows_same_scale(row):
    # Random draws differ draw for draw; the scale is compared where the draws do not matter.
    pytest.importorskip("torchjd")
    J = _jacobian(3, seed=1).abs()
    gen = torch.Generator().manual_seed(0)
    if row.ours == "graddrop":                           # all-positive gradients: nothing is dropped
        ours, theirs = fastmtl.combine(J, method="graddrop", generator=gen), _their(row, 3)(J)
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours, J.sum(0), rtol=1e-12, atol=1e-12)
    elif row.ours == "rlw":                              # both: positive weights summing to 1
        _, info = fastmtl.combine(J, method="rlw", generator=gen, return_info=True)
        their_w = importlib.import_module("torchjd.aggregation").RandomWeighting()(J)
        for w in (info.weights, their_w):
            assert abs(float(w.sum()) - 1) < 1e-12 and float(w.min()) > 0
    else:
        pytest.fail(f"no scale check for the random row {row.theirs}")


@pytest.mark.parametrize("row", STATEFUL_TORCHJD_ROWS, ids=[r.theirs for r in STATEFUL_TORCHJD_ROWS])
def test_stateful_torchjd_rows_are_compared_over_steps(row):
    # Their comparison runs several steps (tests/test_stateful_peers.py); here: the class exists and is used there.
    pytest.importorskip("torchjd")
    module, name = row.theirs.split(".")
    assert hasattr(importlib.import_module(f"torchjd.{module}"), name), row.theirs
    text = (Path(__file__).parent / "test_stateful_peers.py").read_text(encoding="utf-8")
    assert re.search(rf"\b{name}(Weighting)?\(", text), f"{row.theirs} is not compared in tests/test_stateful_peers.py"


def test_libmtl_rows_name_libmtl_weightings():
    # LibMTL's weighting classes (LibMTL/weighting/*.py in its repository).
    libmtl = {"EW", "UW", "GradNorm", "MGDA", "DWA", "GLS", "PCGrad", "GradVac", "GradDrop", "IMTL", "CAGrad",
              "Nash_MTL", "RLW", "MoCo", "Aligned_MTL", "DB_MTL", "STCH", "ExcessMTL", "FairGrad", "FAMO", "MoDo",
              "SDMGrad", "UPGrad"}
    for r in ROWS:
        if r.library == "LibMTL":
            assert r.theirs in libmtl, r.theirs
            assert re.fullmatch(r"[A-Za-z_]+", r.theirs)
