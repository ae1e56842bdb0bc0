"""The cohort harness: exact resume, shared-teacher equivalence, NaN isolation, no host syncs."""

import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdbench import data, methods, models
from kdbench.grid.recipe import Options, Schedule
from kdbench.methods import artifacts
from kdbench.runs.teacher_files import TeacherRef, TeacherSource
from kdbench.train.cohort import CohortSpec, TrainingInterrupted, train_cohort
from kdbench.train.trainee import Member, Trainee, build_student

SPEC = {"name": "synthetic", "num_classes": 10, "train_size": 160, "test_size": 64, "image_size": 16, "channels": 3}
TIMING = {"epoch_seconds", "images_per_s"}
# CTKD's learned temperature after epochs 1-3 of the run below (on the CPU).
CTKD_CURVE = [15.619885444641113, 15.617114067077637, 15.616748809814453]


@pytest.fixture(scope="module")
def splits():
    return data.build(SPEC, root=Path("data"), device="cpu", seed=0, batch_size=32, eval_batch_size=64)


def teacher_model() -> nn.Module:
    torch.manual_seed(123)
    return models.build("resnet8", num_classes=10).eval()


def member(name: str, out: Path | None, epochs: int = 3, method: str | None = None, **hparams) -> Member:
    schedule = Schedule(epochs=epochs, batch_size=32, lr=0.05, milestones=(2,))
    config = {"method": method or name, "hparams": hparams, "epochs": epochs}
    return Member(run_id=name, student="resnet8", method=method or name, hparams=hparams, schedule=schedule,
                  out_dir=out, config=config)


TEACHER = TeacherRef("resnet8", TeacherSource.FILE, None)


def cohort(members: list[Member]) -> CohortSpec:
    return CohortSpec(dataset=SPEC, seed=0, members=members, teacher=TEACHER, teacher_model=teacher_model())


def strip(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


def assert_same_results(a, b):
    for x, y in zip(a, b):
        assert x.run_id == y.run_id and x.status == y.status
        sa, sb = x.model.state_dict(), y.model.state_dict()
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), (x.run_id, key)
        assert strip(x.history) == strip(y.history)


def test_resume_after_a_kill_is_bitwise_identical(tmp_path, splits):
    straight = train_cohort(cohort([member("kd", tmp_path / "a" / "kd"), member("dkd", tmp_path / "a" / "dkd")]),
                            "cpu", data=splits)
    make = lambda: cohort([member("kd", tmp_path / "b" / "kd"), member("dkd", tmp_path / "b" / "dkd")])  # noqa: E731
    first = train_cohort(make(), "cpu", data=splits, until_epoch=1)
    assert all(r.status == "running" and r.epochs_done == 1 for r in first)
    resumed = train_cohort(make(), "cpu", data=splits)
    assert all(r.status == "done" and r.epochs_done == 3 for r in resumed)
    assert_same_results(straight, resumed)
    assert (tmp_path / "b" / "kd" / "metrics.jsonl").read_text().count("\n") == 3


def test_members_at_different_epochs_catch_up_one_call_at_a_time(tmp_path, splits):
    straight = train_cohort(cohort([member("kd", None), member("dkd", None)]), "cpu", data=splits)
    make = lambda: cohort([member("kd", tmp_path / "kd"), member("dkd", tmp_path / "dkd")])  # noqa: E731
    train_cohort(cohort([member("kd", tmp_path / "kd")]), "cpu", data=splits, until_epoch=1)
    first = train_cohort(make(), "cpu", data=splits)  # dkd trains alone from epoch 0; kd waits
    assert [r.epochs_done for r in first] == [1, 3]
    second = train_cohort(make(), "cpu", data=splits)
    assert [r.epochs_done for r in second] == [3, 3]
    assert_same_results(straight, second)


