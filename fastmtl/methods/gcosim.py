"""GCosSim — gradient-cosine-similarity gating of auxiliary tasks (Du, Czarnecki, Jayakumar, Farajtabar,
Pascanu, Lakshminarayanan, "Adapting Auxiliary Losses Using Gradient Similarity", arXiv 1812.02224,
2018, unweighted version), as offered by the SLGrad repository (``Gcosim`` in
``Dynamic_weighting.py``) as a baseline."""

from __future__ import annotations


from .base import GramMethod
from .common import check_main_task, symmetric64
from .registry import register_method


@register_method
class GCosSim(GramMethod):
    """Keep an auxiliary gradient only when it points the main task's way.

    With ``g_m`` the main-task gradient and ``cos_k = ⟨g_m, g_k⟩ / (‖g_m‖ ‖g_k‖)``:

        ``λ_main = 1``,  ``λ_k = 1[cos_k ≥ 0]`` (k ≠ main),  ``d = Σ_k λ_k g_k``.

    This is Du et al.'s unweighted rule applied to every auxiliary task, and the rule the SLGrad
    code's ``Gcosim`` intends ("main + aux if the cosine similarity is positive, otherwise only
    main"). Deviations of that code, not reproduced here: its "cosine" is the *sum over parameter
    tensors* of per-tensor cosines, only the last auxiliary's decision survives (``totGrad`` is
    overwritten per task), its task gradients accumulate in ``.grad`` across the per-task
    backward passes (so later "auxiliary gradients" include the earlier tasks'), and the result is
    normalised to unit norm per parameter tensor. ``≥ 0`` (not ``> 0``) follows that code; an
    auxiliary or main gradient of zero norm counts as cosine 0 and is kept, adding nothing.
    Heads follow the uniform convention (each head gets its own task's gradient).

    Scale: ``Σλ`` between 1 and K (unnormalised, as in both sources).
    """

    uses_generator = False

    name = "gcosim"
    head_weighting = "sum"  # each head gets its own task's gradient, as in the SLGrad code's baseline

    def __init__(self, main_task: int = 0):
        if not isinstance(main_task, int) or isinstance(main_task, bool) or main_task < 0:
            raise ValueError(f"main_task must be a non-negative int, got {main_task!r}")
        self.main_task = main_task

    def weights(self, G, ctx):
        G = symmetric64(G)
        K = G.shape[0]
        m = check_main_task(self.main_task, K)
        # The sign of the cosine is the sign of the dot product; the norms only decide the
        # zero-norm case (cosine 0 → kept), so no division is needed: a branch-free gate.
        keep = (G[m] >= 0).to(G.dtype)
        keep[m] = 1.0
        return keep
