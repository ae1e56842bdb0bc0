"""The run layer end to end: a member's exception is its own, --retry-failed and --methods-dir reach
every launch path, exit codes, first-release results folders, KDBENCH_DEBUG."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdbench import methods
from kdbench.runs.faults import DEBUG_ENV
from kdbench.train.cohort import CohortSpec, train_cohort

from test_runner import ONE_THREAD, kdbench, summaries, write_grid  # noqa: F401 (kdbench: a fixture)
from test_train import SPEC, TEACHER, member, splits, strip, teacher_model  # noqa: F401 (a fixture)

V01 = Path(__file__).parent / "fixtures" / "results_v0_1"

# A user's method with a bug: it raises at epoch 2 while $BOOM is set.
BOOM = '''import os

import torch.nn.functional as F
from torch import nn

from kdbench.methods import register


@register("boom")
class Boom(nn.Module):
    """Cross-entropy, and a bug at epoch 2 while BOOM is set."""

    needs_teacher = False

    def forward(self, student_logits, teacher_logits, targets, *, epoch):
        if epoch == 2 and os.environ.get("BOOM"):
            return {"ce": self.missing_attribute}  # raises AttributeError
        return {"ce": F.cross_entropy(student_logits, targets)}
'''
RAISE_LINE = BOOM.splitlines().index('            return {"ce": self.missing_attribute}  # raises AttributeError') + 1


def plugin(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "boom.py").write_text(BOOM)
    return folder


def file_hashes(root: Path, skip: set[str]) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and not skip & set(p.relative_to(root).parts)}


def cli(*args, cwd: Path, boom: bool = False) -> subprocess.CompletedProcess:
    env = {**ONE_THREAD, "KDBENCH_HEARTBEAT_S": "1"}
    env.pop("BOOM", None)
    if boom:
        env["BOOM"] = "1"
    return subprocess.run([sys.executable, "-m", "kdbench", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env=env)


# ----- in one cohort -----------------------------------------------------------------------

class _RaisesAtEpochTwo(nn.Module):
    """Test loss that raises at epoch 2, step 2."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, student_logits, teacher_logits, targets, *, epoch):
        self.calls += 1
        if self.calls == 5 + 2:
            raise ValueError("a bug in a method")
        return {"ce": F.cross_entropy(student_logits, targets)}


@pytest.fixture
def raising_method():
    methods.register("raises_at_epoch_two")(_RaisesAtEpochTwo)
    yield "raises_at_epoch_two"
    methods.unregister("raises_at_epoch_two")


def test_an_exception_in_one_member_leaves_the_others_bit_for_bit(tmp_path, splits, raising_method):
    cohort = CohortSpec(dataset=SPEC, seed=0, teacher=TEACHER, teacher_model=teacher_model(), members=[
        member("kd", tmp_path / "kd"), member("bad", tmp_path / "bad", method=raising_method),
        member("dkd", tmp_path / "dkd")])
    with_bug = train_cohort(cohort, "cpu", data=splits)
    undisturbed = train_cohort(CohortSpec(dataset=SPEC, seed=0, teacher=TEACHER, teacher_model=teacher_model(),
                                          members=[member("kd", None), member("dkd", None)]), "cpu", data=splits)
    for a, b in zip([with_bug[0], with_bug[2]], undisturbed):
        assert a.status == b.status == "done" and strip(a.history) == strip(b.history)
        for key, value in a.model.state_dict().items():
            assert torch.equal(value, b.model.state_dict()[key]), key
    failed = with_bug[1]
    failure = failed.summary.failure
    assert failed.status == "failed" and failed.epochs_done == 1
    assert (failure.reason, failure.epoch, failure.step, failure.error_log) == (
        "ValueError: a bug in a method", 2, 2, "error.log")
    log = (tmp_path / "bad" / "error.log").read_text()
    assert "Traceback (most recent call last)" in log and "test_run_layer.py" in log and "a bug in a method" in log
    assert json.loads((tmp_path / "bad" / "summary.json").read_text())["failure"]["error_log"] == "error.log"
    assert (tmp_path / "bad" / "metrics.jsonl").read_text().count("\n") == 1  # epoch 1 is kept


def test_kdbench_debug_reraises(tmp_path, splits, raising_method, monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "1")
    cohort = CohortSpec(dataset=SPEC, seed=0, members=[member("bad", None, method=raising_method)])
    with pytest.raises(ValueError, match="a bug in a method"):
        train_cohort(cohort, "cpu", data=splits)


