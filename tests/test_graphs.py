"""`options.cuda_graphs`: when it captures; its control flow on the CPU with CUDA's graph
calls simulated (eager warm-up steps, a capture per epoch, replays, eager partial batches, the
fallback, a failing member leaving the graph); and on a GPU (skipped without CUDA): replay
equal to eager bit for bit in the deterministic mode, the fallback for a step that can't be
captured, and fused students agreeing with solo ones within the stated tolerance."""

import copy
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdbench import data, methods
from kdbench.doctor import graphs_check, quick
from kdbench.grid.recipe import Options
from kdbench.train import determinism, graphs
from kdbench.train.cohort import train_cohort
from test_train import SPEC, assert_same_results, cohort, member

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
#: fp32 with TF32 off, fused (grouped convolutions) vs solo (dense ones) after 4 steps, relative
#: to each tensor's largest value: cuDNN sums in another order, nothing else differs. With TF32
#: on (PyTorch's default for cuDNN), the convolutions round their inputs to 10 bits: ~1e-3.
GPU_FUSED_RTOL = 1e-4


def test_auto_captures_only_on_verified_cuda_devices():
    cpu = torch.device("cpu")
    assert Options().cuda_graphs == "auto" and Options().fuse_students == "auto"
    assert not graphs.enabled("auto", cpu, "fp32") and not graphs.enabled(False, cpu, "fp32")
    with pytest.warns(RuntimeWarning, match="CUDA graphs need a CUDA device"):
        assert not graphs.enabled(True, cpu, "bf16")
    assert "fp16" in graphs.unsupported(torch.device("cuda"), "fp16", False, False)
    assert "DDP" in graphs.unsupported(torch.device("cuda"), "fp32", False, True)


def test_speed_options_stay_out_of_run_configs():
    from kdbench.grid.recipe import RUN_OPTION_KEYS, run_options

    options = {**Options().to_dict(), "cuda_graphs": True, "fuse_students": True}
    assert "cuda_graphs" not in RUN_OPTION_KEYS and "fuse_students" not in RUN_OPTION_KEYS
    assert run_options(options) == run_options(Options().to_dict())


# ----------------------------------------------------------------------------- simulated on the CPU


class _FakeGraph:
    """A stand-in for `torch.cuda.CUDAGraph` on the CPU: "capturing" runs the step once (the
    work a real capture's first replay does), and each later replay runs it again from the
    same static buffers, as a real replay would."""

    def __init__(self):
        self.call, self.fresh = None, False

    def replay(self):
        if self.fresh:
            self.fresh = False
        else:
            self.call()

    def reset(self):
        self.call = None


class _FakeCapture:
    last = None

    def __init__(self, graph, **_):
        self.graph = graph

    def __enter__(self):
        _FakeCapture.last = self.graph

    def __exit__(self, *exc):
        self.graph.fresh = exc[0] is None  # the capture ran the step: its first replay has nothing left to do
        return False


@pytest.fixture
def simulated_cuda(monkeypatch):
    """torch.cuda's graph and stream calls replaced by CPU stand-ins; every graph's step recorded."""
    import contextlib

    from kdbench.train import steps as steps_module

    class Stream:
        def __init__(self, *_):
            pass

        def wait_stream(self, _):
            pass

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *_: Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda _: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "set_stream", lambda _: None)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *_: None)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", _FakeCapture)
    original = graphs.StepGraph._capture

    def capture(self, step, images, targets, baked):
        original(self, step, images, targets, baked)
        if self.graph is not None:  # the capture ran the step: record it for the replays
            static = self.static
            self.graph.call = lambda: self.fn(static[0], static[1], static[2], True, *baked)

    monkeypatch.setattr(graphs.StepGraph, "_capture", capture)
    monkeypatch.setattr(steps_module.graphs, "enabled", lambda option, *a, **k: option is True)


