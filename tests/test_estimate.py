"""The dry-run estimate: its arithmetic on fake costs, the work a plan leaves, the cache of
measured costs (re-measured when inflated), and one real measurement on a tiny model.

No test asserts a duration: the test machine is slow and shared.
"""

import json
import math

import pytest
import yaml

from kdbench.grid import config, plan, schema
from kdbench.launch import estimate
from kdbench.launch.estimate import Costs, Job, Student
from kdbench.runs.records import Layout, RunState

VANILLA = estimate.loss_key("vanilla", {})
KD = estimate.loss_key("kd", {"temperature": 4.0})
MLKD = estimate.loss_key("mlkd", {})


def fake_costs(**extra) -> Costs:
    arch = {
        ("t", 64): {"train_s": 0.5, "forward_s": 0.2, "eval_s": 0.8, "warm_s": 3.0, "build_s": 0.1},
        ("s", 64): {"train_s": 0.1, "forward_s": 0.03, "eval_s": 0.4, "warm_s": 1.0, "build_s": 0.01},
        ("t", 128): {"train_s": 0.9, "forward_s": 0.3, "eval_s": 0.8, "warm_s": 5.0, "build_s": 0.1},
    }
    values = dict(arch=arch, loss={(VANILLA, 64): 0.001, (KD, 64): 0.003, (MLKD, 64): 0.021},
                  data={64: {"build_s": 2.0, "batch_s": 0.005}, 128: {"build_s": 2.0, "batch_s": 0.01}},
                  eval_batch_size=256, image_s=0.0, workers=2, cores=16, threads=1, cpu=False, process_s=4.0)
    values.update(extra)
    return Costs(**values)


def cohort(*students: Student, teacher: str | None = "t", epochs: int = 3, key: str = "d|0|64", **extra) -> Job:
    values = dict(label="c", batch_size=64, epochs=epochs, train_images=640, eval_images=512, students=students,
                  teacher=teacher, teacher_eval_images=2 * 512 if teacher else 0, data_key=key, cohort_id="c1")
    values.update(extra)
    return Job(**values)


def test_epoch_of_a_single_view_cohort():
    job = cohort(Student("s", VANILLA, 1, needs_teacher=False), Student("s", KD))
    # 10 batches of: the loader's batch, one teacher forward, two student steps and KD's own loss
    step = 0.005 + 0.2 + 2 * 0.1 + (0.003 - 0.001)
    evaluation = 2 * 512 / 256 * 0.4
    assert estimate.epoch_seconds(job, fake_costs()) == pytest.approx(10 * step + evaluation + 2 * estimate.RECORD_S)


def test_a_multi_view_member_costs_a_step_per_view_and_a_teacher_forward_per_view():
    single = cohort(Student("s", KD))
    multi = cohort(Student("s", KD), Student("s", MLKD, 2))
    costs = fake_costs()
    assert multi.teacher_views == 2 and multi.strong and not single.strong
    extra = estimate.epoch_seconds(multi, costs) - estimate.epoch_seconds(single, costs)
    # the strong view's teacher forward, MLKD's two steps and its loss, its evaluation and record
    batches = 10 * (0.2 + 2 * 0.1 + (0.021 - 0.001))
    assert extra == pytest.approx(batches + 512 / 256 * 0.4 + estimate.RECORD_S)


def test_teacher_views_count_only_members_that_need_the_teacher():
    job = cohort(Student("s", VANILLA, 1, needs_teacher=False), Student("s", MLKD, 2, needs_teacher=False))
    assert job.teacher_views == 0
    assert cohort(Student("s", KD), teacher=None).teacher_views == 0


def test_the_strong_view_bounds_the_epoch_when_the_host_is_slower():
    job = cohort(Student("s", MLKD, 2), teacher=None)
    fast, slow = fake_costs(image_s=1e-6), fake_costs(image_s=0.01)
    train = 10 * (0.005 + 2 * 0.1 + 0.02)
    rest = 512 / 256 * 0.4 + estimate.RECORD_S
    assert estimate.epoch_seconds(job, fast) == pytest.approx(train + rest)
    # 640 images at 10 ms each, made by 2 workers: 3.2 s, longer than the training's 2.25 s
    assert estimate.epoch_seconds(job, slow) == pytest.approx(640 * 0.01 / 2 + rest)


def test_on_a_cpu_the_strong_views_workers_share_the_cores():
    costs = fake_costs(cpu=True, cores=2, threads=2, workers=1)
    # 10 s of training on both cores and 4 s of one core making strong views: 12 s of the two cores
    assert estimate.with_strong_view(10.0, 4.0, costs) == pytest.approx(12.0)
    assert estimate.with_strong_view(10.0, 30.0, costs) == pytest.approx(30.0)
    roomy = fake_costs(cpu=True, cores=8, threads=4, workers=2)
    assert estimate.with_strong_view(10.0, 4.0, roomy) == pytest.approx(10.0)


