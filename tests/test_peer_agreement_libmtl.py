"""Agreement with LibMTL's weighting classes (PyPI ``LibMTL`` 1.1.5), where its code runs.

LibMTL 1.1.5 installs with ``pip install LibMTL --no-deps`` (its declared ``torchvision`` would
pull another torch); its package ``__init__`` then fails (``torchvision.models.utils``), but the
weighting modules need only torch, numpy and scipy. They are loaded here from the installed files
without running that ``__init__`` (a stand-in parent package for the duration of the import; the
``LibMTL`` entries of ``sys.modules`` are restored afterwards), and driven by a minimal stand-in
of LibMTL's trainer: one shared parameter ``θ`` and losses ``ℓ_k = J_k·θ + c_k``, linear in ``θ``,
so that the task gradients are exactly the rows of a chosen ``J``; after ``weighting.backward``
the combined gradient is ``θ.grad``. LibMTL gathers the gradients in float32 buffers, so its
directions carry float32 rounding; the agreement asked is ``cos ≥ 0.9999`` and norm ratio within
1e-4 of the factor (1 unless stated).

Compared: ``EW`` ↔ ``sum``; ``UW`` ↔ ``uw(init=-0.5)`` (direction and the gradient of the learned
scales); ``DWA`` ↔ ``dwa`` (epoch averages); ``MGDA`` ↔ ``mgda`` (``mgda_gn="none"``; with
``"l2"`` LibMTL applies the weights to the *normalised* gradients, fastmtl — like the official
code — to the raw ones: LibMTL's direction is ``Σ λ_k g_k/‖g_k‖`` with fastmtl's λ); ``CAGrad``
↔ ``cagrad(multiply_by_k=False)`` for ``rescale`` 0/1/2 (LibMTL 1.1.5 hard-codes K = 3 in its
objective); ``PCGrad`` ↔ ``pcgrad`` and ``GradVac`` ↔ ``gradvac`` with the same task orders
(LibMTL's ``random.shuffle`` replaced during its call; PCGrad visits the task itself first,
where projecting on itself is a no-op); GradVac on the first call only: LibMTL 1.1.5 updates its
targets only for the pairs it corrects, the paper and fastmtl for every pair, so later calls
differ by design; ``IMTL`` ↔ ``imtl`` (direction, at the initial and at other loss scales, and
the gradient of the scales); ``RLW`` (``dist="Normal"``) ↔ ``rlw``: both softmax standard normal
draws, from different generators and precisions, so their distributions are compared
(two-sample Kolmogorov–Smirnov on each weight, 2000 draws each).

Not compared: ``GLS`` (geometric mean of the losses; fastmtl has no such method), ``GradDrop``
(LibMTL 1.1.5 runs it on representation gradients only, ``rep_grad=True``; fastmtl's acts on the
parameter gradients, as TorchJD's, with which ``test_peer_agreement.py`` compares it),
``GradNorm`` (its loss scales are trained by LibMTL's trainer optimizer across epochs; fastmtl's
``variant="libmtl"`` is checked against its literal transcription of that code in
``test_methods_more.py``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import random
import sys
import types

import numpy as np
import pytest
import torch

import fastmtl
from fastmtl.methods import DWA, IMTL, UW
from fastmtl.methods.ordering import random_task_orders

from _families import make_jacobian

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

if importlib.util.find_spec("LibMTL") is None:
    pytest.skip("LibMTL is not installed (pip install LibMTL --no-deps)", allow_module_level=True)

NAMES = ("EW", "UW", "DWA", "MGDA", "CAGrad", "PCGrad", "GradVac", "IMTL", "RLW")
D = 30


def _load_weightings():
    root = os.path.dirname(importlib.util.find_spec("LibMTL").origin)
    saved = {k: v for k, v in sys.modules.items() if k == "LibMTL" or k.startswith("LibMTL.")}
    for name, subdir in (("LibMTL", root), ("LibMTL.weighting", os.path.join(root, "weighting"))):
        stub = types.ModuleType(name)
        stub.__path__ = [subdir]
        sys.modules[name] = stub
    try:
        return {n: getattr(importlib.import_module(f"LibMTL.weighting.{n}"), n) for n in NAMES}
    finally:
        for k in [k for k in sys.modules if k == "LibMTL" or k.startswith("LibMTL.")]:
            del sys.modules[k]
        sys.modules.update(saved)


W = _load_weightings()


def libmtl_backward(name, J, losses, *, attrs=None, loss_scale=None, **kwargs):
    """``(θ.grad, weighting, what backward returned)`` after LibMTL's ``backward`` on losses whose
    gradients are the rows of J."""
    K = J.shape[0]
    theta = torch.nn.Parameter(torch.zeros(J.shape[1], dtype=torch.float64))
    w = W[name]()
    w.task_num, w.device, w.rep_grad = K, torch.device("cpu"), False
    w.get_share_params = lambda: [theta]

    def zero_grad_share_params():
        theta.grad = torch.zeros_like(theta)

    w.zero_grad_share_params = zero_grad_share_params
    w.init_param()
    for k, v in (attrs or {}).items():
        setattr(w, k, v)
    if loss_scale is not None:
        w.loss_scale.data = torch.as_tensor(loss_scale, dtype=torch.float64).clone()
    out = w.backward(J @ theta + torch.as_tensor(losses, dtype=torch.float64), **kwargs)
    return theta.grad.detach().double(), w, out


def agree(d, r, factor=1.0, what=""):
    cos = float(d @ r / (d.norm() * r.norm()))
    ratio = float(d.norm() / r.norm())
    assert cos >= 0.9999, f"{what}: cosine {cos}"
    assert abs(ratio - factor) <= 1e-4 * factor, f"{what}: norm ratio {ratio}, factor {factor}"


def losses_for(K, seed=0):
    return 0.3 + torch.rand(K, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


CASES = [(family, K) for family in ("gauss", "conflict") for K in (2, 3, 5)]


@pytest.mark.parametrize("family,K", CASES)
def test_ew_uw_imtl(family, K):
    J, l = make_jacobian(family, K, D, seed=K), losses_for(K)
    agree(fastmtl.combine(J, "sum"), libmtl_backward("EW", J, l)[0], what="EW")
    uw = UW(num_tasks=K, init=-0.5)
    d = fastmtl.combine(J, uw)
    r, lib, _ = libmtl_backward("UW", J, l)
    agree(d, r, what="UW")
    uw.loss_term(l).backward()
    torch.testing.assert_close(uw.s.grad, lib.loss_scale.grad.double(), rtol=1e-6, atol=1e-7)
    for s in (None, torch.linspace(-1.0, 1.0, K, dtype=torch.float64)):
        m = IMTL(num_tasks=K)
        if s is not None:
            with torch.no_grad():
                m.s.copy_(s)
        d = fastmtl.combine(J, m)
        r, lib, _ = libmtl_backward("IMTL", J, l, loss_scale=s)
        agree(d, r, what=f"IMTL s={s}")
        m.loss_term(l).backward()
        torch.testing.assert_close(m.s.grad, lib.loss_scale.grad.double(), rtol=1e-6, atol=1e-7)


def test_mgda():
    """LibMTL's Frank–Wolfe loop stops on a weight change below 1e-5 (or after 250 steps), which on
    some inputs is far from the min-norm point: fastmtl's objective is never worse, and the
    directions agree wherever LibMTL's objective is within 1e-6 of the optimum (most cases)."""
    agreed = {"none": 0, "l2": 0}
    for family, K in CASES:
        J, l = make_jacobian(family, K, D, seed=K), losses_for(K)
        for gn in agreed:
            _, info = fastmtl.combine(J, "mgda", normalization=gn, return_info=True)
            lam = info.weights
            gamma = J.norm(dim=1) if gn == "l2" else torch.ones(K, dtype=torch.float64)
            Gn = (J @ J.T) / (gamma[:, None] * gamma[None, :])
            r, _, sol = libmtl_backward("MGDA", J, l, mgda_gn=gn)
            sol = torch.as_tensor(sol, dtype=torch.float64)
            ours, theirs = float(lam @ Gn @ lam), float(sol @ Gn @ sol)
            assert ours <= theirs * (1 + 1e-6), (family, K, gn, ours, theirs)
            if theirs <= ours * (1 + 1e-6):
                # LibMTL applies the weights to the normalised gradients, fastmtl to the raw ones.
                agree(J.T @ (lam / gamma), r, what=f"MGDA {gn}")
                agreed[gn] += 1
    assert agreed["none"] >= 5 and agreed["l2"] >= 4, agreed