@pytest.mark.parametrize("fuse", [False, True])
def test_the_step_graph_warms_up_captures_replays_and_runs_partial_batches_eagerly(simulated_cuda, fuse):
    """On the CPU with CUDA's graph calls simulated: the same steps, in the same order, as eager."""
    splits = data.build(_odd_cohort(["kd"], False, fuse).dataset, root=Path("data"), device="cpu", seed=0,
                        batch_size=32, eval_batch_size=64)  # five batches of 32 and one of 16
    eager = train_cohort(_odd_cohort(["kd", "dkd", "ctkd"], False, fuse), "cpu", data=splits)
    before = dict(graphs.STATS)
    graphed = train_cohort(_odd_cohort(["kd", "dkd", "ctkd"], True, fuse), "cpu", data=splits)
    delta = {k: graphs.STATS[k] - before.get(k, 0) for k in ("captures", "replays", "eager", "fallbacks")}
    # Per epoch: eager warm-up steps, a capture, replays, and the partial batch eagerly.
    assert delta["captures"] == 2 and delta["fallbacks"] == 0
    assert delta["replays"] + delta["eager"] == 2 * 6 and delta["eager"] >= 2 * 2
    assert_same_results(eager, graphed)


class _RaisesFirst(nn.Module):
    """A test loss that raises on its first call, then would train like cross-entropy."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, student_logits, teacher_logits, targets, *, epoch):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("injected")
        return {"ce": F.cross_entropy(student_logits, targets)}


def _odd_cohort(names, graph_on, fuse, epochs=2):
    odd = {**SPEC, "train_size": 176}
    spec = replace(cohort([member(n, None, epochs=epochs) for n in names]), dataset=odd)
    return replace(spec, options=replace(spec.options, cuda_graphs=graph_on, fuse_students=fuse))


@pytest.mark.parametrize("fuse", [False, True])
def test_a_capture_that_raises_trains_eagerly_with_one_warning(simulated_cuda, monkeypatch, fuse):
    from kdbench.core import once

    class Refuses(_FakeCapture):
        def __enter__(self):
            raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(torch.cuda, "graph", Refuses)
    monkeypatch.setattr(once, "_warned", set())
    splits = data.build(_odd_cohort(["kd"], False, fuse).dataset, root=Path("data"), device="cpu", seed=0,
                        batch_size=32, eval_batch_size=64)
    eager = train_cohort(_odd_cohort(["kd", "dkd"], False, fuse), "cpu", data=splits)
    before = dict(graphs.STATS)
    with pytest.warns(RuntimeWarning, match="can't be captured") as caught:
        graphed = train_cohort(_odd_cohort(["kd", "dkd"], True, fuse), "cpu", data=splits)
    assert sum("can't be captured" in str(w.message) for w in caught) == 1
    assert graphs.STATS["fallbacks"] - before.get("fallbacks", 0) == 2  # each epoch's graph tried once
    assert_same_results(eager, graphed)


@pytest.mark.parametrize("fuse", [False, True])
def test_a_member_failing_in_an_eager_step_leaves_the_graph(simulated_cuda, fuse):
    methods.register("raises_first")(_RaisesFirst)
    try:
        splits = data.build(_odd_cohort(["kd"], False, fuse).dataset, root=Path("data"), device="cpu", seed=0,
                            batch_size=32, eval_batch_size=64)
        names = ["kd", "raises_first", "dkd"]
        eager = train_cohort(_odd_cohort(names, False, fuse), "cpu", data=splits)
        before = dict(graphs.STATS)
        graphed = train_cohort(_odd_cohort(names, True, fuse), "cpu", data=splits)
    finally:
        methods.unregister("raises_first")
    assert graphs.STATS["captures"] - before.get("captures", 0) == 2
    failure = graphed[1].summary.failure
    assert graphed[1].status == "failed" and (failure.epoch, failure.step) == (1, 1) and failure.reason.endswith("injected")
    assert_same_results([eager[0], eager[2]], [graphed[0], graphed[2]])


# ----------------------------------------------------------------------------- on a GPU

#: 176 training images at batch 32: five full batches (replayed) and a last one of 16 (eager).
GPU_SPEC = {**SPEC, "train_size": 176}


@pytest.fixture(scope="module")
def gpu_splits():
    return data.build(GPU_SPEC, root=Path("data"), device="cuda", seed=0, batch_size=32, eval_batch_size=64)


def gpu_cohort(names, graphs_on: bool, fuse: bool = False, deterministic: bool = True, **kw):
    spec = cohort([member(n, None, **kw) for n in names])
    spec = replace(spec, dataset=GPU_SPEC)
    return replace(spec, options=replace(spec.options, cuda_graphs=graphs_on, fuse_students=fuse,
                                         deterministic=deterministic))


@CUDA
@pytest.mark.parametrize("fuse", [False, True])
def test_replay_equals_eager_bit_for_bit_in_deterministic_mode(gpu_splits, fuse):
    names = ["vanilla", "kd", "dkd", "ctkd", "dist", "rld"]
    try:
        eager = train_cohort(gpu_cohort(names, False, fuse), "cuda", data=gpu_splits)
        before = dict(graphs.STATS)
        graphed = train_cohort(gpu_cohort(names, True, fuse), "cuda", data=gpu_splits)
    finally:
        determinism.set_deterministic(torch.device("cuda"), False)
    assert graphs.STATS["captures"] - before.get("captures", 0) == 3  # one per epoch
    assert graphs.STATS["fallbacks"] == before.get("fallbacks", 0)
    assert_same_results(eager, graphed)


class _SyncsWithTheHost(nn.Module):
    """A test loss that reads a value on the host: it can't be captured."""

    def forward(self, student_logits, teacher_logits, targets, *, epoch):
        ce = F.cross_entropy(student_logits, targets)
        return {"ce": ce * (1.0 if ce.item() > -1 else 0.0)}