def test_a_job_adds_its_start_and_the_dataset_when_it_loads_it():
    job = cohort(Student("s", KD), Student("s", MLKD, 2))
    costs = fake_costs()
    epochs = 3 * estimate.epoch_seconds(job, costs)
    start = 2 * 0.01 + 0.1 + 2 * 512 / 256 * 0.8  # students built, teacher built and evaluated twice
    assert estimate.job_seconds(job, costs, load_data=False) == pytest.approx(epochs + start)
    # loading the dataset, and starting the strong view's worker processes (a process start)
    assert estimate.job_seconds(job, costs, load_data=True) == pytest.approx(epochs + start + 2.0 + 4.0)


def test_seconds_adds_the_start_up_and_loads_data_only_when_it_changes():
    teacher = Job(label="teacher t", batch_size=128, epochs=5, train_images=640, eval_images=512,
                  students=(Student("t", VANILLA, 1, False),), data_key="d", own_data=True)
    a = cohort(Student("s", KD), key="d|0|64", cohort_id="a")
    b = cohort(Student("s", KD), key="d|0|64", cohort_id="b")
    c = cohort(Student("s", KD), key="d|1|64", cohort_id="c")
    costs = fake_costs()
    found = estimate.seconds([teacher, a, b, c], costs)
    loads = [s - estimate.job_seconds(j, costs, load_data=False) for j, s in found.jobs]
    assert loads == pytest.approx([2.0, 2.0, 0.0, 2.0])
    # the process, and the first calls of each shape: t at 128 (teacher training), t and s at 64
    assert found.startup == pytest.approx(4.0 + 5.0 + 3.0 + 1.0)
    assert found.total == pytest.approx(found.startup + sum(s for _, s in found.jobs))
    assert found.cohort("b") == pytest.approx(found.jobs[2][1]) and found.cohort("nope") is None
    assert estimate.seconds([], costs).total == 0


def test_teacher_training_costs_its_epochs_and_evaluations():
    teacher = Job(label="teacher t", batch_size=128, epochs=5, train_images=1280, eval_images=512,
                  students=(Student("t", VANILLA, 1, False),), data_key="d", own_data=True)
    costs = fake_costs()
    epoch = 10 * (0.01 + 0.9) + 512 / 256 * 0.8 + estimate.RECORD_S
    assert estimate.job_seconds(teacher, costs, load_data=True) == pytest.approx(5 * epoch + 0.1 + 2.0)


# -- the work a plan leaves ---------------------------------------------------------------------


def synthetic_grid(tmp_path, **options) -> schema.Grid:
    grid = {
        "name": "est",
        "dataset": {"name": "synthetic", "num_classes": 5, "train_size": 100, "test_size": 40, "image_size": 8},
        "seeds": [0, 1],
        "schedule": {"epochs": 4, "milestones": [2], "batch_size": 16},
        "teachers": {"checkpoint": "train", "schedule": {"epochs": 6, "batch_size": 32}},
        "pairs": [{"teacher": "resnet8", "student": "resnet8"}],
        "methods": {"vanilla": {}, "kd": {}, "mlkd": {}},
        "options": {"precision": "fp32", **options},
    }
    path = tmp_path / "est.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return config.load_grid(path)


def test_work_trains_the_grids_teacher_first_then_what_each_cohort_has_left(tmp_path):
    grid = synthetic_grid(tmp_path)
    runs = plan.plan(grid)
    cohorts = plan.cohorts(runs)
    states = {r.run_id: (RunState.NEW, 0) for r in runs}
    first = [r for r in cohorts[0].runs]
    states[first[0].run_id] = (RunState.DONE, 4)
    states[first[1].run_id] = (RunState.PARTIAL, 2)
    layout = Layout(tmp_path / "results", grid.name)
    jobs = estimate.work(grid, cohorts, states, layout, tmp_path / "data")
    teacher, *rest = jobs
    assert (teacher.label, teacher.epochs, teacher.batch_size, teacher.own_data) == ("teacher resnet8", 6, 32, True)
    assert teacher.cohort_id is None and teacher.train_images == 100 and teacher.eval_images == 40
    # seed 0: kd resumes from epoch 2, mlkd starts; seed 1: all three start
    assert [(j.cohort_id, j.epochs, len(j.students)) for j in rest] == [
        (cohorts[0].cohort_id, 4, 1), (cohorts[0].cohort_id, 2, 1), (cohorts[1].cohort_id, 4, 3)]
    assert rest[0].students[0].views == 2 and rest[0].strong and rest[0].teacher_views == 2
    assert rest[2].teacher == "resnet8" and rest[2].teacher_eval_images == 80
    assert {s.needs_teacher for s in rest[2].students} == {True, False}
    # once the teacher is on disk, nothing trains it
    ref_dir = layout.teacher_dir(cohorts[0].teacher_config["train_id"])
    ref_dir.mkdir(parents=True)
    (ref_dir / "teacher.pth").write_bytes(b"weights")
    assert [j.cohort_id for j in estimate.work(grid, cohorts, states, layout, tmp_path)] == [j.cohort_id for j in rest]