@pytest.mark.parametrize("K", [2, 3, 5])
def test_dwa_epoch_weights(K):
    J = make_jacobian("conflict", K, D, seed=1)
    epochs = [losses_for(K, seed=e) for e in range(2)]
    m = DWA()
    for e, l in enumerate(epochs):
        agree(fastmtl.combine(J, m, losses=l), libmtl_backward("DWA", J, l, attrs={"epoch": e}, T=2.0)[0],
              what=f"DWA epoch {e}")
        m.end_epoch()
    buffer = torch.stack(epochs, 1).numpy()
    r = libmtl_backward("DWA", J, epochs[1], attrs={"epoch": 2, "train_loss_buffer": buffer}, T=2.0)[0]
    agree(fastmtl.combine(J, m, losses=epochs[1]), r, what="DWA epoch 2")


@pytest.mark.parametrize("rescale", [0, 1, 2])
@pytest.mark.parametrize("family", ["gauss", "conflict"])
def test_cagrad_three_tasks(family, rescale):
    J, l = make_jacobian(family, 3, D, seed=2), losses_for(3)
    d = fastmtl.combine(J, "cagrad", c=0.5, rescale=rescale, multiply_by_k=False)
    agree(d, libmtl_backward("CAGrad", J, l, calpha=0.5, rescale=rescale)[0], what="CAGrad")