@CUDA
def test_a_step_that_cant_be_captured_trains_eagerly_with_one_warning(gpu_splits, monkeypatch):
    from kdbench.core import once

    monkeypatch.setattr(once, "_warned", set())
    methods.register("host_sync")(_SyncsWithTheHost)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            graphed = train_cohort(gpu_cohort(["kd", "host_sync"], True, epochs=1), "cuda", data=gpu_splits)
        eager = train_cohort(gpu_cohort(["kd", "host_sync"], False, epochs=1), "cuda", data=gpu_splits)
    finally:
        methods.unregister("host_sync")
        determinism.set_deterministic(torch.device("cuda"), False)
    assert sum("can't be captured" in str(w.message) for w in caught) == 1
    assert [r.status for r in graphed] == ["done", "done"]
    assert_same_results(eager, graphed)


@CUDA
def test_fused_students_on_a_gpu_agree_with_solo_ones():
    from test_fused import assert_close, fused_steps, solo_steps, trainee

    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        solo = [_to_cuda(trainee(m, dtype=torch.float32)) for m in ("vanilla", "kd", "dkd", "ctkd", "dist")]
        together = [copy.deepcopy(t) for t in solo]
        solo_steps(solo, 4)
        assert fused_steps(together, 4) == []
        for a, b in zip(together, solo):
            assert_close(a, b, GPU_FUSED_RTOL)
    finally:
        torch.backends.cudnn.allow_tf32 = previous


def _to_cuda(t):
    """A CPU test trainee moved to the GPU (its model, method, optimizer state and accumulators)."""
    from kdbench.train.trainee import Trainee

    device = torch.device("cuda")
    moved = Trainee(t.member, t.model.to(device), t.method.to(device), device, Options())
    moved.set_epoch_lr(1)
    moved.reset_accumulators()
    return moved


@CUDA
def test_the_doctor_check_captures_and_compares(tmp_path):
    scale = replace(quick.TINY, train_size=256)  # 8 steps an epoch: warm-up steps, a capture, replays
    (check,) = graphs_check.graphs_check(torch.device("cuda"),
                                         lambda: quick._cohort(scale, "fp32", None, deterministic=True),
                                         lambda: quick._splits(torch.device("cuda"), scale, tmp_path))
    assert check.ok, check.detail
