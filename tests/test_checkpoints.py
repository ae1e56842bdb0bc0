"""Checkpoint formats, strict teacher loading and one-line errors."""

from __future__ import annotations

import argparse
import hashlib
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from kdbench import models
from kdbench.errors import KdbenchError


def _source(name: str = "resnet8", num_classes: int = 10) -> torch.nn.Module:
    """A model with non-default weights and BN statistics."""
    torch.manual_seed(0)
    model = models.build(name, num_classes=num_classes)
    for key, value in model.state_dict().items():
        if key.endswith("running_var"):
            value.uniform_(0.5, 1.5)
        elif key.endswith("running_mean"):
            value.normal_(0, 0.1)
    return model.eval()


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.linspace(-1, 1, 2 * 3 * 32 * 32).reshape(2, 3, 32, 32))


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def source() -> torch.nn.Module:
    return _source()


def _formats(state: dict) -> dict:
    teacher_junk = {"module.teacher.conv1.weight": torch.zeros(1), "module.teacher.fc.bias": torch.zeros(1)}
    return {
        # The CRD / RepDistiller teacher file: numpy accuracy and the argparse options ride along.
        "release": {"model": state, "epoch": 240, "accuracy": np.float64(72.34),
                    "optimizer": {"state": {}, "param_groups": [{"lr": 0.05}]},
                    "opt": argparse.Namespace(model="resnet8", learning_rate=0.05)},
        "bare": state,
        "dataparallel": {f"module.{k}": v for k, v in state.items()},
        "distiller": {"model": {**{f"module.student.{k}": v for k, v in state.items()}, **teacher_junk},
                      "epoch": 240, "best_acc": 71.0},
        "state_dict_key": {"state_dict": state},
        "no_num_batches_tracked": {"model": {k: v for k, v in state.items() if "num_batches_tracked" not in k}},
    }


@pytest.mark.parametrize("layout", ["release", "bare", "dataparallel", "distiller", "state_dict_key",
                                    "no_num_batches_tracked"])
def test_checkpoint_layouts_load_strictly(tmp_path, source, layout):
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save(_formats(source.state_dict())[layout], path)
    teacher = models.load_teacher("resnet8", path, num_classes=10)
    torch.testing.assert_close(_logits(teacher), _logits(source), rtol=0, atol=1e-6)


def test_legacy_serialization_loads(tmp_path, source):
    path = tmp_path / "old.pth"
    torch.save({"model": source.state_dict(), "opt": argparse.Namespace(lr=0.1)}, path,
               _use_new_zipfile_serialization=False)
    torch.testing.assert_close(_logits(models.load_teacher("resnet8", path, num_classes=10)), _logits(source))


def test_load_teacher_is_eval_and_frozen(tmp_path, source):
    path = tmp_path / "t.pth"
    torch.save({"model": source.state_dict()}, path)
    teacher = models.load_teacher("resnet8", path, num_classes=10)
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())


def test_load_teacher_leaves_the_global_rng_alone(tmp_path, source):
    path = tmp_path / "t.pth"
    torch.save({"model": source.state_dict()}, path)
    state = torch.random.get_rng_state()
    models.load_teacher("resnet8", path, num_classes=10)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_load_state_dict_file_and_sha256(tmp_path, source):
    path = tmp_path / "t.pth"
    torch.save({"model": source.state_dict(), "epoch": 3}, path)
    state = models.load_state_dict_file(path)
    assert list(state) == list(source.state_dict())
    import hashlib

    assert models.sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_missing_file_says_where_it_was_expected(tmp_path):
    with pytest.raises(KdbenchError) as e:
        models.load_teacher("resnet8", tmp_path / "cifar_teachers" / "resnet8_vanilla" / "ckpt_epoch_240.pth")
    assert "checkpoint not found: expected a file at" in _one_line(e)
    assert "resnet8_vanilla" in str(e.value)


def test_a_text_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello\n" * 100)
    with pytest.raises(KdbenchError) as e:
        models.load_teacher("resnet8", path)
    assert _one_line(e).startswith(f"{path}: not a PyTorch checkpoint")


def test_a_pickle_without_a_state_dict_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "list.pth"
    torch.save({"epoch": 3, "accuracy": 1.0}, path)
    with pytest.raises(KdbenchError) as e:
        models.load_state_dict_file(path)
    assert _one_line(e).startswith(f"{path}: not a model checkpoint") and "[epoch, accuracy]" in str(e.value)


class Unsafe:
    """A class weights_only refuses, like arbitrary code in a pickle."""


