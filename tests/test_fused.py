"""Fused students (`options.fuse_students`): a stacked group of same-architecture members equals
its members trained alone (float64, 1e-10 relative), member failures stay the member's own, and
a fused cohort records `fused_with` and ends where an unfused one does."""

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from kdbench import data, methods, models
from kdbench.grid.recipe import Options, Schedule
from kdbench.train import fused
from kdbench.train.fused import FusedGroup
from kdbench.train.stacked import PACKABLE, StackedModel, default_backend
from kdbench.train.cohort import TrainingInterrupted, train_cohort
from kdbench.train.trainee import STRONG, WEAK, Member, Trainee, build_method, build_student
from test_train import SPEC, assert_same_results, cohort, member, nan_method  # noqa: F401 -- nan_method: a fixture

CPU = torch.device("cpu")
CLASSES, SIZE, BATCH = 10, 16, 8
#: float64 fused vs solo after several steps: rounding only (a grouped convolution sums in
#: another order than a dense one); measured ~1e-14, allowed 1e-10.
RTOL64 = 1e-10


def trainee(method: str, student: str = "resnet8", seed: int = 0, dtype: torch.dtype = torch.float64,
            lr: float = 0.05, **hparams) -> Trainee:
    spec = Member(run_id=f"{method}-{seed}", student=student, method=method, hparams=hparams,
                  schedule=Schedule(epochs=3, batch_size=BATCH, lr=lr, milestones=(2,)))
    model = build_student(student, seed, CLASSES, 3).to(dtype).train()
    t = Trainee(spec, model, build_method(method, hparams, seed).to(dtype), CPU, Options())
    t.set_epoch_lr(1)
    t.reset_accumulators()
    return t


def batches(steps: int, views: tuple[str, ...], like: Trainee):
    """Random batches (images, targets, teacher logits) in `like`'s dtype, on its device."""
    g = torch.Generator().manual_seed(7)
    dtype, device = next(like.model.parameters()).dtype, like.device
    for step in range(1, steps + 1):
        images = {v: torch.randn(BATCH, 3, SIZE, SIZE, generator=g, dtype=dtype).to(device) for v in views}
        teacher = {v: 3 * torch.randn(BATCH, CLASSES, generator=g, dtype=dtype).to(device) for v in views}
        yield step, images, torch.randint(0, CLASSES, (BATCH,), generator=g).to(device), teacher


def solo_steps(ts: list[Trainee], steps: int, views: tuple[str, ...] = (WEAK,)) -> None:
    for step, images, targets, teacher in batches(steps, views, ts[0]):
        for t in ts:
            if t.failure is None:
                try:
                    t.step(images, targets, teacher, 1, step, "fp32")
                except RuntimeError as exc:
                    t.failure = exc  # type: ignore[assignment]


def fused_steps(ts: list[Trainee], steps: int, views: tuple[str, ...] = (WEAK,), backend: str | None = None
                ) -> list:
    units = fused.form_groups(ts, "fp32", backend)
    failures = []

    def fail(t: Trainee, exc: BaseException) -> None:
        t.failure = exc  # type: ignore[assignment]
        failures.append((t.run_id, str(exc)))

    for step, images, targets, teacher in batches(steps, views, ts[0]):
        for unit in units:
            assert isinstance(unit, FusedGroup)
            unit.step(images, targets, teacher, 1, step, "fp32", None, fail)
    for unit in units:
        unit.sync()
    return failures


def state(t: Trainee) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in t.model.state_dict().items()}
    out.update({f"method.{k}": v for k, v in t.method.state_dict().items()})
    params = dict(t.model.named_parameters())
    for name, p in params.items():
        buf = t.optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            out[f"momentum.{name}"] = buf
    for i, p in enumerate(t.method_params):
        out[f"method_momentum.{i}"] = t.optimizer.state[p]["momentum_buffer"]
    out.update(loss_sum=t.loss_sum, correct=t.correct, term_sums=t.term_sums, first_bad_step=t.first_bad_step)
    return out


