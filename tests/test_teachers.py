"""Teachers: the eval manifest, training from scratch, and the trained-teacher cache of a grid."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from kdbench import cli, models
from kdbench.teachers import command as teachers

SPEC = {"name": "synthetic", "num_classes": 10, "train_size": 96, "test_size": 64, "image_size": 16, "channels": 3}


def test_eval_writes_a_manifest_with_sha256_and_measured_accuracy(tmp_path, capsys):
    folder = tmp_path / "data" / "cifar_teachers"
    for arch in ("resnet8", "resnet14"):
        path = folder / f"{arch}_vanilla" / "ckpt_epoch_240.pth"
        path.parent.mkdir(parents=True)
        torch.save({"model": models.build(arch, num_classes=10).state_dict()}, path)
    (folder / "not_a_model_vanilla").mkdir()
    manifest = teachers.evaluate_teachers(folder, SPEC, tmp_path / "data", "cpu")
    assert [e["arch"] for e in manifest["teachers"]] == ["resnet14", "resnet8"]
    for entry in manifest["teachers"]:
        assert entry["sha256"] == models.sha256_file(entry["path"]) and 0 <= entry["top1"] <= 100
    assert json.loads((folder / "teachers.json").read_text()) == manifest


def test_eval_without_teachers_says_to_fetch(tmp_path, capsys):
    code = cli.main(["teachers", "eval", "--data-dir", str(tmp_path), "--dataset", "synthetic", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "kdbench teachers fetch" in err and err.count("\n") == 1


def test_train_writes_the_release_format(tmp_path, capsys):
    out = tmp_path / "t" / "ckpt.pth"
    code = cli.main(["teachers", "train", "resnet8", "--dataset", "synthetic", "--epochs", "1", "--device", "cpu",
                     "--data-dir", str(tmp_path), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    teacher = models.load_teacher("resnet8", out, num_classes=10)
    assert not teacher.training
    assert json.loads((out.parent / "summary.json").read_text())["status"] == "done"


@pytest.mark.slow
def test_a_grid_trains_its_teacher_once_and_reuses_it(tmp_path):
    grid = {
        "name": "cached", "dataset": SPEC, "seeds": [0, 1], "schedule": {"epochs": 1},
        "teachers": {"checkpoint": "train", "schedule": {"epochs": 1}},
        "pairs": [{"teacher": "resnet14", "student": "resnet8"}, {"teacher": "resnet14", "student": "resnet20"}],
        "methods": {"kd": {}},
    }
    path = tmp_path / "cached.yaml"
    path.write_text(yaml.safe_dump(grid))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = lambda: subprocess.run([sys.executable, "-m", "kdbench", "run", str(path), "--device", "cpu"],  # noqa: E731
                                 cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    first = run()
    assert first.returncode == 0, first.stderr + first.stdout
    cache = [p for p in (tmp_path / "results" / "teachers").iterdir() if p.name not in ("locks", "known")]
    assert len(cache) == 1 and (cache[0] / "teacher.pth").is_file()
    assert first.stdout.count("teacher resnet14 trained") == 1
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "results" / "cached" / "runs").glob("*/summary.json")]
    assert len(summaries) == 4
    assert {s["teacher_sha256"] for s in summaries} == {models.sha256_file(cache[0] / "teacher.pth")}
    grid["methods"]["dkd"] = {}  # new runs, same teacher: no retraining
    path.write_text(yaml.safe_dump(grid))
    second = run()
    assert second.returncode == 0, second.stderr
    assert "teacher resnet14 trained" not in second.stdout
    assert len(list((tmp_path / "results" / "cached" / "runs").glob("*/summary.json"))) == 8


@pytest.mark.parametrize("args", [["--json"], []])
def test_bench_reports_cohort_and_separate_throughput(capsys, args):
    code = cli.main(["bench", "--teacher", "resnet8", "--student", "resnet8", "--methods", "kd,dkd", "--steps", "1",
                     "--warmup-steps", "0", "--batch-size", "8", "--device", "cpu", *args])
    out = capsys.readouterr().out
    assert code == 0
    if args:
        result = json.loads(out)
        for key in ("student_images_per_s", "separate_student_images_per_s", "cohort_size", "device", "precision",
                    "cohort_tflops", "gemm_peak_tflops", "share_of_gemm_peak"):
            assert key in result
        assert result["cohort_size"] == 2 and result["device"] == "cpu" and result["precision"] == "fp32"
        assert result["share_of_gemm_peak"] == pytest.approx(result["cohort_tflops"] / result["gemm_peak_tflops"])
    else:
        assert "cohort (one teacher forward per view)" in out and "one at a time" in out
        assert "GFLOP/s (from the models' MACs)" in out and "% of this device's fp32 matmul peak" in out


def test_bench_trains_in_fp16_with_a_scaler(capsys):
    code = cli.main(["bench", "--teacher", "resnet8", "--student", "resnet8", "--methods", "kd", "--steps", "2",
                     "--warmup-steps", "0", "--batch-size", "8", "--device", "cpu", "--precision", "fp16",
                     "--no-separate", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["precision"] == "fp16" and result["student_images_per_s"] > 0
