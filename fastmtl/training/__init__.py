"""Training-loop helpers: task gradients → combination → ``.grad``.

* :func:`backward` — the multi-task counterpart of ``loss.backward()``: K task gradients of the
  shared parameters, one :func:`fastmtl.combine` call, the result accumulated into ``.grad``, and
  the task-specific heads back-propagated with the method's head convention.
* :func:`task_gradients` — just the K task gradients (looped or one batched autograd call).
* :func:`slgrad_step` — SLGrad's sample-level step with one forward-mode JVP instead of K·B
  backward passes.
* :func:`hydalearn_lookahead_weights` — HydaLearn's exact ("fake update") gains, with the
  parameters and the optimizer state restored bitwise afterwards.
* :func:`hooks_backward` / :func:`representation_backward` — ``backward``'s other Gram modes
  (``gram_mode="hooks"|"auto"``, ``representation=z``); :func:`slgrad_backward` — SLGrad's step with
  the per-sample dot products from module hooks. See docs/gram_modes.md.
* :func:`auto_lambda_step` — Auto-λ's bilevel meta step on the same kind of fake step
  (:class:`FakeStep`).
* :func:`double_sampling_backward` — MoDo's / SDMGrad's step from two or three independent
  minibatches.

One module each: :mod:`.task_autograd`, :mod:`.backward` (the entry point and its dispatch),
:mod:`.materialized`, :mod:`.hooks_backward`, :mod:`.representation`, :mod:`.steps` (what they
share), :mod:`.slgrad_step`, :mod:`.slgrad_hooks`, :mod:`.lookahead`, :mod:`.fake_step`,
:mod:`.auto_lambda_step`, :mod:`.double_sampling`.
"""

from .auto_lambda_step import AutoLambdaStepInfo, auto_lambda_step
from .backward import UNWEIGHTED_HEAD_METHODS, backward, head_weighting
from .hooks_backward import GRAM_MODES, hooks_backward
from .representation import representation_backward, representation_gradients
from .slgrad_hooks import slgrad_backward
from .double_sampling import DoubleSamplingInfo, double_sampling_backward
from .fake_step import FakeStep
from .lookahead import LookaheadResult, hydalearn_lookahead_weights
from .slgrad_step import SLGradStepInfo, slgrad_step
from .task_autograd import BATCHED_AUTO_MAX_ELEMENTS, task_gradients

__all__ = ["backward", "task_gradients", "head_weighting", "UNWEIGHTED_HEAD_METHODS", "slgrad_step",
           "SLGradStepInfo", "hydalearn_lookahead_weights", "LookaheadResult", "BATCHED_AUTO_MAX_ELEMENTS",
           "hooks_backward", "GRAM_MODES", "representation_backward", "representation_gradients", "slgrad_backward",
           "auto_lambda_step", "AutoLambdaStepInfo", "double_sampling_backward", "DoubleSamplingInfo", "FakeStep"]
