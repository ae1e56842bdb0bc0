"""`kdbench run` end to end: layout, idempotence, kill and resume, concurrent workers, errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from kdbench import cli, models

pytestmark = pytest.mark.slow


def make_teacher(path: Path, arch: str = "resnet8") -> Path:
    torch.manual_seed(7)
    model = models.build(arch, num_classes=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict()}, path)
    return path


def write_grid(folder: Path, name: str = "tiny", epochs: int = 2, seeds=(0, 1), methods=("vanilla", "kd", "dkd"),
               train_size: int = 128, **extra) -> Path:
    t1 = make_teacher(folder / "teachers" / "t8.pth", "resnet8")
    t2 = make_teacher(folder / "teachers" / "t14.pth", "resnet14")
    grid = {
        "name": name,
        "dataset": {"name": "synthetic", "num_classes": 10, "train_size": train_size, "test_size": 64,
                    "image_size": 16, "channels": 3},
        "seeds": list(seeds),
        "schedule": {"epochs": epochs, "milestones": [1]},
        "pairs": [{"teacher": {"arch": "resnet8", "checkpoint": str(t1)}, "student": "resnet8"},
                  {"teacher": {"arch": "resnet14", "checkpoint": str(t2)}, "student": "resnet8"}],
        "methods": {m: {} for m in methods},
        **extra,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def kdbench(*args, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdbench", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "KDBENCH_HEARTBEAT_S": "1"}, **kwargs)


# Two torch processes with two threads each on a two-core machine slow each other down a lot.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def summaries(results: Path, grid: str = "tiny") -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (results / grid / "runs").glob("*/summary.json")}


def assert_each_epoch_once(results: Path, epochs: int, grid: str = "tiny"):
    for run_dir in (results / grid / "runs").iterdir():
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == list(range(1, epochs + 1)), run_dir


@pytest.mark.slow
def test_tiny_grid_end_to_end_then_nothing_to_do(tmp_path):
    grid = write_grid(tmp_path)
    first = kdbench("run", grid, "--device", "cpu", cwd=tmp_path)
    assert first.returncode == 0, first.stderr + first.stdout
    results = tmp_path / "results"
    found = summaries(results)
    assert len(found) == 2 * 3 * 2
    for run_id, s in found.items():
        run_dir = results / "tiny" / "runs" / run_id
        for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoint.pt"):
            assert (run_dir / name).is_file(), (run_id, name)
        assert s["status"] == "done" and s["epochs_done"] == 2 and s["run_id"] == run_id
        for key in ("grid", "dataset", "teacher", "teacher_sha256", "student", "method", "hparams", "seed",
                    "final_top1", "best_top1", "final_top1_teacher_wrong", "final_top1_teacher_right",
                    "wall_seconds", "environment"):
            assert key in s, key
        assert {"kdbench", "torch", "cuda", "device_name", "git_commit"} <= set(s["environment"])
        assert len(s["teacher_sha256"]) == 64
    assert_each_epoch_once(results, 2)
    second = kdbench("run", grid, "--device", "cpu", cwd=tmp_path)
    assert second.returncode == 0
    assert "Nothing to do" in second.stdout and "epoch" not in second.stdout
    assert {k: v["finished_at"] for k, v in summaries(results).items()} == {k: v["finished_at"] for k, v in found.items()}
    status = kdbench("status", grid, cwd=tmp_path)
    assert status.returncode == 0 and status.stdout.count(" done ") == 12


@pytest.mark.slow
def test_sigkill_then_rerun_finishes_without_duplicates(tmp_path):
    grid = write_grid(tmp_path, epochs=4, seeds=(0,), methods=("kd", "dkd"), train_size=256)
    results = tmp_path / "results"
    proc = subprocess.Popen([sys.executable, "-m", "kdbench", "run", str(grid), "--device", "cpu"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        done = [s for s in summaries(results).values() if s.get("epochs_done", 0) >= 1]
        if done:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = summaries(results)
    assert any(s["status"] != "done" for s in before.values()), "the grid finished before the kill"
    # Where each run resumes: its checkpoint's epoch, which a kill between the checkpoint and the
    # summary of an epoch leaves one ahead of the summary.
    resume_at = {}
    for checkpoint in results.glob("*/runs/*/checkpoint.pt"):
        resume_at[checkpoint.parent.name] = torch.load(checkpoint, weights_only=True)["epoch"]
    rerun = kdbench("run", grid, "--device", "cpu", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr + rerun.stdout
    after = summaries(results)
    assert len(after) == 4 and all(s["status"] == "done" for s in after.values())
    assert_each_epoch_once(results, 4)
    for run_id, s in after.items():
        starts = [session["start_epoch"] for session in s["sessions"]]
        assert starts == sorted(set(starts)), (run_id, starts)  # no epoch trained twice by two sessions
        epochs_before = resume_at.get(run_id, 0)
        assert epochs_before >= before.get(run_id, {}).get("epochs_done", 0)
        assert starts[-1] == epochs_before or len(starts) == 1, (run_id, starts, epochs_before)


@pytest.mark.slow
def test_ctrl_c_checkpoints_mid_epoch_and_exits_cleanly(tmp_path):
    grid = write_grid(tmp_path, epochs=3, seeds=(0,), methods=("kd",), train_size=512)
    results = tmp_path / "results"
    proc = subprocess.Popen([sys.executable, "-m", "kdbench", "run", str(grid), "--device", "cpu"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not any(s.get("epochs_done", 0) >= 1 for s in summaries(results).values()):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    if proc.returncode == 0:
        pytest.skip("the grid finished before the interrupt arrived")
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in out
    partial = [torch.load(p, weights_only=True)["partial"] for p in (results / "tiny" / "runs").glob("*/checkpoint.pt")]
    assert any(p is not None and p["step"] >= 1 for p in partial)
    rerun = kdbench("run", grid, "--device", "cpu", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert all(s["status"] == "done" for s in summaries(results).values())
    assert_each_epoch_once(results, 3)


@pytest.mark.slow
def test_two_processes_at_once_share_the_grid(tmp_path):
    grid = write_grid(tmp_path, epochs=2, seeds=(0, 1, 2), methods=("kd", "dkd"))
    procs = [subprocess.Popen([sys.executable, "-m", "kdbench", "run", str(grid), "--device", "cpu"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ONE_THREAD)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    found = summaries(tmp_path / "results")
    assert len(found) == 2 * 2 * 3 and all(s["status"] == "done" for s in found.values())
    for s in found.values():
        assert len(s["sessions"]) == 1 and s["sessions"][0]["start_epoch"] == 0, s["sessions"]
    assert_each_epoch_once(tmp_path / "results", 2)


@pytest.mark.slow
def test_devices_list_starts_one_worker_each(tmp_path):
    grid = write_grid(tmp_path, epochs=1, seeds=(0, 1), methods=("kd",))
    result = kdbench("run", grid, "--device", "cpu,cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    found = summaries(tmp_path / "results")
    assert len(found) == 4 and all(s["status"] == "done" and len(s["sessions"]) == 1 for s in found.values())
    pids = {s["sessions"][0]["pid"] for s in found.values()}
    assert len(pids) <= 2


@pytest.mark.slow
def test_torchrun_trains_with_ddp(tmp_path):
    grid = write_grid(tmp_path, epochs=1, seeds=(0,), methods=("kd", "dkd"))
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "kdbench", "run", str(grid), "--device", "cpu"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout
    assert "2 DDP processes" in result.stdout
    found = summaries(tmp_path / "results")
    assert len(found) == 4 and all(s["status"] == "done" and s["options"]["processes"] == 2 for s in found.values())
    assert_each_epoch_once(tmp_path / "results", 1)


@pytest.mark.slow
def test_submitit_local_executor(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    from kdbench.launch.executors import SlurmOptions, submit_slurm
    from kdbench.launch.spec import WorkerSpec

    grid = write_grid(tmp_path, epochs=1, seeds=(0,), methods=("kd",))
    monkeypatch.chdir(tmp_path)
    spec = WorkerSpec(grid_path=str(grid), results_dir=str(tmp_path / "results"), device="cpu")
    assert submit_slurm(spec, "tiny", 2, SlurmOptions(jobs=2, wait=True, cluster="local")) == [0, 0]
    found = summaries(tmp_path / "results")
    assert len(found) == 2 and all(s["status"] == "done" for s in found.values())


@pytest.mark.slow
def test_a_corrupt_teacher_fails_its_runs_and_the_grid_goes_on(tmp_path):
    grid = write_grid(tmp_path, epochs=1, seeds=(0,), methods=("kd",))
    (tmp_path / "teachers" / "t14.pth").write_bytes(b"not a checkpoint")
    result = kdbench("run", grid, "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 1
    found = summaries(tmp_path / "results")
    statuses = sorted((s["pair"], s["status"]) for s in found.values())
    assert statuses == [("resnet14->resnet8", "failed"), ("resnet8->resnet8", "done")]
    failed = next(s for s in found.values() if s["status"] == "failed")
    assert "t14.pth" in failed["failure"]["reason"]
    assert "FAILED" in result.stdout and "t14.pth" in result.stdout


def run_main(args, capsys):
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *needles):
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("kdbench: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.mark.parametrize("edit, needles", [
    (lambda g: g.update(schedul={"epochs": 1}), ["schedul", "did you mean 'schedule'"]),
    (lambda g: g["methods"].update(dkdd={}), ["methods.dkdd", "unknown method"]),
    (lambda g: g["pairs"][0].update(student="resnet9"), ["pairs[0].student", "resnet9"]),
    (lambda g: g.update(dataset={"name": "cifar1000"}), ["dataset", "cifar1000"]),
    (lambda g: g["methods"].update(kd={"temperature": "hot"}), ["methods.kd", "temperature"]),
])
def test_bad_grids_give_one_line_errors(tmp_path, capsys, edit, needles):
    path = write_grid(tmp_path)
    grid = yaml.safe_load(path.read_text())
    edit(grid)
    path.write_text(yaml.safe_dump(grid))
    code, _, err = run_main(["run", path, "--results-dir", tmp_path / "results"], capsys)
    assert_one_line_error(code, err, str(path), *needles)


def test_malformed_yaml(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\npairs: [\n  - {teacher: a\n")
    code, _, err = run_main(["run", path], capsys)
    assert_one_line_error(code, err, "bad.yaml", "line")


def test_missing_teacher_checkpoint(tmp_path, capsys):
    path = write_grid(tmp_path)
    (tmp_path / "teachers" / "t8.pth").unlink()
    code, _, err = run_main(["run", path, "--results-dir", tmp_path / "results", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "resnet8", "t8.pth", "not found")


def offline(*args, **kwargs):
    import urllib.error

    raise urllib.error.URLError("[Errno -2] Name or service not known")


def test_missing_reference_teacher_is_fetched_or_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("urllib.request.urlopen", offline)
    path = write_grid(tmp_path)
    grid = yaml.safe_load(path.read_text())
    grid["pairs"][0]["teacher"] = "resnet8"  # default source: the mdistiller release under the data root
    path.write_text(yaml.safe_dump(grid))
    code, _, err = run_main(["run", path, "--results-dir", tmp_path / "results", "--data-dir", tmp_path / "data",
                             "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "cifar_teachers.tar", str(tmp_path / "data"), "by hand")


def test_the_paper_grid_without_cifar100_stops_at_once(tmp_path, capsys, monkeypatch):
    from kdbench.data import cifar100

    monkeypatch.setattr(cifar100, "download_archive", offline)
    grid = Path(__file__).resolve().parents[1] / "experiments" / "cifar100_grid.yaml"
    started = time.monotonic()
    code, _, err = run_main(["run", grid, "--results-dir", tmp_path / "results", "--data-dir", tmp_path / "data",
                             "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "cifar-100-python.tar.gz", str(tmp_path / "data"))
    assert time.monotonic() - started < 10


def test_unwritable_results_folder(tmp_path, capsys):
    path = write_grid(tmp_path)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the results folder should be")
    code, _, err = run_main(["run", path, "--results-dir", blocker / "results", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "--results-dir", "not_a_folder")


def test_unknown_device(tmp_path, capsys):
    path = write_grid(tmp_path)
    code, _, err = run_main(["run", path, "--results-dir", tmp_path / "results", "--device", "tpu"], capsys)
    assert_one_line_error(code, err, "--device")


def test_dry_run_prints_the_plan(tmp_path, capsys):
    path = write_grid(tmp_path)
    code, out, err = run_main(["run", path, "--dry-run", "--results-dir", tmp_path / "results", "--device", "cpu"], capsys)
    assert code == 0, err
    assert "12 runs = 2 pairs × 3 method variants × 2 seeds, in 4 cohorts" in out
    assert "Estimated time left on cpu" in out
    assert not (tmp_path / "results" / "tiny" / "runs").exists()


def test_help_explains_every_option(capsys):
    for args in (["--help"], ["run", "--help"], ["report", "--help"], ["bench", "--help"], ["status", "--help"],
                 ["list", "--help"], ["teachers", "--help"], ["teachers", "fetch", "--help"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(args)
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert "usage: kdbench" in out
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    out = capsys.readouterr().out
    for option in ("--results-dir", "--data-dir", "--device", "--dry-run", "--executor", "--only", "--methods-dir"):
        assert option in out