def test_a_method_that_cannot_be_built_fails_its_member_only(tmp_path, splits):
    class Broken(nn.Module):
        """Raises in __init__."""

        def __init__(self, temperature: float = 1.0):
            super().__init__()
            raise RuntimeError("cannot build")

    methods.register("broken_init")(Broken)
    try:
        results = train_cohort(CohortSpec(dataset=SPEC, seed=0, members=[
            member("broken", tmp_path / "broken", epochs=1, method="broken_init"),
            member("vanilla", tmp_path / "vanilla", epochs=1)]), "cpu", data=splits)
    finally:
        methods.unregister("broken_init")
    assert [r.status for r in results] == ["failed", "done"]
    assert results[0].summary.failure.reason == "RuntimeError: cannot build"


# ----- end to end --------------------------------------------------------------------------

@pytest.mark.slow
def test_a_plugin_bug_fails_one_run_and_retry_failed_retrains_only_it(tmp_path):
    methods_dir = plugin(tmp_path / "plugins")
    grid = write_grid(tmp_path, epochs=3, seeds=(0,), methods=("kd", "dkd", "boom"),
                      pairs=[{"teacher": {"arch": "resnet8", "checkpoint": "teachers/t8.pth"}, "student": "resnet8"}])
    first = cli("run", grid, "--device", "cpu", "--methods-dir", methods_dir, cwd=tmp_path, boom=True)
    assert first.returncode == 1, first.stderr + first.stdout
    found = {s["variant"]: s for s in summaries(tmp_path / "results").values()}
    assert {v: s["status"] for v, s in found.items()} == {"kd": "done", "dkd": "done", "boom": "failed"}
    failure = found["boom"]["failure"]
    assert failure["reason"] == "AttributeError: 'Boom' object has no attribute 'missing_attribute'"
    assert (failure["epoch"], failure["step"]) == (2, 1)
    log_path = tmp_path / "results" / "tiny" / "runs" / found["boom"]["run_id"] / "error.log"
    log = log_path.read_text()
    assert f'boom.py", line {RAISE_LINE}, in forward' in log
    assert f"traceback in {log_path.relative_to(tmp_path)}" in first.stdout

    # The healthy members' numbers equal those of the same runs trained without the faulty one.
    alone = write_grid(tmp_path / "alone", epochs=3, seeds=(0,), methods=("kd", "dkd"),
                       pairs=[{"teacher": {"arch": "resnet8", "checkpoint": "teachers/t8.pth"}, "student": "resnet8"}])
    shutil.copytree(tmp_path / "teachers", tmp_path / "alone" / "teachers", dirs_exist_ok=True)
    assert cli("run", alone, "--device", "cpu", cwd=tmp_path / "alone").returncode == 0
    for run_id, summary in summaries(tmp_path / "alone" / "results").items():
        assert summary["final_top1"] == found[summary["variant"]]["final_top1"] and run_id == found[summary["variant"]]["run_id"]
        a = [json.loads(x) for x in (tmp_path / "alone/results/tiny/runs" / run_id / "metrics.jsonl").read_text().splitlines()]
        b = [json.loads(x) for x in (tmp_path / "results/tiny/runs" / run_id / "metrics.jsonl").read_text().splitlines()]
        assert strip(a) == strip(b)

    status = cli("status", grid, "--methods-dir", methods_dir, cwd=tmp_path)
    assert status.returncode == 0 and "error.log" in status.stdout

    before = file_hashes(tmp_path / "results", skip={found["boom"]["run_id"], "locks"})
    retry = cli("run", grid, "--device", "cpu", "--methods-dir", methods_dir, "--retry-failed", cwd=tmp_path)
    assert retry.returncode == 0, retry.stderr + retry.stdout
    after = file_hashes(tmp_path / "results", skip={found["boom"]["run_id"], "locks"})
    assert after == before
    again = {s["variant"]: s for s in summaries(tmp_path / "results").values()}
    assert again["boom"]["status"] == "done" and not log_path.exists()


