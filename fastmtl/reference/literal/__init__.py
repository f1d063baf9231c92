"""Paper-form ("literal") algorithms: slow, float64 test oracles for the methods, one file per family.

Every function here transcribes one paper's algorithm as it is written, on the task gradient
*vectors* (the rows ``g_i`` of ``J``, shape ``[K, D]``), with explicit Python loops over tasks
wherever the paper has them. Nothing here is meant to be fast, to run on a GPU or to be traced:
these functions exist so that the fast Gram-space methods of :mod:`fastmtl.methods`
(``G = J Jᵀ → λ → d = Jᵀλ``) can be checked against an independent transcription.

Conventions shared by all functions:

* ``J`` is converted to a float64 CPU tensor; the returned direction ``d`` is a float64 ``[D]``
  tensor (the combined update direction, descent convention: ``θ ← θ − η d``).
* Small convex sub-problems (CAGrad's dual, MGDA's min-norm point, the dual-cone projections of
  UPGrad / DualProj) are solved *exactly* (support enumeration, or quadprog on the primal problem
  in ``R^D``), never with an iteration-count-limited solver, so that the oracle is accurate to
  ~1e-8 relative or better.
* numpy / scipy / quadprog are imported inside the functions that need them.

Files: ``common`` (helpers), ``projection`` (PCGrad, weighted PCGrad, GradVac), ``simplex``
(CAGrad, MGDA), ``dual_cone`` (UPGrad, DualProj), ``balancing`` (IMTL-G, Aligned-MTL, ConFIG,
Nash-MTL), ``auxiliary`` (HydaLearn, GCosSim, OL-AUX), ``loss_weighting`` (DB-MTL, GradNorm,
GeMTL, FAMO), ``stateful`` (MoDo, SDMGrad, MoCo, ExcessMTL, CR-MOGM, STCH over several steps),
``training`` (Auto-λ's look-ahead step on a model), ``fair`` (FairGrad), ``robust`` (Krum, trimmed
mean), ``priority`` (PCD), ``impartial`` (IMTL with its loss scales). A new method's oracle goes
into its family's file (or a new one) and is listed here.
"""

from .auxiliary import *  # noqa: F401,F403
from .balancing import *  # noqa: F401,F403
from .common import *  # noqa: F401,F403
from .dual_cone import *  # noqa: F401,F403
from .fair import *  # noqa: F401,F403
from .impartial import *  # noqa: F401,F403
from .loss_weighting import *  # noqa: F401,F403
from .priority import *  # noqa: F401,F403
from .projection import *  # noqa: F401,F403
from .robust import *  # noqa: F401,F403
from .simplex import *  # noqa: F401,F403
from .stateful import *  # noqa: F401,F403
from .training import *  # noqa: F401,F403
from . import auxiliary, balancing, common, dual_cone, loss_weighting, projection, simplex, stateful, training
from . import fair, impartial, priority, robust

__all__ = [name for module in (common, projection, simplex, dual_cone, balancing, auxiliary, loss_weighting,
                                 stateful, training, fair, robust, priority, impartial)
           for name in module.__all__]
