"""Reliability beyond the fault matrix of tests/test_faults.py: commands that take `--set`
check the folder of the overridden grid."""

from __future__ import annotations

import pytest

from test_runner import kdbench, write_grid


@pytest.mark.slow
def test_verify_with_set_checks_the_overridden_grids_folder(tmp_path):
    grid = write_grid(tmp_path, epochs=2, seeds=(0,), methods=("kd",))
    trained = kdbench("run", grid, "--device", "cpu", "--set", "schedule.epochs=1", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr + trained.stdout
    with_set = kdbench("verify", grid, "--set", "schedule.epochs=1", cwd=tmp_path)
    assert with_set.returncode == 0, with_set.stderr
    assert with_set.stdout.strip().splitlines()[-1] == "verified 2 run folders: no problems"
    without = kdbench("verify", grid, cwd=tmp_path)
    assert without.stdout.strip().splitlines()[-1] == "verified 0 run folders: no problems"


# -- faults of the machine stop the cohort and leave its runs resumable ---------------------------

FAULTY_METHOD = '''
import os

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.methods import register

FAULTS = {"oom": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
          "memory": lambda: MemoryError(),
          "cuda": lambda: RuntimeError("CUDA error: an illegal memory access was encountered")}


@register("faulty")
class Faulty(nn.Module):
    """Raises the fault named by $KDBENCH_TEST_FAULT in its second step (a test method)."""

    defaults_from = "a test"

    def __init__(self, temperature: float = 4.0):
        super().__init__()
        self.calls = 0

    def forward(self, student_logits, teacher_logits, targets, *, epoch):
        self.calls += 1
        fault = os.environ.get("KDBENCH_TEST_FAULT")
        if fault and self.calls == 2:
            raise FAULTS[fault]()
        return {"ce": F.cross_entropy(student_logits, targets)}
'''


@pytest.mark.slow
@pytest.mark.parametrize("fault,what", [("oom", "ran out of memory"), ("memory", "ran out of memory"),
                                        ("cuda", "hit an error that leaves the device unusable")])
def test_a_repeated_fault_of_the_machine_stops_with_one_line_and_leaves_the_runs_resumable(tmp_path, fault, what):
    import json
    import os
    import subprocess
    import sys

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "faulty.py").write_text(FAULTY_METHOD)
    grid = write_grid(tmp_path, epochs=2, seeds=(0,), methods=("kd", "faulty"),
                      pairs=[{"teacher": {"arch": "resnet8", "checkpoint": "teachers/t8.pth"}, "student": "resnet8"}])

    def run(**env):
        return subprocess.run([sys.executable, "-m", "kdbench", "run", str(grid), "--device", "cpu",
                               "--methods-dir", str(plugins)], cwd=tmp_path, capture_output=True, text=True,
                              timeout=600, env={**os.environ, "KDBENCH_HEARTBEAT_S": "1", **env})

    first = run(KDBENCH_TEST_FAULT=fault)
    assert first.returncode == 1, first.stderr + first.stdout
    stopped = [line for line in first.stdout.splitlines() if line.startswith("stopped: cohort") and "times" in line]
    assert len(stopped) == 1 and f"{what} 2 times in a row" in stopped[0], first.stdout
    assert stopped[0].endswith("its runs stay resumable: lower schedule.batch_size or options.max_cohort_size, "
                               "train in precision bf16 or fp16, or use another device, then run the same command")
    statuses = [json.loads(p.read_text())["status"] for p in (tmp_path / "results" / "tiny" / "runs").glob("*/summary.json")]
    assert "failed" not in statuses  # not the runs' fault: none is failed, --retry-failed is not needed
    second = run()
    assert second.returncode == 0, second.stderr + second.stdout
    statuses = [json.loads(p.read_text())["status"] for p in (tmp_path / "results" / "tiny" / "runs").glob("*/summary.json")]
    assert statuses == ["done", "done"]


# -- a real full disk and a real read-only folder ---------------------------------------------------


