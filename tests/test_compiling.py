"""`options.compile`: every member's compiled callables stay compiled, however many members."""

import pytest
import torch
import torch._dynamo.utils

from kdbench.train.compiling import Compiled


@pytest.mark.slow
def test_the_optimizer_steps_of_a_large_cohort_all_stay_compiled():
    # Each optimizer adds a graph under the one code object `SGD.step`: past dynamo's
    # default limit of 8, the rest would silently run eagerly.
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    members = 12
    params = [torch.nn.Parameter(torch.ones(3)) for _ in range(members)]
    steps = []
    for p in params:
        optimizer = torch.optim.SGD([p], lr=0.1, momentum=0.9)
        steps.append(Compiled(optimizer.step, True, "optimizer step"))
    for p, step in zip(params, steps):
        p.grad = torch.ones(3)
        step()
    assert all(torch.allclose(p, torch.full((3,), 0.9)) for p in params)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= members
