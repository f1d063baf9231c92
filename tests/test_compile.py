"""`combine` traces under torch.compile(fullgraph=True): no graph break, no host sync."""

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import fastmtl
from fastmtl.methods import METHODS as REGISTRY, GramMethod

# Every Gram-space method, stateful ones included (one call from a fresh instance).
METHODS = sorted(n for n, c in REGISTRY.items() if issubclass(c, GramMethod))
# UW's and IMTL's learnable ``s`` is an nn.Parameter (an optimizer holds it): build the instance
# outside the compiled region, as a training loop does.
PREBUILT = {"uw": lambda: fastmtl.methods.UW(num_tasks=3), "imtl": lambda: fastmtl.methods.IMTL(num_tasks=3)}


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_combine_fullgraph(method):
    torch._dynamo.reset()

    target = PREBUILT[method]() if method in PREBUILT else method

    def step(J, losses):
        return fastmtl.combine(J, method=target, losses=losses, backend="reference")

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(step, fullgraph=True, backend=counter)
    J = torch.randn(3, 64, dtype=torch.float64)
    losses = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    torch.manual_seed(0)
    eager = step(J, losses)
    torch.manual_seed(0)
    out = compiled(J, losses)
    if method not in ("pcgrad", "wpcgrad"):  # random orders: same seed, but RNG paths may differ
        torch.testing.assert_close(out, eager, rtol=1e-6, atol=1e-8)
    assert out.shape == (64,) and torch.isfinite(out).all()
    assert counter.frame_count == 1 and counter.op_count > 0  # one graph, really traced
