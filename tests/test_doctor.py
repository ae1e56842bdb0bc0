"""`kdbench doctor`: the output format (✓/✗ lines, a fix under each ✗, a JSON last line), missing
data, teachers and extras as ✗ lines with exit code 0, the exit codes of a device that can't
train, and the quick checks end to end on the CPU (at the internal `--scale tiny`)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdbench import cli
from kdbench.doctor import command as doctor, checks as doctor_checks, installed as doctor_disk, quick as doctor_quick
from kdbench.data import cifar100
from kdbench.doctor.checks import Check
from kdbench.runs.faults import CohortFault
from kdbench.runs.teacher_files import RELEASE_RECORD

REPO = Path(__file__).resolve().parents[1]
MARKS = ("✓ ", "✗ ")
QUICK_NAMES = ["conformance", "train fp32", "train bf16", "resume", "compile", "bench"]


def run_cli(*args: str, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "KDBENCH_DATA"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "kdbench", "doctor", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=timeout)


def parse(stdout: str) -> tuple[list[tuple[str, bool, str | None]], dict]:
    """(name, ok, fix) of each check line, and the JSON of the last line; asserts the line format."""
    lines = stdout.rstrip("\n").split("\n")
    header, body, summary, last = lines[0], lines[1:-2], lines[-2], lines[-1]
    assert header.startswith("kdbench doctor ")
    assert " checks in " in summary and "exit code" in summary
    checks: list[tuple[str, bool, str | None]] = []
    for line in body:
        if line.startswith("    fix: "):
            assert checks and not checks[-1][1] and checks[-1][2] is None, f"a fix line not under a ✗ line: {line!r}"
            checks[-1] = (checks[-1][0], False, line[len("    fix: "):])
            continue
        assert line.startswith(MARKS), f"neither a check line nor a fix line: {line!r}"
        assert "\x1b[" not in line  # plain text off a terminal
        name = line[2:2 + doctor._Printer.NAME_WIDTH].strip()
        checks.append((name, line.startswith("✓"), None))
    for name, ok, fix in checks:
        assert ok or fix, f"✗ {name} has no fix"
    summary_json = json.loads(last)
    assert list(summary_json) == list(doctor.SUMMARY_KEYS)
    assert all(list(c) == list(doctor.CHECK_KEYS) for c in summary_json["checks"])
    assert [(c["name"], c["ok"], c["fix"]) for c in summary_json["checks"]] == checks
    return checks, summary_json


def by_name(checks) -> dict:
    return {c[0] if isinstance(c, tuple) else c.name: c for c in checks}


@pytest.mark.slow
def test_nothing_on_disk_gives_cross_lines_with_fixes_and_exit_code_0(tmp_path):
    result = run_cli("--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    checks, summary = parse(result.stdout)
    names = by_name(checks)
    for name in ("data root", "data cifar100", "data fashion_mnist", "data imagenet", "teachers"):
        assert names[name][1] is False, name
    assert names["data cifar100"][2] == ("downloaded on first use, or put cifar-100-python.tar.gz in data "
                                         "(at data/cifar-100-python)")
    assert names["teachers"][2].startswith("kdbench teachers fetch")
    for name in ("python", "torch", "device", "bf16", "fp16", "tf32", "compile", "data synthetic", "results"):
        assert name in names
    assert any(n.startswith("extra ") for n in names)
    assert summary["ok"] is False and summary["can_train"] is True and summary["exit_code"] == 0
    assert summary["device"] == "cpu" and summary["quick"] is False
    assert {"python", "torch", "torchvision", "kdbench"} <= set(summary["versions"])
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()  # nothing left behind


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_a_one_line_error(tmp_path):
    result = run_cli("--device", "cuda", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == "kdbench: error: --device cuda: CUDA is not available on this machine (use --device cpu)\n"


def _fake_data(root: Path) -> None:
    root.mkdir()
    (root / cifar100.ARCHIVE).write_bytes(b"not the official archive")
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / stem).write_bytes(b"unpacked")
    files = {}
    for arch, content in (("resnet8", b"eight"), ("resnet20", b"twenty"), ("resnet32", b"thirty-two")):
        path = root / "cifar_teachers" / f"{arch}_vanilla" / "ckpt_epoch_240.pth"
        path.parent.mkdir(parents=True)
        path.write_bytes(content)
        files[str(path.relative_to(root))] = hashlib.sha256(content).hexdigest()
    files["cifar_teachers/resnet20_vanilla/ckpt_epoch_240.pth"] = "0" * 64  # recorded otherwise: changed since
    del files["cifar_teachers/resnet32_vanilla/ckpt_epoch_240.pth"]  # recorded nowhere
    (root / RELEASE_RECORD).write_text(json.dumps({"archive": {"sha256": "x"}, "files": files}))


def _run(tmp_path: Path, **kwargs) -> doctor.Report:
    return doctor.run(torch.device("cpu"), quick=False, data_root=tmp_path / "data", data_source="from --data-dir",
                      results=tmp_path / "results", **kwargs)


def test_md5_and_sha256_checks_of_what_is_on_disk(tmp_path):
    _fake_data(tmp_path / "data")
    checks = by_name(_run(tmp_path).checks)
    cifar = checks["data cifar100"]
    assert not cifar.ok and "MD5" in cifar.detail and cifar.fix.startswith(f"delete {tmp_path / 'data' / cifar100.ARCHIVE}")
    fashion = checks["data fashion_mnist"]
    assert fashion.ok and "no official checksum" in fashion.detail
    assert checks["teachers"].ok and "3 in" in checks["teachers"].detail
    assert checks["teacher resnet8"].ok and RELEASE_RECORD in checks["teacher resnet8"].detail
    assert not checks["teacher resnet20"].ok and "differs from 0000000000000000…" in checks["teacher resnet20"].detail
    assert not checks["teacher resnet32"].ok and checks["teacher resnet32"].fix.startswith("kdbench teachers fetch")
    assert not checks["teachers manifest"].ok and checks["teachers manifest"].fix.startswith("kdbench teachers eval")
    assert checks["data root"].ok and checks["results"].ok


def test_the_manifest_confirms_a_teacher_and_gives_its_accuracy(tmp_path):
    _fake_data(tmp_path / "data")
    folder = tmp_path / "data" / "cifar_teachers"
    path = folder / "resnet32_vanilla" / "ckpt_epoch_240.pth"
    (folder / "teachers.json").write_text(json.dumps({"dataset": "cifar100", "device": "cpu", "measured_at": "now",
        "teachers": [{"arch": "resnet32", "path": str(path), "sha256": hashlib.sha256(b"thirty-two").hexdigest(),
                      "top1": 71.5}]}))
    checks = by_name(_run(tmp_path).checks)
    assert checks["teacher resnet32"].ok and checks["teacher resnet32"].detail.endswith("measured top-1 71.50")
    assert checks["teachers manifest"].ok


def test_a_missing_or_old_extra_is_a_cross_line_with_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setattr(doctor_disk, "extras", lambda: {
        "slurm": ["kdbench-no-such-package>=1.0"], "tensorboard": ["torch>=999"], "wandb": ["torch>=1.0"]})
    checks = by_name(_run(tmp_path).checks)
    assert not checks["extra slurm"].ok and "kdbench-no-such-package missing" in checks["extra slurm"].detail
    assert checks["extra slurm"].fix == f'pip install -e "{REPO}[slurm]"'
    assert not checks["extra tensorboard"].ok and "needs torch>=999" in checks["extra tensorboard"].detail
    assert checks["extra wandb"].ok and "(for options.log: [wandb])" in checks["extra wandb"].detail


def test_the_extras_are_those_of_pyproject():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert doctor_disk.extras() == project["optional-dependencies"]


def test_a_check_that_raises_is_a_cross_line_and_the_others_go_on(tmp_path, monkeypatch):
    def broken(root):
        raise RuntimeError("boom\nsecond line")
        yield  # pragma: no cover

    monkeypatch.setattr(doctor, "teacher_checks", broken)
    report = _run(tmp_path)
    teachers = by_name(report.checks)["teachers"]
    assert not teachers.ok and teachers.detail == "the check itself failed: RuntimeError: boom second line"
    assert "results" in by_name(report.checks) and report.exit_code == 0


def test_a_device_that_cannot_train_exits_1_and_skips_the_training_checks(tmp_path, monkeypatch, capsys):
    def cannot_train(device):
        yield doctor_checks.failed("device", "cpu: a training step fails: RuntimeError: no", "fix it", critical=True)

    monkeypatch.setattr(doctor, "device_check", cannot_train)
    monkeypatch.setattr(doctor_quick, "conformance_check", lambda: iter([doctor_checks.passed("conformance", "fine")]))
    code = cli.main(["doctor", "--device", "cpu", "--quick", "--scale", "tiny", "--data-dir", str(tmp_path / "data"),
                     "--results-dir", str(tmp_path / "results")])
    assert code == 1
    checks, summary = parse(capsys.readouterr().out)
    assert summary["can_train"] is False and summary["exit_code"] == 1
    names = by_name(checks)
    assert names["device"] == ("device", False, "fix it")
    for name in QUICK_NAMES[1:]:
        assert names[name] == (name, False, "fix the device first")


def test_long_details_stay_on_one_line(capsys):
    doctor._Printer().check(Check("bench", False, "x" * 400, "y" * 300))
    assert capsys.readouterr().out == f"✗ {'bench'.ljust(doctor._Printer.NAME_WIDTH)} {'x' * 400}\n    fix: {'y' * 300}\n"


def test_a_cohort_that_fails_in_a_precision_is_a_cross_line_critical_only_in_fp32(tmp_path, monkeypatch):
    def fault(*args, **kwargs):
        raise CohortFault("teacher resnet8: KdbenchError: options.precision: expected fp32 or bf16, got 'fp16'")

    monkeypatch.setattr(doctor_quick, "train_cohort", fault)
    for precision, critical in (("fp16", False), ("fp32", True)):
        (check,) = doctor_quick.train_check(torch.device("cpu"), precision, doctor_quick.TINY, tmp_path)
        assert check.name == f"train {precision}" and not check.ok and check.critical is critical
        assert "expected fp32 or bf16, got 'fp16'" in check.detail and check.fix


def test_train_fp16_reports_in_the_same_format(tmp_path):
    """fp16 on the CPU (the path GPUs without bf16 take): a ✓ line, or a ✗ line with its reason and fix."""
    (check,) = doctor_quick.train_check(torch.device("cpu"), "fp16", doctor_quick.TINY, tmp_path)
    assert check.name == "train fp16" and not check.critical
    assert (check.ok and "test top-1" in check.detail) or (not check.ok and check.fix)


def test_resume_in_deterministic_mode_as_on_a_gpu(tmp_path):
    """The GPU's resume check (options.deterministic, ops recorded) on the CPU: same line, PyTorch's defaults after."""
    (check,) = doctor_quick.resume_check(torch.device("cpu"), doctor_quick.TINY, tmp_path, deterministic=True)
    assert check.ok, check.detail
    assert "resumed in deterministic mode: all " in check.detail and check.detail.endswith("equal bit for bit")
    assert not torch.are_deterministic_algorithms_enabled()


def test_state_difference_reports_which_tensors_differ_and_by_how_much():
    a = {"model": {"w": torch.zeros(3), "n": torch.tensor(2)}, "method": {"theta": torch.tensor(1.0)},
         "optimizer": {"state": {0: {"momentum_buffer": torch.ones(2)}}}}
    b = {"model": {"w": torch.tensor([0.0, 0.5, 0.0]), "n": torch.tensor(2)}, "method": {"theta": torch.tensor(1.0)},
         "optimizer": {"state": {0: {"momentum_buffer": torch.ones(2)}}}}
    assert doctor_quick.state_difference(a, a) == ([], 4, 0.0)
    assert doctor_quick.state_difference(a, b) == (["model.w"], 4, 0.5)


@pytest.mark.slow
def test_quick_on_the_cpu_end_to_end(tmp_path):
    """--quick --device cpu at the internal --scale tiny: smaller cohort, data and bench, and a conv-BN-linear
    model compiled instead of resnet8; everything else as --quick runs it."""
    result = run_cli("--device", "cpu", "--quick", "--scale", "tiny", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    checks, summary = parse(result.stdout)
    names = [c[0] for c in checks]
    assert names[-len(QUICK_NAMES):] == QUICK_NAMES
    failed_quick = [c for c in checks if c[0] in QUICK_NAMES and not c[1]]
    assert failed_quick == [], failed_quick
    assert summary["quick"] is True and summary["can_train"] is True
    resume = next(c for c in summary["checks"] if c["name"] == "resume")
    assert "equal bit for bit" in resume["detail"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # every file went to a temporary folder