@pytest.fixture
def small_fs(tmp_path):
    """A tmpfs of 12 MiB mounted at tmp_path/fs (skipped, saying why, where this machine can't mount)."""
    import subprocess

    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root and mount rights): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(folder, leave: int) -> None:
    """Fill the filesystem of `folder` until about `leave` bytes are free."""
    import os

    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with open(folder / "filler", "wb") as f:
        f.write(b"\0" * max(free - leave, 0))
    with open(folder / "filler2", "ab") as f:  # the last pages
        try:
            while os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize > leave:
                f.write(b"\0" * 4096)
                f.flush()
        except OSError:
            pass


def test_a_lock_claim_on_a_full_disk_leaves_no_lock_behind(small_fs):
    import errno
    import os

    from kdbench.runs import locks

    (small_fs / "locks").mkdir()
    fill(small_fs, 0)
    owner, watch = locks.Owner.me(), locks.LockWatch()
    with pytest.raises(OSError) as exc:
        locks.try_claim(small_fs / "locks" / "run.lock", owner, watch)
    assert exc.value.errno == errno.ENOSPC
    assert os.listdir(small_fs / "locks") == []  # no empty lock to wait out for the stale period
    (small_fs / "filler").unlink()
    assert locks.try_claim(small_fs / "locks" / "run.lock", owner, watch)  # claimed at once
    assert locks.read_lock(small_fs / "locks" / "run.lock")["token"] == owner.token


@pytest.mark.slow
def test_a_real_full_disk_stops_in_one_line_and_the_same_command_resumes(tmp_path, small_fs):
    import os

    grid = write_grid(tmp_path, epochs=2, seeds=(0,), methods=("kd",))
    results = small_fs / "results"
    fill(small_fs, 64 * 1024)  # room for locks and records, not for a checkpoint
    first = kdbench("run", grid, "--device", "cpu", "--results-dir", results, cwd=tmp_path)
    assert first.returncode == 2, first.stderr + first.stdout
    (line,) = [x for x in first.stderr.splitlines() if x.startswith("kdbench: error:")]
    assert "No space left on device; fix that and run the same command again to resume" in line
    locks_dir = results / "tiny" / "locks"
    assert not locks_dir.exists() or all(p.stat().st_size > 0 for p in locks_dir.iterdir())
    (small_fs / "filler").unlink()
    (small_fs / "filler2").unlink()
    again = kdbench("run", grid, "--device", "cpu", "--results-dir", results, cwd=tmp_path)
    assert again.returncode == 0, again.stderr + again.stdout
    assert "waiting for" not in again.stdout
    assert sorted(os.listdir(results / "tiny" / "runs")) and "runs: 2 done" in again.stdout