# -- the cache ----------------------------------------------------------------------------------


class FakeMeasure:
    def __init__(self, value: float):
        self.value, self.calls = value, []

    def __call__(self, quick: bool) -> dict[str, float]:
        self.calls.append(quick)
        return {"train_s": self.value, "build_s": self.value}


def test_cache_measures_once_then_probes(tmp_path):
    path = tmp_path / estimate.CACHE
    a = FakeMeasure(1.0)
    assert estimate.cached(path, {"a": a}) == {"a": {"train_s": 1.0, "build_s": 1.0}}
    assert a.calls == [False]
    stored = json.loads(path.read_text())
    assert stored == {"version": estimate.CACHE_VERSION, "costs": {"a": {"train_s": 1.0, "build_s": 1.0}}}
    # A probe within the ratio keeps the cached steady cost; a one-shot cost keeps the smaller value.
    a.value = 0.8
    assert estimate.cached(path, {"a": a}) == {"a": {"train_s": 1.0, "build_s": 0.8}}
    assert a.calls == [False, True]


def test_an_inflated_cached_cost_is_measured_again_and_rewritten(tmp_path):
    path = tmp_path / estimate.CACHE
    path.write_text(json.dumps({"version": estimate.CACHE_VERSION,
                                "costs": {"a": {"train_s": 12.0, "build_s": 1.0}, "other": {"train_s": 3.0}}}))
    a = FakeMeasure(1.0)
    assert estimate.cached(path, {"a": a})["a"]["train_s"] == 1.0
    assert a.calls == [True, False]
    assert json.loads(path.read_text())["costs"] == {"a": {"train_s": 1.0, "build_s": 1.0}, "other": {"train_s": 3.0}}


def test_a_cache_of_another_version_or_unreadable_is_measured_afresh(tmp_path):
    path = tmp_path / estimate.CACHE
    for text in ('{"cpu2|b64|fp32": {"resnet8": {"train_s": 1.0}}}', "not json", '{"version": 2, "costs": {"a": 3}}'):
        path.write_text(text)
        a = FakeMeasure(2.0)
        assert estimate.cached(path, {"a": a}) == {"a": {"train_s": 2.0, "build_s": 2.0}}
        assert a.calls == [False]


# -- measuring, once, on a tiny model -----------------------------------------------------------


def test_measure_costs_on_a_tiny_grid_are_positive_cached_and_remeasured_when_inflated(tmp_path, monkeypatch):
    from kdbench.tools import bench

    monkeypatch.setattr(bench, "windows", lambda device, quick: (1, 1, 1, 0.0))  # one warm-up call, one timed
    grid = synthetic_grid(tmp_path, precision="auto", eval_batch_size=32)
    runs = [r for r in plan.plan(grid) if r.seed == 0]
    cohorts = plan.cohorts(runs)
    states = {r.run_id: (RunState.NEW, 0) for r in runs}
    layout = Layout(tmp_path / "results", grid.name)
    jobs = estimate.work(grid, cohorts, states, layout, tmp_path / "data")
    path = layout.results / estimate.CACHE
    costs = estimate.measure_costs(jobs, grid, "cpu", path, tmp_path / "data")
    numbers = [v for entry in costs.arch.values() for v in entry.values()] + list(costs.loss.values()) + \
        [v for entry in costs.data.values() for v in entry.values()] + [costs.image_s]
    assert all(math.isfinite(v) and v >= 0 for v in numbers)
    assert all(costs.arch[key][name] > 0 for key in costs.arch for name in ("train_s", "forward_s", "eval_s"))
    assert costs.image_s > 0 and costs.eval_batch_size == 32 and set(costs.arch) == {("resnet8", 16), ("resnet8", 32)}
    found = estimate.seconds(jobs, costs)
    assert math.isfinite(found.total) and found.total > 0
    entries = json.loads(path.read_text())["costs"]
    key = next(k for k in entries if k.startswith("arch|resnet8|b16|"))
    assert "fp32" in key or "bf16" in key  # measured in the precision `auto` resolves to
    entries[key]["train_s"] = 1000.0
    path.write_text(json.dumps({"version": estimate.CACHE_VERSION, "costs": entries}))
    again = estimate.measure_costs(jobs, grid, "cpu", path, tmp_path / "data")
    assert again.arch[("resnet8", 16)]["train_s"] < 1000.0
    assert json.loads(path.read_text())["costs"][key]["train_s"] < 1000.0