def test_stop_mid_epoch_checkpoints_and_resumes_exactly(tmp_path, splits):
    straight = train_cohort(cohort([member("kd", tmp_path / "a" / "kd"), member("rld", tmp_path / "a" / "rld")]),
                            "cpu", data=splits)
    make = lambda: cohort([member("kd", tmp_path / "b" / "kd"), member("rld", tmp_path / "b" / "rld")])  # noqa: E731
    calls = {"n": 0}

    def stop_after_seven_steps() -> bool:
        calls["n"] += 1
        return calls["n"] == 7  # epoch 2, step 2 (5 steps per epoch)

    with pytest.raises(TrainingInterrupted):
        train_cohort(make(), "cpu", data=splits, should_stop=stop_after_seven_steps)
    state = torch.load(tmp_path / "b" / "kd" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and state["partial"]["epoch"] == 2 and state["partial"]["step"] == 2
    resumed = train_cohort(make(), "cpu", data=splits)
    assert_same_results(straight, resumed)


def test_sharing_the_teacher_changes_nothing_numerically(splits):
    together = train_cohort(cohort([member("kd", None, epochs=1), member("dkd", None, epochs=1),
                                    member("normkd", None, epochs=1)]), "cpu", data=splits)
    alone = train_cohort(cohort([member("dkd", None, epochs=1)]), "cpu", data=splits)
    assert_same_results([together[1]], alone)


def test_same_architecture_starts_from_the_same_weights():
    a, b = build_student("resnet8", 3, 10, 3), build_student("resnet8", 3, 10, 3)
    c = build_student("resnet8", 4, 10, 3)
    for (key, x), y, z in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(x, y)
    assert not all(torch.equal(x, z) for x, z in zip(a.state_dict().values(), c.state_dict().values()))


class _NaNAtEpochTwo(nn.Module):
    """Test loss that turns NaN at epoch 2, step 3."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, student_logits, teacher_logits, targets, *, epoch):
        self.calls += 1
        ce = F.cross_entropy(student_logits, targets)
        if self.calls == 5 + 3:  # 5 steps per epoch
            return {"ce": ce, "bad": ce * float("nan")}
        return {"ce": ce, "bad": ce * 0}


@pytest.fixture
def nan_method():
    methods.register("nan_at_epoch_two")(_NaNAtEpochTwo)
    yield "nan_at_epoch_two"
    methods.unregister("nan_at_epoch_two")


def test_nan_in_one_member_leaves_the_others_intact(tmp_path, splits, nan_method):
    with_nan = train_cohort(cohort([member("kd", tmp_path / "kd"), member("nan", tmp_path / "nan", method=nan_method),
                                    member("dkd", tmp_path / "dkd")]), "cpu", data=splits)
    without = train_cohort(cohort([member("kd", None), member("dkd", None)]), "cpu", data=splits)
    assert_same_results([with_nan[0], with_nan[2]], without)
    failed = with_nan[1]
    assert failed.status == "failed" and failed.epochs_done == 1
    failure = failed.summary.failure
    assert failure.reason == "non-finite loss" and failure.epoch == 2 and failure.step == 3
    assert failure.terms["ce"] > 0 and failure.terms["bad"] != failure.terms["bad"]  # NaN
    import json
    summary = json.loads((tmp_path / "nan" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["failure"]["step"] == 3


def test_resume_under_a_changed_config_fails_that_member_only(tmp_path, splits):
    train_cohort(cohort([member("kd", tmp_path / "kd", epochs=1)]), "cpu", data=splits)
    changed = member("kd", tmp_path / "kd", epochs=2, temperature=2.0)
    (result, other) = train_cohort(cohort([changed, member("dkd", tmp_path / "dkd", epochs=2)]), "cpu", data=splits)
    assert result.status == "failed" and other.status == "done"
    reason = result.summary.failure.reason
    assert "cannot resume under a changed config" in reason and "\n" not in reason


def test_lr_schedule_and_records(tmp_path, splits):
    schedule = Schedule(lr=0.05, milestones=(150, 180, 210))
    assert [schedule.lr_at(e) for e in (1, 150, 151, 180, 181, 210, 211, 240)] == pytest.approx(
        [0.05, 0.05, 0.005, 0.005, 5e-4, 5e-4, 5e-5, 5e-5])
    (result,) = train_cohort(cohort([member("kd", tmp_path / "kd")]), "cpu", data=splits)
    assert [row["lr"] for row in result.history] == pytest.approx([0.05, 0.05, 0.005])
    row = result.history[-1]
    for key in ("train_loss", "train_top1", "loss_ce", "loss_kd", "test_loss", "test_top1", "test_top5",
                "test_top1_teacher_wrong", "test_top1_teacher_right"):
        assert key in row, key
    assert row["train_loss"] == pytest.approx(row["loss_ce"] + row["loss_kd"], rel=1e-5)
    summary = result.summary
    assert summary.status == "done" and summary.final_top1 == row["test_top1"]
    assert summary.epochs_done == 3 and summary.teacher_top1 is not None
    for name in ("checkpoint.pt", "metrics.jsonl", "summary.json", "config.yaml"):
        assert (tmp_path / "kd" / name).exists()


def test_teacher_stays_in_eval_mode_and_unchanged(splits):
    teacher = teacher_model()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    run = CohortSpec(dataset=SPEC, seed=0, members=[member("kd", None, epochs=1)], teacher=TEACHER, teacher_model=teacher)
    train_cohort(run, "cpu", data=splits)
    assert not teacher.training
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_validation_split_is_evaluated(tmp_path):
    spec = {**SPEC, "val_size": 20}
    splits = data.build(spec, root=Path("data"), device="cpu", seed=0, batch_size=32, eval_batch_size=64)
    run = CohortSpec(dataset=spec, seed=0, members=[member("vanilla", None, epochs=2)])
    (result,) = train_cohort(run, "cpu", data=splits)
    assert "val_top1" in result.history[-1]
    assert result.summary.val_selected_top1 is not None and result.summary.best_val_epoch in (1, 2)
    assert result.summary.final_top1_teacher_wrong is None


def steps_without_host_sync(trainee: Trainee, monkeypatch, precision: str = "fp32") -> None:
    """Three training steps with every tensor-to-host read patched to fail."""
    images = {view: torch.randn(8, 3, 16, 16) for view in trainee.views}
    targets = torch.randint(0, 10, (8,))
    teacher_logits = {view: torch.randn(8, 10) for view in trainee.views}
    scales = trainee.region_scales
    regions = None if scales is None else {scales: torch.randn(8, 10, sum(s * s for s in scales))}
    artifacts.with_synthetic_artifact(trainee.method, 10)

    def forbidden(*args, **kwargs):
        raise AssertionError("host sync inside the training step")

    for attr in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, attr, forbidden)
    for step in range(1, 4):
        trainee.step(images, targets, teacher_logits, epoch=1, step=step, precision=precision, teacher_regions=regions)
    monkeypatch.undo()
    assert trainee.first_bad_step.item() == -1


@pytest.mark.parametrize("name", methods.available())
def test_the_training_step_never_syncs_with_the_host(name, monkeypatch):
    model = build_student("resnet8", 0, 10, 3)
    trainee = Trainee(member(name, None), model, methods.build(name), torch.device("cpu"), Options())
    steps_without_host_sync(trainee, monkeypatch)


def test_bf16_and_channels_last_train(splits):
    run = CohortSpec(dataset=SPEC, seed=0, members=[member("dkd", None, epochs=1)], teacher=TEACHER,
                     teacher_model=teacher_model(), options=Options(precision="bf16", channels_last=True))
    (result,) = train_cohort(run, "cpu", data=splits)
    assert result.status == "done" and result.history[-1]["train_loss"] == result.history[-1]["train_loss"]


def test_ctkd_temperature_is_learned_through_the_reversal_and_logged_each_epoch(tmp_path, splits):
    (result,) = train_cohort(cohort([member("ctkd", tmp_path / "ctkd", epochs=3)]), "cpu", data=splits)
    curve = [row["method_temperature"] for row in result.history]
    assert len(curve) == 3 and all(1.0 < t < 21.0 for t in curve)
    start = 1 + 20 * torch.sigmoid(torch.tensor(1.0)).item()  # θ₀ = 1: T₀ = 15.62
    assert curve[0] != pytest.approx(start, abs=1e-7)  # θ moved: it received gradient through the reversal
    assert abs(curve[0] - start) < abs(curve[2] - start)  # |λ| grows over the first epochs (easy to hard)
    assert curve == pytest.approx(CTKD_CURVE, rel=1e-3)
    metrics = [json.loads(line) for line in (tmp_path / "ctkd" / "metrics.jsonl").read_text().splitlines()]
    assert [row["method_temperature"] for row in metrics] == curve
    state = torch.load(tmp_path / "ctkd" / "checkpoint.pt", weights_only=True)
    assert set(state["method"]) == {"theta"} and state["method"]["theta"].item() != 1.0  # saved for resume


@pytest.mark.slow
def test_compiled_training_agrees_with_eager(splits):
    def train(compile: bool):
        run = CohortSpec(dataset=SPEC, seed=0, members=[member("dkd", None, epochs=1), member("ctkd", None, epochs=1)],
                         teacher=TEACHER, teacher_model=teacher_model(), options=Options(compile=compile))
        return train_cohort(run, "cpu", data=splits)

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # an eager fallback would make this test vacuous
        compiled = train(True)
    eager = train(False)
    for a, b in zip(compiled, eager):
        assert a.status == b.status == "done"
        for key in ("train_loss", "loss_ce", "test_loss", "test_top1"):
            assert a.history[-1][key] == pytest.approx(b.history[-1][key], rel=1e-3, abs=1e-3), key
        for key, value in a.model.state_dict().items():
            torch.testing.assert_close(value, b.model.state_dict()[key], rtol=1e-3, atol=1e-4)


class _CountingTeacher(nn.Module):
    """The test teacher, counting its forward calls."""

    def __init__(self):
        super().__init__()
        self.inner = teacher_model()
        self.calls = 0

    def forward(self, images):
        self.calls += 1
        return self.inner(images)


@pytest.mark.slow
@pytest.mark.parametrize("mlkd_members", [1, 2])
def test_mlkd_trains_in_a_cohort_with_one_teacher_forward_per_view(splits, mlkd_members):
    teacher = _CountingTeacher()
    members = [member("kd", None, epochs=2), member("dkd", None, epochs=2)]
    members += [member(f"mlkd{i}", None, epochs=2, method="mlkd", temperature=4.0 + i) for i in range(mlkd_members)]
    results = train_cohort(CohortSpec(dataset=SPEC, seed=0, members=members, teacher=TEACHER, teacher_model=teacher),
                           "cpu", data=splits)
    assert [r.status for r in results] == ["done"] * len(members)
    eval_calls = 2 * len(list(splits.test))  # which test samples it gets right, and its own top-1
    assert teacher.calls == eval_calls + 2 * len(splits.train) * 2  # 2 epochs × steps × (weak, strong)
    # The weak view is the same with or without an MLKD member drawing the strong one.
    alone = train_cohort(cohort([member("kd", None, epochs=2)]), "cpu", data=splits)
    assert_same_results([results[0]], alone)


def test_a_teacher_forward_per_view_only_when_a_member_needs_that_view(splits):
    teacher = _CountingTeacher()
    train_cohort(CohortSpec(dataset=SPEC, seed=0, members=[member("kd", None, epochs=1)], teacher=TEACHER,
                            teacher_model=teacher), "cpu", data=splits)
    assert teacher.calls == 2 * len(list(splits.test)) + len(splits.train)