@pytest.mark.slow
def test_a_real_read_only_folder_stops_in_one_line_and_nothing_finished_is_touched(tmp_path, small_fs):
    import subprocess

    import yaml

    grid = write_grid(tmp_path, epochs=1, seeds=(0,), methods=("kd",))
    results = small_fs / "results"
    assert kdbench("run", grid, "--device", "cpu", "--results-dir", results, cwd=tmp_path).returncode == 0
    before = {p: p.read_bytes() for p in (results / "tiny" / "runs").rglob("*") if p.is_file()}
    spec = yaml.safe_load(grid.read_text())
    spec["seeds"] = [0, 1]  # new runs to train
    grid.write_text(yaml.safe_dump(spec, sort_keys=False))
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    try:
        stopped = kdbench("run", grid, "--device", "cpu", "--results-dir", results, cwd=tmp_path)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
    assert stopped.returncode == 2, stopped.stderr + stopped.stdout
    (line,) = [x for x in stopped.stderr.splitlines() if x.startswith("kdbench: error:")]
    assert "Read-only file system" in line
    resumed = kdbench("run", grid, "--device", "cpu", "--results-dir", results, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert all(p.read_bytes() == data for p, data in before.items())


# -- the fault matrix's row "summary rebuilt as failed from the checkpoint" ------------------------


@pytest.mark.slow
def test_a_damaged_summary_of_a_failed_run_is_rebuilt_as_failed_from_the_checkpoint(tmp_path):
    """The failed run keeps its checkpoint (of its last good epoch, marked failed); with its summary
    damaged and its error.log gone, `run` rebuilds the summary as failed from the checkpoint alone,
    without training, and the failure's reason survives."""
    import json

    from test_run_layer import cli, plugin

    methods_dir = plugin(tmp_path / "plugins")
    grid = write_grid(tmp_path, epochs=3, seeds=(0,), methods=("kd", "boom"),
                      pairs=[{"teacher": {"arch": "resnet8", "checkpoint": "teachers/t8.pth"}, "student": "resnet8"}])
    first = cli("run", grid, "--device", "cpu", "--methods-dir", methods_dir, cwd=tmp_path, boom=True)
    assert first.returncode == 1, first.stderr + first.stdout
    runs = tmp_path / "results" / "tiny" / "runs"
    (folder,) = [p.parent for p in runs.glob("*/summary.json") if json.loads(p.read_text())["variant"] == "boom"]
    assert (folder / "checkpoint.pt").is_file()
    (folder / "summary.json").write_text('{"run_id": ')
    (folder / "error.log").unlink()
    again = cli("run", grid, "--device", "cpu", "--methods-dir", methods_dir, cwd=tmp_path)
    assert again.returncode == 1, again.stderr + again.stdout
    assert f"{folder.name}: summary.json rebuilt from checkpoint.pt as failed" in again.stdout
    assert "trained" not in again.stdout.split("summary.json rebuilt")[1].split("\n")[0]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["epochs_done"] == 1 and "rebuilt" in summary
    assert summary["failure"]["reason"] == "AttributeError: 'Boom' object has no attribute 'missing_attribute'"


# -- teacher identity travels with a copied results folder ------------------------------------------


def _tiny_grid(folder, seeds, teacher) -> "Path":
    import yaml

    grid = {"name": "moved", "dataset": {"name": "synthetic", "num_classes": 10, "train_size": 64, "test_size": 32,
                                         "image_size": 16},
            "seeds": list(seeds), "schedule": {"epochs": 1},
            "teachers": {"checkpoint": "train", "schedule": {"epochs": 1}},
            "pairs": [{"teacher": teacher, "student": "resnet8"}], "methods": {"kd": {}}}
    path = folder / "grid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def _change(path) -> None:
    import torch

    state = torch.load(path, weights_only=True)
    weights = state["model"] if "model" in state else state
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name] = weights[name] + 1.0
    torch.save(state, path)


@pytest.mark.slow
@pytest.mark.parametrize("forget_records", [False, True])
def test_a_copied_folder_refuses_runs_on_a_changed_grid_trained_teacher_until_accepted(tmp_path, forget_records):
    """The issue's injection: a grid trains its teacher, its results folder is copied elsewhere,
    the teacher file changes; the runs not yet started must not train on it."""
    import json
    import shutil

    first = tmp_path / "first"
    first.mkdir()
    assert kdbench("run", _tiny_grid(first, [0], "resnet8"), "--device", "cpu", cwd=first).returncode == 0
    copy = tmp_path / "copy"
    shutil.copytree(first, copy)
    (teacher,) = (copy / "results" / "teachers").glob("*/teacher.pth")
    _change(teacher)
    if forget_records:  # the runs' own SHA-256s still tell (and the teacher's training summary)
        shutil.rmtree(copy / "results" / "teachers" / "known")
    grid = _tiny_grid(copy, [0, 1], "resnet8")
    refused = kdbench("run", grid, "--device", "cpu", cwd=copy)
    assert refused.returncode == 1, refused.stderr + refused.stdout
    assert "changed: SHA-256" in refused.stdout
    summaries = {json.loads(p.read_text())["seed"]: json.loads(p.read_text())
                 for p in (copy / "results" / "moved" / "runs").glob("*/summary.json")}
    assert summaries[1]["status"] == "failed" and "changed" in summaries[1]["failure"]["reason"]
    assert summaries[0]["status"] == "done"  # what finished stays
    accepted = kdbench("run", grid, "--device", "cpu", "--retry-failed", cwd=copy)
    assert accepted.returncode == 0, accepted.stderr + accepted.stdout
    again = {json.loads(p.read_text())["seed"]: json.loads(p.read_text())
             for p in (copy / "results" / "moved" / "runs").glob("*/summary.json")}
    assert again[1]["status"] == "done" and again[1]["teacher_sha256"] != again[0]["teacher_sha256"]
    verify = kdbench("verify", grid, cwd=copy)
    assert verify.returncode == 1 and "its runs were trained on different teacher files" in verify.stdout


