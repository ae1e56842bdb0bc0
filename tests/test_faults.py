"""The fault matrix of docs/design.md ("Faults and what they cost"): one test per row.

Each test trains a tiny synthetic grid in a temporary results folder, injects the fault,
and checks the promised outcome: no loop, no traceback, no lost progress of a healthy
member, no number that can't be trusted.
"""

import errno
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml

from kdbench import cli, models
from kdbench.core import atomic
from kdbench.runs import records
from kdbench.train import cohort as train
from kdbench.launch import worker
from kdbench.runs.records import ERROR_LOG

pytestmark = pytest.mark.slow

METHODS = ("kd", "dkd", "vanilla")


def make_grid(folder: Path, epochs: int = 2, seeds=(0,)) -> Path:
    teacher = folder / "teachers" / "t8.pth"
    teacher.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(7)
    torch.save({"model": models.build("resnet8", num_classes=10).state_dict()}, teacher)
    grid = {
        "name": "g",
        "dataset": {"name": "synthetic", "num_classes": 10, "train_size": 96, "test_size": 64, "image_size": 16,
                    "channels": 3},
        "seeds": list(seeds),
        "schedule": {"epochs": epochs, "milestones": [1]},
        "pairs": [{"teacher": {"arch": "resnet8", "checkpoint": str(teacher)}, "student": "resnet8"}],
        "methods": {m: {} for m in METHODS},
    }
    path = folder / "g.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def kdbench(capsys, *args) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def run(capsys, grid: Path, *extra) -> tuple[int, str, str]:
    return kdbench(capsys, "run", grid, "--device", "cpu", "--results-dir", grid.parent / "results", *extra)


def run_dirs(grid: Path) -> dict[str, Path]:
    """variant → run folder (of seed 0)."""
    out = {}
    for folder in (grid.parent / "results" / "g" / "runs").iterdir():
        config = yaml.safe_load((folder / "config.yaml").read_text())
        if config["seed"] == 0:
            out[config["method"]] = folder
    return out


def summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def numbers(folder: Path) -> tuple:
    s = summary(folder)
    rows = [{k: v for k, v in json.loads(line).items() if k not in ("epoch_seconds", "images_per_s")}
            for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return s["status"], s["final_top1"], s["best_top1"], rows


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The grid trained once without faults: the numbers every healed run must reproduce."""
    folder = tmp_path_factory.mktemp("reference")
    grid = make_grid(folder)
    assert cli.main(["run", str(grid), "--device", "cpu", "--results-dir", str(folder / "results")]) == 0
    return {variant: numbers(path) for variant, path in run_dirs(grid).items()}


def interrupt_at_epoch_two(monkeypatch) -> None:
    """Make the next `kdbench run` stop like a kill after epoch 1 (members keep epoch 1's checkpoint)."""
    original = train._CohortTrainer._train_epoch

    def stop(self, epoch, active):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch, active)

    monkeypatch.setattr(train._CohortTrainer, "_train_epoch", stop)


@pytest.fixture
def partial_grid(tmp_path, capsys, monkeypatch):
    """A grid whose three runs finished epoch 1 of 2."""
    grid = make_grid(tmp_path)
    with monkeypatch.context() as m:
        interrupt_at_epoch_two(m)
        code, out, _ = run(capsys, grid)
    assert code == 130, out
    assert all(summary(f)["epochs_done"] == 1 for f in run_dirs(grid).values())
    return grid


@pytest.fixture
def done_grid(tmp_path, capsys):
    grid = make_grid(tmp_path)
    assert run(capsys, grid)[0] == 0
    return grid


def no_training(out: str) -> bool:
    return "members, epochs" not in out


# ----- summary.json -------------------------------------------------------------------------

DAMAGE = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:50]),
    "empty": lambda p: p.write_bytes(b""),
    "not JSON": lambda p: p.write_text("<html>oops</html>"),
    "missing field": lambda p: p.write_text(json.dumps({k: v for k, v in json.loads(p.read_text()).items()
                                                        if k != "status"})),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_summary_of_a_done_run_is_rebuilt_without_training(done_grid, capsys, reference, damage):
    folder = run_dirs(done_grid)["kd"]
    DAMAGE[damage](folder / "summary.json")
    started = time.monotonic()
    code, out, err = run(capsys, done_grid)
    assert code == 0 and not err and no_training(out), out
    assert time.monotonic() - started < 20
    assert f"{folder.name}: summary.json rebuilt from checkpoint.pt as done" in out
    assert numbers(folder) == reference["kd"]
    assert "rebuilt" in summary(folder)


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_summary_of_a_partial_run_is_rebuilt_then_resumed_exactly(partial_grid, capsys, reference, damage):
    folder = run_dirs(partial_grid)["dkd"]
    DAMAGE[damage](folder / "summary.json")
    code, out, err = run(capsys, partial_grid)
    assert code == 0 and not err, out
    assert f"{folder.name}: summary.json rebuilt from checkpoint.pt as running" in out
    for variant, path in run_dirs(partial_grid).items():
        assert numbers(path) == reference[variant], variant


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_summary_of_a_failed_run_is_rebuilt_as_failed(done_grid, capsys, damage):
    folder = run_dirs(done_grid)["vanilla"]
    failure = records.Failure(reason="ValueError: boom", epoch=2, step=3, error_log=ERROR_LOG)
    records.write_error_log(folder, failure, None, "injected")
    records.write_summary(folder, records.Summary.from_json({**summary(folder), "status": "failed",
                                                             "failure": failure.to_json()}))
    (folder / "checkpoint.pt").unlink()  # nothing else to rebuild it from
    DAMAGE[damage](folder / "summary.json")
    code, out, _ = run(capsys, done_grid)
    assert code == 1 and no_training(out)
    assert f"{folder.name}: summary.json rebuilt as failed from error.log" in out
    assert summary(folder)["status"] == "failed" and summary(folder)["failure"]["reason"] == "ValueError: boom"