@pytest.mark.slow
@pytest.mark.parametrize("path", ["in-process", "devices", "slurm"])
def test_every_launch_path_honours_retry_failed_and_methods_dir(tmp_path, path):
    if path == "slurm":
        pytest.importorskip("submitit")
    methods_dir = plugin(tmp_path / "plugins")
    grid = write_grid(tmp_path, epochs=2, seeds=(0,), methods=("boom",),
                      pairs=[{"teacher": None, "student": "resnet8", "variants": ["boom"]}])
    assert cli("run", grid, "--device", "cpu", "--methods-dir", methods_dir, cwd=tmp_path, boom=True).returncode == 1
    launch = {"in-process": ["--device", "cpu"], "devices": ["--device", "cpu,cpu"],
              "slurm": ["--executor", "slurm", "--wait", "--slurm-jobs", "1", "--device", "cpu"]}[path]
    failing = cli("run", grid, *launch, "--methods-dir", methods_dir, "--retry-failed", cwd=tmp_path, boom=True)
    assert failing.returncode == 1, failing.stderr[-2000:] + failing.stdout  # retried (and failed again)
    (summary,) = summaries(tmp_path / "results").values()
    assert summary["status"] == "failed" and len(summary["sessions"]) == 1  # a fresh start, not a resume
    fixed = cli("run", grid, *launch, "--methods-dir", methods_dir, "--retry-failed", cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr[-2000:] + fixed.stdout
    (summary,) = summaries(tmp_path / "results").values()
    assert summary["status"] == "done"


@pytest.mark.slow
def test_first_release_results_load_and_resume(tmp_path):
    shutil.copytree(V01, tmp_path, dirs_exist_ok=True)
    status = cli("status", "grid.yaml", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    for state in ("done", "failed", "partial"):
        assert state in status.stdout
    report = cli("report", "--grid", "v01", "--no-plots", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    run = cli("run", "grid.yaml", "--device", "cpu", cwd=tmp_path)
    assert run.returncode == 1, run.stderr + run.stdout  # the first release's failed runs stay failed
    found = summaries(tmp_path / "results", "v01")
    first = {path.name for path in (V01 / "results" / "v01" / "runs").iterdir()}
    kd = {run_id: s for run_id, s in found.items() if s["variant"] == "kd"}
    # kd's runs keep their ids: the partial one resumes, the failed one stays failed, the new one
    # on the broken teacher fails.
    resumed = [s for s in kd.values() if s["seed"] == 1 and s["pair"] == "resnet8->resnet8"]
    assert len(resumed) == 1 and resumed[0]["status"] == "done" and len(resumed[0]["sessions"]) == 2
    assert sorted(s["status"] for s in kd.values()) == ["done"] * 2 + ["failed"] * 2
    # dkd's default warm-up (20 epochs, set for 240) now follows the 2-epoch schedule (schedule.epoch_hparams:
    # scale): its runs train something else, so under new ids and from the start; the first release's
    # dkd runs are left as they were.
    dkd_new = {run_id: s for run_id, s in found.items() if s["variant"] == "dkd" and run_id not in first}
    assert all(s["hparams"]["warmup"] == 1 and len(s["sessions"]) <= 1 for s in dkd_new.values())
    assert all(s["epoch_hparams"] == {"rule": "scale", "reference_epochs": 240, "scaled": {"warmup": [20, 1]}}
               for s in dkd_new.values())
    assert sorted(s["status"] for s in dkd_new.values()) == ["done"] * 2 + ["failed"] * 2
    assert all(found[run_id]["hparams"]["warmup"] == 20 for run_id in first if found[run_id]["variant"] == "dkd")


@pytest.mark.slow
def test_ddp_member_failure_stops_the_cohort_cleanly(tmp_path):
    methods_dir = plugin(tmp_path / "plugins")
    grid = write_grid(tmp_path, epochs=2, seeds=(0,), methods=("kd", "boom"),
                      pairs=[{"teacher": {"arch": "resnet8", "checkpoint": "teachers/t8.pth"}, "student": "resnet8"}])
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**ONE_THREAD, "BOOM": "1"}
    result = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "kdbench", "run", str(grid), "--device",
                             "cpu", "--methods-dir", str(methods_dir)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 1, result.stderr[-3000:] + result.stdout
    found = {s["variant"]: s for s in summaries(tmp_path / "results").values()}
    assert found["boom"]["status"] == "failed" and found["boom"]["failure"]["error_log"] == "error.log"
    assert found["kd"]["status"] == "running" and found["kd"]["epochs_done"] == 1  # partial, resumable
    rerun = cli("run", grid, "--device", "cpu", "--methods-dir", methods_dir, cwd=tmp_path)
    assert rerun.returncode == 1  # boom stays failed
    found = {s["variant"]: s for s in summaries(tmp_path / "results").values()}
    assert found["kd"]["status"] == "done" and found["boom"]["status"] == "failed"