@pytest.mark.slow
def test_a_teacher_file_outside_the_results_folder_is_still_checked_in_a_copy(tmp_path):
    import shutil

    from test_runner import make_teacher

    outside = make_teacher(tmp_path / "shared" / "t8.pth")
    first = tmp_path / "first"
    first.mkdir()
    teacher = {"arch": "resnet8", "checkpoint": str(outside)}
    assert kdbench("run", _tiny_grid(first, [0], teacher), "--device", "cpu", cwd=first).returncode == 0
    copy = tmp_path / "copy"
    shutil.copytree(first, copy)
    shutil.rmtree(copy / "results" / "teachers" / "known")  # only the runs' own SHA-256s are left
    _change(outside)
    refused = kdbench("run", _tiny_grid(copy, [0, 1], teacher), "--device", "cpu", cwd=copy)
    assert refused.returncode == 1 and "recorded by run" in refused.stdout, refused.stdout


# -- a random-teacher control (issue 22) ---------------------------------------------------------------


def test_a_random_teacher_is_a_pair_of_its_own_seeded_by_the_teacher_seed():
    from kdbench.grid import plan
    from kdbench.grid.config import parse_grid

    obj = {"name": "g", "dataset": {"name": "synthetic", "num_classes": 10}, "schedule": {"epochs": 1},
           "teachers": {"seed": 3},
           "pairs": [{"teacher": {"arch": "resnet8", "checkpoint": "random"}, "student": "resnet8"},
                     {"teacher": {"arch": "resnet8", "checkpoint": "train"}, "student": "resnet8"}],
           "methods": {"kd": {}}}
    runs = plan.plan(parse_grid(obj, "grid.yaml"))
    assert [r.pair for r in runs] == ["resnet8 (random)->resnet8", "resnet8->resnet8"]
    assert runs[0].config["teacher"] == {"arch": "resnet8", "checkpoint": "random", "seed": 3}
    assert runs[0].cohort_key != runs[1].cohort_key


@pytest.mark.slow
def test_a_random_teacher_trains_records_its_sha256_and_is_named_a_control_in_the_report(tmp_path):
    import json

    import yaml

    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "control", "dataset": {"name": "synthetic", "num_classes": 10, "train_size": 64, "test_size": 32,
                                       "image_size": 16},
        "schedule": {"epochs": 1}, "pairs": [{"teacher": {"arch": "resnet8", "checkpoint": "random"},
                                              "student": "resnet8"}],
        "methods": {"kd": {}}}))
    assert kdbench("run", grid, "--device", "cpu", cwd=tmp_path).returncode == 0
    (summary,) = [json.loads(p.read_text()) for p in (tmp_path / "results" / "control" / "runs").glob("*/summary.json")]
    assert summary["pair"] == "resnet8 (random)->resnet8" and len(summary["teacher_sha256"]) == 64
    assert summary["teacher_checkpoint"].startswith("random init (seed 0)")
    assert kdbench("report", "--grid", "control", "--no-plots", cwd=tmp_path).returncode == 0
    main = (tmp_path / "results" / "control" / "report" / "main.md").read_text()
    assert "resnet8 (random)→resnet8" in main and "Control: resnet8 (random) is a randomly initialised teacher" in main