def test_a_damaged_summary_with_nothing_to_rebuild_it_is_failed_and_retry_retrains_just_it(done_grid, capsys, reference):
    folder = run_dirs(done_grid)["dkd"]
    (folder / "summary.json").write_text("{")
    (folder / "checkpoint.pt").unlink()
    code, out, _ = run(capsys, done_grid)
    assert code == 1 and no_training(out)
    assert summary(folder)["status"] == "failed" and "no checkpoint" in summary(folder)["failure"]["reason"]
    others = {v: numbers(p) for v, p in run_dirs(done_grid).items() if v != "dkd"}
    code, out, _ = run(capsys, done_grid, "--retry-failed")
    assert code == 0 and "1 members" in out
    assert numbers(folder) == reference["dkd"]
    assert {v: numbers(p) for v, p in run_dirs(done_grid).items() if v != "dkd"} == others


# ----- metrics.jsonl ------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncated mid-line", "malformed line"])
@pytest.mark.parametrize("state", ["done", "partial"])
def test_damaged_metrics_are_rewritten_from_the_checkpoint(request, capsys, reference, damage, state):
    grid = request.getfixturevalue(f"{state}_grid")
    path = run_dirs(grid)["kd"] / "metrics.jsonl"
    if damage == "truncated mid-line":
        path.write_bytes(path.read_bytes()[:-20])
    else:
        path.write_text('{"epoch": 1, "test_top1": \n' + path.read_text())
    code, out, err = run(capsys, grid)
    assert code == 0 and not err, out
    assert numbers(path.parent) == reference["kd"]


# ----- checkpoint.pt ------------------------------------------------------------------------

CORRUPT = {
    "truncated": lambda p, other: p.write_bytes(p.read_bytes()[:100]),
    "empty": lambda p, other: p.write_bytes(b""),
    "from another run": lambda p, other: shutil.copy(other, p),
}


@pytest.mark.parametrize("corruption", CORRUPT)
def test_a_corrupt_checkpoint_fails_its_member_and_the_others_resume_exactly(partial_grid, capsys, reference,
                                                                            corruption):
    folders = run_dirs(partial_grid)
    CORRUPT[corruption](folders["dkd"] / "checkpoint.pt", folders["kd"] / "checkpoint.pt")
    code, out, _ = run(capsys, partial_grid)
    assert code == 1
    assert numbers(folders["kd"]) == reference["kd"] and numbers(folders["vanilla"]) == reference["vanilla"]
    failed = summary(folders["dkd"])
    assert failed["status"] == "failed" and "checkpoint" in failed["failure"]["reason"]
    assert (folders["dkd"] / "error.log").exists()
    code, out, _ = run(capsys, partial_grid, "--retry-failed")
    assert code == 0 and numbers(folders["dkd"]) == reference["dkd"]