def test_unsafe_pickles_are_refused(tmp_path, source):
    path = tmp_path / "unsafe.pth"
    torch.save({"model": source.state_dict(), "extra": Unsafe()}, path)
    with pytest.raises(KdbenchError) as e:
        models.load_teacher("resnet8", path, num_classes=10)
    assert "refused to unpickle it safely" in _one_line(e) and "Unsafe" in str(e.value)


def test_wrong_architecture_names_the_keys(tmp_path, source):
    path = tmp_path / "resnet8.pth"
    torch.save({"model": source.state_dict()}, path)
    with pytest.raises(KdbenchError) as e:
        models.load_teacher("resnet14", path, num_classes=10)
    message = _one_line(e)
    assert f"{path}: not a checkpoint for 'resnet14'" in message
    assert "(it looks like a 'resnet8' checkpoint)" in message
    assert "missing keys [layer1.1.conv1.weight" in message


def test_wrong_family_lists_unexpected_keys(tmp_path, source):
    path = tmp_path / "resnet8.pth"
    torch.save({"model": source.state_dict()}, path)
    with pytest.raises(KdbenchError) as e:
        models.load_teacher("wrn_16_1", path, num_classes=10)
    message = _one_line(e)
    assert "missing keys [block1.layer.0.bn1.weight" in message and "unexpected keys [layer1.0.conv1.weight" in message


def test_shape_mismatch_is_reported(tmp_path, source):
    path = tmp_path / "resnet8.pth"
    torch.save({"model": source.state_dict()}, path)
    with pytest.raises(KdbenchError) as e:
        models.load_teacher("resnet8", path, num_classes=100)
    assert "2 shape mismatches: fc.weight (10, 64) in the checkpoint vs (100, 64) in the model; fc.bias" in _one_line(e)


def test_torchvision_weights_offline_fail_in_one_line(monkeypatch):
    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(KdbenchError) as e:
        models.load_teacher("resnet18_imagenet", "torchvision", num_classes=1000)
    message = _one_line(e)
    assert "could not download torchvision weights for resnet18_imagenet from https://" in message
    assert "put that file at" in message


def test_torchvision_weights_need_1000_classes():
    with pytest.raises(KdbenchError, match="1000 classes"):
        models.load_teacher("resnet18_imagenet", "torchvision", num_classes=100)
    with pytest.raises(KdbenchError, match="exist only for"):
        models.load_teacher("resnet8", "torchvision")


def test_torchvision_teachers_are_pinned_to_the_v1_weights():
    """The ImageNet teachers of mdistiller's published results: torchvision's V1 weights, named
    explicitly (ResNet-50's DEFAULT is IMAGENET1K_V2, 80.9%, a newer recipe)."""
    from kdbench.models.imagenet import TORCHVISION, torchvision_weights, torchvision_weights_name

    table = {name: (torchvision_weights_name(name), Path(torchvision_weights(name).url).name,
                    torchvision_weights(name).meta["_metrics"]["ImageNet-1K"]["acc@1"]) for name in TORCHVISION}
    assert table == {
        "resnet18_imagenet": ("ResNet18_Weights.IMAGENET1K_V1", "resnet18-f37072fd.pth", 69.758),
        "resnet34_imagenet": ("ResNet34_Weights.IMAGENET1K_V1", "resnet34-b627a593.pth", 73.314),
        "resnet50_imagenet": ("ResNet50_Weights.IMAGENET1K_V1", "resnet50-0676ba61.pth", 76.13),
    }


def test_a_torchvision_teacher_names_its_weights_and_hashes_their_file(tmp_path, monkeypatch):
    from kdbench.runs.records import Layout
    from kdbench.runs.teacher_files import TeacherRef, verify_teacher

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    ref = TeacherRef.from_config({"arch": "resnet50_imagenet", "checkpoint": "torchvision"}, tmp_path,
                                 Layout(tmp_path / "results", "g"))
    assert ref.checkpoint == "torchvision ResNet50_Weights.IMAGENET1K_V1"
    assert ref.label == "resnet50_imagenet (torchvision ResNet50_Weights.IMAGENET1K_V1)"
    assert ref.path == tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    ref.path.parent.mkdir(parents=True)
    ref.path.write_bytes(b"weights")  # what the run records is the SHA-256 of the file it loads
    assert verify_teacher(Layout(tmp_path / "results", "g"), ref) == hashlib.sha256(b"weights").hexdigest()
    assert models.fetch_torchvision_weights("resnet50_imagenet") == ref.path  # present: not downloaded again