def assert_close(a: Trainee, b: Trainee, rtol: float = RTOL64) -> None:
    sa, sb = state(a), state(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        x, y = sa[key], sb[key]
        if not x.is_floating_point():
            assert torch.equal(x, y), key
            continue
        scale = max(y.abs().max().item(), 1e-30)
        assert (x - y).abs().max().item() <= rtol * scale, (a.run_id, key, (x - y).abs().max().item() / scale)


def assert_equal(a: Trainee, b: Trainee) -> None:
    sa, sb = state(a), state(b)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), (a.run_id, key)


SINGLE_VIEW = ["vanilla", "kd", "dkd", "ctkd", "dist", "nkd", "label_swap"]


@pytest.mark.parametrize("backend", ["grouped", "vmap"])
def test_a_fused_group_equals_its_members_trained_alone_in_float64(backend):
    solo = [trainee(m, seed=0) for m in SINGLE_VIEW]
    together = [copy.deepcopy(t) for t in solo]
    solo_steps(solo, 4)
    assert fused_steps(together, 4, backend=backend) == []
    for a, b in zip(together, solo):
        assert a.fused_with == len(SINGLE_VIEW)
        assert_close(a, b)
    assert together[3].method_params and not torch.equal(together[3].method_params[0], trainee("ctkd").method_params[0])


def test_two_view_members_fuse_among_themselves():
    solo = [trainee(m) for m in ("mlkd", "crld")]
    together = [copy.deepcopy(t) for t in solo]
    solo_steps(solo, 3, (WEAK, STRONG))
    assert fused_steps(together, 3, (WEAK, STRONG)) == []
    for a, b in zip(together, solo):
        assert_close(a, b)


def test_groups_form_by_architecture_views_and_optimizer_settings():
    ts = [trainee("kd"), trainee("dkd"), trainee("mlkd"), trainee("kd", student="resnet14"),
          trainee("nkd", lr=0.01), trainee("dist"), trainee("crld")]
    units = fused.form_groups(ts, "fp32")
    shapes = [[t.run_id for t in u.members] if isinstance(u, FusedGroup) else u.run_id for u in units]
    assert shapes == [["kd-0", "dkd-0", "dist-0"], ["mlkd-0", "crld-0"], "kd-0", "nkd-0"]
    assert [t.fused_with for t in ts] == [3, 3, 2, 1, 1, 3, 2]
    assert all(not isinstance(u, FusedGroup) for u in fused.form_groups(ts[:2], "fp16"))