def test_a_corrupt_checkpoint_of_a_done_run_leaves_its_numbers(done_grid, capsys, reference):
    folder = run_dirs(done_grid)["kd"]
    (folder / "checkpoint.pt").write_bytes(b"")
    code, out, _ = run(capsys, done_grid)
    assert code == 0 and no_training(out) and numbers(folder) == reference["kd"]
    code, out, _ = kdbench(capsys, "verify", done_grid, "--results-dir", done_grid.parent / "results")
    assert code == 1 and f"{folder.name}: " in out and "the run's numbers stand" in out


# ----- config.yaml --------------------------------------------------------------------------

def test_a_hand_edited_config_is_never_trained_on(partial_grid, capsys):
    folder = run_dirs(partial_grid)["kd"]
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["hparams"]["temperature"] = 2.0
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    code, out, _ = run(capsys, partial_grid)
    assert code == 0
    warnings = [line for line in out.splitlines() if line.startswith("warning:") and folder.name in line]
    assert len(warnings) == 1 and "left alone" in warnings[0]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    code, out, _ = kdbench(capsys, "verify", partial_grid, "--results-dir", partial_grid.parent / "results")
    assert code == 1 and f"{folder.name}: {folder / 'config.yaml'}: hashes to" in out


# ----- the teacher --------------------------------------------------------------------------

def test_a_teacher_replaced_under_partial_runs_is_never_used(partial_grid, capsys, reference):
    teacher = partial_grid.parent / "teachers" / "t8.pth"
    old = models.sha256_file(teacher)
    state = torch.load(teacher, weights_only=True)
    state["model"]["fc.bias"] += 0.01
    torch.save(state, teacher)
    new = models.sha256_file(teacher)
    code, out, _ = run(capsys, partial_grid)
    assert code == 1 and no_training(out)
    assert old[:16] in out and new[:16] in out
    for folder in run_dirs(partial_grid).values():
        s = summary(folder)
        assert s["status"] == "failed" and old[:16] in s["failure"]["reason"] and new[:16] in s["failure"]["reason"]
        assert s["teacher_sha256"] == old  # the record keeps the teacher it trained on
    code, out, _ = kdbench(capsys, "verify", partial_grid, "--results-dir", partial_grid.parent / "results")
    assert code == 1 and f"teacher resnet8 ({teacher}): SHA-256 {new[:16]}… differs from {old[:16]}…" in out
    assert "verified 3 run folders: 1 problem" in out
    code, out, _ = run(capsys, partial_grid, "--retry-failed")
    assert code == 0 and "replaces" in out
    assert kdbench(capsys, "verify", partial_grid, "--results-dir", partial_grid.parent / "results")[0] == 0
    for folder in run_dirs(partial_grid).values():
        s = summary(folder)
        assert s["status"] == "done" and s["teacher_sha256"] == new and len(s["sessions"]) == 1


# ----- locks --------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("content", [b"", b"{not json"])
def test_an_unreadable_lock_is_taken_over_after_the_stale_period(partial_grid, capsys, monkeypatch, content):
    folder = run_dirs(partial_grid)["kd"]
    lock = partial_grid.parent / "results" / "g" / "locks" / f"{folder.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_bytes(content)
    code, out, _ = kdbench(capsys, "status", partial_grid, "--results-dir", partial_grid.parent / "results")
    assert code == 0 and "lock file unreadable" in out
    code, out, _ = kdbench(capsys, "verify", partial_grid, "--results-dir", partial_grid.parent / "results")
    assert code == 1 and f"{folder.name}: lock file" in out and "unreadable" in out
    monkeypatch.setattr("kdbench.runs.locks.STALE_AFTER_SECONDS", 1.0)
    monkeypatch.setattr("kdbench.runs.locks.HEARTBEAT_SECONDS", 0.2)
    code, out, _ = run(capsys, partial_grid, "--only", folder.name)  # nothing else to do: it waits
    assert code == 0 and summary(folder)["status"] == "done"
    assert "waiting for 1 runs held by unreadable" in out


# ----- the disk -----------------------------------------------------------------------------

def fail_writes(monkeypatch, code: int, when) -> None:
    original = atomic.write_bytes

    def write_bytes(path, data):
        if when(Path(path)):
            raise OSError(code, os.strerror(code), str(Path(path).parent / f".{Path(path).name}.tmp"))
        return original(path, data)

    monkeypatch.setattr(atomic, "write_bytes", write_bytes)


