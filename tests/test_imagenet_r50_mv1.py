"""experiments/imagenet_r50_mv1.yaml trains for 2 steps on a JPEG look-alike of ImageNet's folders.

torchvision's ResNet-50 weights can't be downloaded here, so the test never takes that path:
`--set teachers.checkpoint=FILE` gives the pair a randomly initialised `resnet50_imagenet`
saved as a file (2 classes, like the look-alike), and everything else is the grid as shipped
except the sizes (batch 4 over 8 images: 2 steps), the folder loader's workers (0) and fp32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdbench import cli, models, results

pytestmark = pytest.mark.slow

GRID = Path(__file__).resolve().parents[1] / "experiments" / "imagenet_r50_mv1.yaml"


def jpeg_imagenet(root: Path, train_per_class: int = 4, val_per_class: int = 1) -> None:
    """`<root>/imagenet/{train,val}/<wnid>/*.JPEG`, two classes of random 80×96 JPEGs."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for wnid in ("n01440764", "n01443537"):
            folder = root / "imagenet" / split / wnid
            folder.mkdir(parents=True)
            for k in range(count):
                image = Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8))
                image.save(folder / f"{wnid}_{k}.JPEG", "JPEG")


def test_the_grid_runs_two_steps_of_every_method(tmp_path, capsys):
    jpeg_imagenet(tmp_path / "data")
    torch.manual_seed(0)
    teacher = tmp_path / "r50_random.pth"
    torch.save({"model": models.build("resnet50_imagenet", num_classes=2).state_dict()}, teacher)
    code = cli.main(["run", str(GRID), "--device", "cpu", "--data-dir", str(tmp_path / "data"), "--results-dir",
                     str(tmp_path / "results"), "--set", "name=r50_check", "--set", f"teachers.checkpoint={teacher}",
                     "--set", "dataset={name: imagenet, workers: 0}", "--set", "schedule.epochs=1",
                     "--set", "schedule.batch_size=4", "--set", "schedule.milestones=[]",
                     "--set", "options.precision=fp32", "--set", "options.eval_batch_size=2"])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    frame = results.load(tmp_path / "results", grid="r50_check")
    assert len(frame) == 9 and set(frame["status"]) == {"done"}
    assert set(frame["pair"]) == {"resnet50_imagenet->mobilenetv1_imagenet"}
    metrics = results.load_metrics(tmp_path / "results", grid="r50_check")
    assert set(metrics["epoch"]) == {1} and frame["teacher_sha256"].nunique() == 1