def raising_at(t: Trainee, step_to_fail: int, nan: bool = False) -> None:
    """Make `t`'s loss raise (or turn NaN) from its `step_to_fail`-th call on."""
    loss, calls = t.loss, {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        terms = loss(*args, **kwargs)
        if calls["n"] >= step_to_fail:
            if not nan:
                raise RuntimeError("injected")
            return {k: v * float("nan") for k, v in terms.items()}
        return terms

    t.loss = wrapped


@pytest.mark.parametrize("nan", [False, True])
def test_a_failing_member_leaves_the_others_bit_for_bit_and_keeps_its_own_state(nan):
    base = [trainee(m) for m in ("kd", "dkd", "ctkd")]
    clean, faulty, alone = ([copy.deepcopy(t) for t in base] for _ in range(3))
    fused_steps(clean, 4)
    raising_at(faulty[1], 2, nan)
    failures = fused_steps(faulty, 4)
    for k in (0, 2):
        assert_equal(faulty[k], clean[k])
    raising_at(alone[1], 2, nan)
    solo_steps(alone[1:2], 4)
    if nan:  # a non-finite loss trains on, as alone, and the epoch's end reads its first bad step
        assert failures == [] and faulty[1].first_bad_step.item() == 2
        assert torch.isnan(faulty[1].loss_sum)
    else:  # its weights as they were when it failed: those of the member alone
        assert failures == [("dkd-0", "injected")]
        assert_close(faulty[1], alone[1])


#: One architecture per packable family in the fast tier; the whole zoo (ShuffleNets through vmap) in the slow one.
FAST_ARCHS = {"resnet8", "wrn_16_2", "vgg8", "MobileNetV2"}


@pytest.mark.parametrize("arch", [a if a in FAST_ARCHS else pytest.param(a, marks=pytest.mark.slow)
                                  for a in sorted(models.available())])
def test_the_stacked_model_computes_each_member_for_every_architecture(arch):
    ms = [build_student(arch, seed, CLASSES, 3).double().train() for seed in (0, 1)]
    backend = default_backend(ms[0])
    assert (backend == "grouped") == (type(ms[0]).__name__ in PACKABLE)
    stack = StackedModel([copy.deepcopy(m) for m in ms], backend)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    out = stack(x)
    # An ImageNet-depth network ends at 1x1, where training-mode BatchNorm normalises two values
    # per channel and so amplifies the summation-order rounding (measured 1.7e-10 on ResNet-50).
    rtol = 1e-8 if arch.endswith("_imagenet") else RTOL64
    for k, m in enumerate(ms):
        expected = m(x)
        assert (out[k] - expected).abs().max().item() <= rtol * expected.abs().max().item(), (arch, backend)
        # Training-mode BatchNorm updated each member's own running statistics.
        ref = dict(m.named_buffers())
        for name, buf in stack.buffers.items():
            assert (buf[k] - ref[name]).abs().max().item() <= rtol * max(ref[name].abs().max().item(), 1), name


def test_the_packing_would_mix_shufflenet_members_so_they_take_vmap():
    ms = [build_student("ShuffleV2", seed, CLASSES, 3).train() for seed in (0, 1)]
    x = torch.randn(2, 3, 16, 16)
    packed = StackedModel([copy.deepcopy(m) for m in ms], "grouped")(x)
    assert not torch.allclose(packed[1], copy.deepcopy(ms[1])(x))
    assert default_backend(ms[0]) == "vmap"


def test_auto_fuses_only_where_measured_faster(monkeypatch):
    assert not fused.enabled("auto", CPU, "resnet8x4")
    assert fused.enabled(True, CPU, "resnet8x4") and not fused.enabled(False, CPU, "resnet8x4")
    monkeypatch.setitem(fused.AUTO, "cpu", frozenset({"resnet8"}))
    ts = [trainee("kd"), trainee("dkd"), trainee("kd", student="resnet14"), trainee("dkd", student="resnet14")]
    units = fused.form_groups(ts, "fp32", fuse=lambda arch: fused.enabled("auto", CPU, arch))
    assert [t.fused_with for t in ts] == [2, 2, 1, 1] and len(units) == 3
    assert methods.views_of(methods.build("mlkd")) == (WEAK, STRONG)


# ----------------------------------------------------------------------------- whole cohorts (fp32)

#: fp32, fused vs unfused, after 3 epochs of the synthetic cohort: the tolerance for the
#: final test top-1 (points: one of its 64 test images) and for the last epoch's train loss
#: (relative). Measured on the CPU: equal top-1, losses within 4e-7; the same cohort under
#: seed 1 instead of 0 differs by 1.6 to 4.7 points and 0.6% to 3.5%: the tolerances sit
#: far below seed noise.
TOP1_POINTS, LOSS_RTOL = 1.6, 1e-4


@pytest.fixture(scope="module")
def splits():
    return data.build(SPEC, root=Path("data"), device="cpu", seed=0, batch_size=32, eval_batch_size=64)


def fused_cohort(members, fuse: bool = True):
    spec = cohort(members)
    return replace(spec, options=replace(spec.options, fuse_students=fuse))


@pytest.mark.slow
def test_a_fused_cohort_records_fused_with_and_ends_where_the_unfused_one_does(tmp_path, splits):
    names = ["vanilla", "kd", "dkd", "ctkd"]
    fused_runs = train_cohort(fused_cohort([member(n, tmp_path / n) for n in names]), "cpu", data=splits)
    plain = train_cohort(fused_cohort([member(n, None) for n in names], fuse=False), "cpu", data=splits)
    for a, b in zip(fused_runs, plain):
        assert a.status == b.status == "done"
        assert a.summary.fused_with == len(names) and b.summary.fused_with == 1
        assert abs(a.history[-1]["test_top1"] - b.history[-1]["test_top1"]) <= TOP1_POINTS
        assert abs(a.history[-1]["train_loss"] - b.history[-1]["train_loss"]) <= LOSS_RTOL * b.history[-1]["train_loss"]
    assert '"fused_with": 4' in (tmp_path / "kd" / "summary.json").read_text()


@pytest.mark.slow
def test_a_fused_cohort_stops_mid_epoch_and_resumes_exactly(tmp_path, splits):
    make = lambda out: fused_cohort([member("kd", out / "kd"), member("rld", out / "rld")])  # noqa: E731
    straight = train_cohort(make(tmp_path / "a"), "cpu", data=splits)
    calls = {"n": 0}

    def stop_after_seven_steps() -> bool:
        calls["n"] += 1
        return calls["n"] == 7

    with pytest.raises(TrainingInterrupted):
        train_cohort(make(tmp_path / "b"), "cpu", data=splits, should_stop=stop_after_seven_steps)
    assert_same_results(straight, train_cohort(make(tmp_path / "b"), "cpu", data=splits))


@pytest.mark.slow
def test_a_non_finite_member_of_a_fused_cohort_fails_alone(tmp_path, splits, nan_method):
    runs = train_cohort(fused_cohort([member("kd", None), member("nan", tmp_path / "nan", method=nan_method),
                                      member("dkd", None)]), "cpu", data=splits)
    plain = train_cohort(fused_cohort([member("kd", None), member("dkd", None)], fuse=False), "cpu", data=splits)
    failure = runs[1].summary.failure
    assert runs[1].status == "failed" and failure.reason == "non-finite loss" and (failure.epoch, failure.step) == (2, 3)
    for a, b in zip([runs[0], runs[2]], plain):
        assert a.status == "done" and a.summary.fused_with == 2  # the last epochs without the failed member
        assert abs(a.history[-1]["train_loss"] - b.history[-1]["train_loss"]) <= LOSS_RTOL * b.history[-1]["train_loss"]


def test_bench_times_the_fused_mode_beside_eager_and_says_why_no_graph():
    from kdbench import cli
    from kdbench.tools import bench

    tiny = dict(batch_size=4, steps=1, warmup_steps=0, device="cpu", num_classes=5, image_size=8, gemm_peak=False)
    result = bench.measure("resnet8", "resnet8", ["kd", "dkd", "mlkd", "crld"], separate=False, fuse_students=True,
                           cuda_graphs=True, **tiny)
    modes = result["modes"]
    assert list(modes) == ["eager", "fused"]  # no graph on a CPU, and a note says so
    assert any("CUDA graphs need a CUDA device" in n for n in modes["eager"]["notes"])
    assert modes["fused"]["groups"] == ["2 × resnet8 (grouped)", "2 × resnet8 (grouped)"]
    assert all(m["student_images_per_s"] > 0 and m["cohort_tflops"] > 0 for m in modes.values())
    args = cli.build_parser().parse_args(["bench", "--fuse-students", "--cuda-graphs", "--fuse-backend", "vmap"])
    assert args.fuse_students and args.cuda_graphs and args.fuse_backend == "vmap"


@pytest.mark.parametrize("backend", ["grouped", "vmap"])
def test_a_fused_step_never_syncs_with_the_host(backend, monkeypatch):
    ts = [trainee(m, dtype=torch.float32) for m in ("kd", "dkd", "ctkd", "dist")]
    (group,) = fused.form_groups(ts, "fp32", backend)
    batch = list(batches(3, (WEAK,), ts[0]))

    def forbidden(*args, **kwargs):
        raise AssertionError("host sync inside the fused step")

    for attr in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, attr, forbidden)
    for step, images, targets, teacher in batch:
        group.step(images, targets, teacher, 1, step, "fp32", None, None)
    monkeypatch.undo()
    assert all(t.first_bad_step.item() == -1 and t.term_sums is not None for t in ts)