class _Shuffle:
    """``random.shuffle`` replaced: task ``i``'s list takes fastmtl's order (self first for PCGrad)."""

    def __init__(self, orders, with_self):
        self.rows = [list(map(int, row)) for row in orders]
        self.with_self, self.i = with_self, 0

    def __call__(self, x):
        row = self.rows[self.i]
        x[:] = ([self.i] + row) if self.with_self else row
        self.i += 1


@pytest.mark.parametrize("family,K", CASES)
def test_pcgrad_and_first_gradvac_call_with_the_same_orders(family, K, monkeypatch):
    J, l = make_jacobian(family, K, D, seed=3), losses_for(K)
    for name, method, with_self, kw in (("PCGrad", "pcgrad", True, {}), ("GradVac", "gradvac", False, {"beta": 0.5})):
        d = fastmtl.combine(J, method, generator=torch.Generator().manual_seed(K))
        orders = random_task_orders(K, generator=torch.Generator().manual_seed(K))
        with monkeypatch.context() as mp:
            mp.setattr(random, "shuffle", _Shuffle(orders, with_self))
            r = libmtl_backward(name, J, l, **kw)[0]
        agree(d, r, what=name)


def test_rlw_same_distribution():
    from scipy.stats import ks_2samp

    K, N = 3, 2000
    J = torch.eye(K, dtype=torch.float64)  # the direction is the weight vector itself
    gen = torch.Generator().manual_seed(0)
    ours = torch.stack([fastmtl.combine(J, "rlw", generator=gen) for _ in range(N)])
    torch.manual_seed(0)
    theirs = torch.stack([libmtl_backward("RLW", J, torch.ones(K), dist="Normal")[0] for _ in range(N)])
    for k in range(K):
        assert ks_2samp(ours[:, k].numpy(), theirs[:, k].numpy()).pvalue > 1e-3
    assert np.allclose(theirs.sum(1).numpy(), 1.0, atol=1e-6) and np.allclose(ours.sum(1).numpy(), 1.0)
