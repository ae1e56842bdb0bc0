"""Methods are exact under DDP: the gradient of 2 gloo processes equals one process's on the global
batch (batch statistics gathered, mean-separable losses weighted by their share), CTKD's θ stays
equal on every process, and a stopped DDP run resumes into the uninterrupted one bit for bit."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from kdbench import methods
from kdbench.train import distributed
from kdbench.train.trainee import shard_loss

from _ddp_worker import EPOCH, GRAD_CASES, grad_inputs, unwrap

WORKER = Path(__file__).resolve().parent / "_ddp_worker.py"
TIMING = {"epoch_seconds", "images_per_s"}


def torchrun(mode: str, out: Path) -> None:
    command = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", str(WORKER), mode, str(out)]
    # Two torch processes with two threads each on a two-core machine slow each other down a lot.
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]


@pytest.fixture(scope="module")
def first_launch(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    torchrun("first", out)
    return out


def load(out: Path, name: str) -> dict:
    return torch.load(out / f"{name}.pt", weights_only=False)


@pytest.mark.slow
def test_ddp_gradients_equal_the_single_process_gradient_of_the_global_batch(first_launch):
    ranks = [load(first_launch, f"grads_rank{r}") for r in range(2)]
    for name, rows in GRAD_CASES:
        student, teacher, targets = grad_inputs(name, rows)
        leaves = {v: x.clone().requires_grad_(True) for v, x in student.items()}
        method = methods.build(name).double()
        sum(method(unwrap(leaves), unwrap(teacher), targets, epoch=EPOCH).values()).backward()
        for rank in ranks:
            ddp = rank[(name, rows)]
            for view, leaf in leaves.items():
                # float64; the only difference is the order of a few additions (weighted shares)
                torch.testing.assert_close(ddp["student"][view], leaf.grad, rtol=1e-12, atol=1e-15,
                                           msg=lambda m: f"{name}, batch {rows}, view {view}: {m}")
            for pname, param in method.named_parameters():
                torch.testing.assert_close(ddp["params"][pname], param.grad, rtol=1e-12, atol=1e-15)
        for pname in ranks[0][(name, rows)]["params"]:
            assert torch.equal(ranks[0][(name, rows)]["params"][pname], ranks[1][(name, rows)]["params"][pname])


def same_state(a: dict, b: dict, keys=None) -> bool:
    return all(torch.equal(a[k], b[k]) for k in (keys if keys is not None else a))


@pytest.mark.slow
def test_ctkd_theta_is_the_same_on_every_process(first_launch):
    ranks = [load(first_launch, f"straight_final_rank{r}") for r in range(2)]
    for run in ("ctkd", "dist"):
        a, b = ranks[0][run], ranks[1][run]
        assert same_state(a["method"], b["method"]), run
        # DDP keeps the parameters equal; BatchNorm's running statistics are each process's own
        # (DDP broadcasts rank 0's before every forward, and rank 0's are the ones recorded).
        params = [k for k in a["model"] if "running_" not in k and "num_batches" not in k]
        assert same_state(a["model"], b["model"], params), run
        assert all(torch.equal(a["optimizer"][i]["momentum_buffer"], b["optimizer"][i]["momentum_buffer"])
                   for i in a["optimizer"]), run
    theta = ranks[0]["ctkd"]["method"]["theta"]
    assert theta != 1.0  # it was trained
    for row in ranks[0]["ctkd"]["history"] + ranks[0]["dist"]["history"]:
        terms = sum(v for k, v in row.items() if k.startswith("loss_"))
        assert row["train_loss"] == pytest.approx(terms, rel=1e-5)  # terms averaged over processes like the loss


@pytest.mark.slow
def test_a_stopped_ddp_run_resumes_into_the_uninterrupted_one(first_launch):
    torchrun("resume", first_launch)
    for rank in range(2):
        straight = load(first_launch, f"straight_final_rank{rank}")
        stopped = load(first_launch, f"resumed_first_rank{rank}")
        resumed = load(first_launch, f"resumed_final_rank{rank}")
        for run in ("ctkd", "dist"):
            assert len(stopped[run]["history"]) == 1 and len(resumed[run]["history"]) == 2
            assert same_state(straight[run]["method"], resumed[run]["method"]), (rank, run)
            params = [k for k in straight[run]["model"] if rank == 0 or "running_" not in k]
            assert same_state(straight[run]["model"], resumed[run]["model"], params), (rank, run)
            if rank == 0:  # the records: rank 1 evaluates with BatchNorm statistics of its own
                strip = [[{k: v for k, v in row.items() if k not in TIMING} for row in r[run]["history"]]
                         for r in (straight, resumed)]
                assert strip[0] == strip[1], run


def test_a_share_of_a_mean_separable_loss_is_weighted_by_its_size():
    method = methods.build("kd")
    student, teacher, targets = torch.randn(4, 10), torch.randn(4, 10), torch.arange(4)
    terms, total, backprop = shard_loss(method, False, student, teacher, targets, (4, 3), epoch=1)
    assert torch.equal(total, sum(terms.values())) and torch.equal(backprop, total * (4 * 2 / 7))
    _, total, backprop = shard_loss(method, False, student, teacher, targets, (4,), epoch=1)
    assert backprop is total  # one process: the method's own loss


def test_shares_follow_tensor_split_and_collectives_are_no_ops_without_ddp():
    assert distributed.share_sizes(7) == (7,)
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.gather(x, (3,)) is x
    param = nn.Parameter(torch.ones(2))
    param.grad = torch.full((2,), 3.0)
    distributed.average_gradients([param])
    assert torch.equal(param.grad, torch.full((2,), 3.0))