@pytest.mark.parametrize("code,what", [(errno.ENOSPC, "checkpoint"), (errno.ENOSPC, "record"),
                                       (errno.EROFS, "read-only")])
def test_a_full_disk_or_a_read_only_folder_stops_in_one_line_and_resumes_exactly(partial_grid, capsys, reference,
                                                                                 monkeypatch, code, what):
    before = {v: (f / "checkpoint.pt").read_bytes() for v, f in run_dirs(partial_grid).items()}
    target = {"checkpoint": "checkpoint.pt", "record": "summary.json", "read-only": None}[what]
    with monkeypatch.context() as m:
        fail_writes(m, code, lambda p: target is None or p.name == target)
        exit_code, out, err = run(capsys, partial_grid)
    assert exit_code == 2 and err.count("\n") == 1 and err.startswith("kdbench: error: cannot write ")
    assert os.strerror(code) in err and "Traceback" not in err
    for variant, folder in run_dirs(partial_grid).items():
        if target != "summary.json":
            assert (folder / "checkpoint.pt").read_bytes() == before[variant]
        assert summary(folder)["epochs_done"] == 1
    exit_code, out, err = run(capsys, partial_grid)
    assert exit_code == 0, err
    for variant, folder in run_dirs(partial_grid).items():
        assert numbers(folder) == reference[variant]


# ----- the run folder -----------------------------------------------------------------------

def test_a_run_folder_deleted_while_its_cohort_trains_is_written_again(tmp_path, capsys, reference, monkeypatch):
    grid = make_grid(tmp_path)
    original = train._CohortTrainer._train_epoch

    def delete_then_train(self, epoch, active):
        if epoch == 2:
            shutil.rmtree(Path(active[0].member.out_dir))
        return original(self, epoch, active)

    monkeypatch.setattr(train._CohortTrainer, "_train_epoch", delete_then_train)
    assert run(capsys, grid)[0] == 0
    for variant, folder in run_dirs(grid).items():
        assert numbers(folder) == reference[variant]
    code, out, _ = kdbench(capsys, "verify", grid, "--results-dir", tmp_path / "results")
    assert code == 0, out


# ----- non-progress -------------------------------------------------------------------------

def test_attempts_without_progress_stop_instead_of_spinning(tmp_path, capsys, monkeypatch):
    grid = make_grid(tmp_path)
    monkeypatch.setattr(worker, "train_cohort", lambda *a, **k: [])
    started = time.monotonic()
    code, out, _ = run(capsys, grid)
    assert code == 1 and time.monotonic() - started < 30
    for folder in run_dirs(grid).values():
        assert summary(folder)["failure"]["reason"] == "no progress in 2 attempts in a row"


# ----- verify -------------------------------------------------------------------------------

def test_verify_reports_each_injected_fault_in_one_line(tmp_path, capsys):
    grid = make_grid(tmp_path, epochs=1, seeds=(0, 1))
    assert run(capsys, grid)[0] == 0
    folders = sorted((tmp_path / "results" / "g" / "runs").iterdir())
    assert len(folders) == 6
    code, out, _ = kdbench(capsys, "verify", grid, "--results-dir", tmp_path / "results")
    assert code == 0 and "verified 6 run folders: no problems" in out
    folders[0].joinpath("summary.json").write_text("{")
    folders[1].joinpath("metrics.jsonl").write_text('{"epoch": ')
    folders[2].joinpath("checkpoint.pt").write_bytes(b"")
    config = yaml.safe_load(folders[3].joinpath("config.yaml").read_text())
    config["seed"] = 7
    folders[3].joinpath("config.yaml").write_text(yaml.safe_dump(config))
    lock = tmp_path / "results" / "g" / "locks" / f"{folders[4].name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_bytes(b"")
    code, out, _ = kdbench(capsys, "verify", grid, "--results-dir", tmp_path / "results")
    lines = [line for line in out.splitlines() if not line.startswith("verified")]
    assert code == 1 and len(lines) == 5, out
    for folder in folders[:5]:
        (line,) = [line for line in lines if line.startswith(f"{folder.name}: ")]
        assert "→" in line
    assert "verified 6 run folders: 5 problems" in out
