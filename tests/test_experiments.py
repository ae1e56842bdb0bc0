"""The shipped grids load, and expand into the runs and recipes they promise."""

from pathlib import Path

import pytest

from kdbench.grid import config, plan

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_grid_is_valid(path):
    grid = config.load_grid(path)
    assert grid.name == path.stem
    assert plan.plan(grid)


def test_the_paper_grid():
    grid = config.load_grid(EXPERIMENTS / "cifar100_grid.yaml")
    runs = plan.plan(grid)
    assert len({r.pair for r in runs}) == 14 and len({r.variant for r in runs}) == 18 and grid.seeds == [0, 1, 2]
    assert len(runs) == 14 * 18 * 3
    assert {r.variant for r in runs} == {"vanilla", "kd", "dkd", "normkd", "label_swap", "label_revision", "rld",
                                         "dist", "ttm", "wttm", "nkd", "wsld", "ctkd", "mlkd", "luminet", "crld",
                                         "sdd", "wkd_l"}
    assert len(plan.cohorts(runs)) == 6 * 3  # one cohort per teacher and seed
    beta = {r.pair: r.config["hparams"]["beta"] for r in runs if r.method == "dkd"}
    assert beta["resnet56->resnet20"] == beta["resnet110->resnet32"] == beta["resnet110->resnet20"] == 2.0
    assert beta["vgg13->vgg8"] == beta["wrn_40_2->wrn_16_2"] == beta["wrn_40_2->MobileNetV2"] == 6.0
    assert beta["resnet32x4->resnet8x4"] == beta["ResNet50->MobileNetV2"] == 8.0
    for run in runs:
        expected = 0.01 if run.student in ("MobileNetV2", "ShuffleV2") else 0.05
        assert run.config["schedule"]["lr"] == expected
        assert run.config["schedule"]["epochs"] == 240 and run.config["schedule"]["batch_size"] == 64
        assert run.config["teacher"]["checkpoint"] == "mdistiller"
    rld = next(r for r in runs if r.method == "rld").config["hparams"]
    assert rld["alpha_temperature"] == rld["temperature"] == 4.0
    same_family = {"resnet32x4->resnet8x4", "vgg13->vgg8", "wrn_40_2->wrn_40_1", "wrn_40_2->wrn_16_2",
                   "resnet56->resnet20", "resnet110->resnet32", "resnet110->resnet20"}
    scales = {r.pair: r.config["hparams"]["scales"] for r in runs if r.method == "sdd"}
    assert scales == {pair: [1, 2] if pair in same_family else [1, 2, 4] for pair in scales} and len(scales) == 14
    wkd = {(h["weight"], h["temperature"], h["decay_start"], h["decay_end"])
           for h in (r.config["hparams"] for r in runs if r.method == "wkd_l")}
    assert wkd == {(600.0, 8.0, 150, 240)}


def test_the_fashion_mnist_grid_trains_its_teacher():
    grid = config.load_grid(EXPERIMENTS / "fashion_mnist.yaml")
    runs = plan.plan(grid)
    assert len(runs) == 18 * 3 and all(r.config["teacher"]["checkpoint"] == "train" for r in runs)
    wkd = next(r for r in runs if r.method == "wkd_l").config["hparams"]
    assert (wkd["decay_start"], wkd["decay_end"]) == (4, 7)  # 150 and 240 of 240 epochs, scaled to 7


def test_the_imagenet_grid_is_the_reference_recipe():
    grid = config.load_grid(EXPERIMENTS / "imagenet_r34_r18.yaml")
    schedule = plan.plan(grid)[0].config["schedule"]
    assert schedule == {"epochs": 100, "batch_size": 512, "lr": 0.2, "momentum": 0.9, "weight_decay": 1e-4,
                        "milestones": [30, 60, 90], "lr_decay": 0.1}
    assert plan.plan(grid)[0].config["teacher"] == {"arch": "resnet34_imagenet", "checkpoint": "torchvision"}


def test_the_r50_mv1_grid_is_mdistillers_second_imagenet_setting():
    grid = config.load_grid(EXPERIMENTS / "imagenet_r50_mv1.yaml")
    runs = plan.plan(grid)
    assert runs[0].config["schedule"] == {"epochs": 100, "batch_size": 512, "lr": 0.2, "momentum": 0.9,
                                          "weight_decay": 1e-4, "milestones": [30, 60, 90], "lr_decay": 0.1}
    assert {r.pair for r in runs} == {"resnet50_imagenet->mobilenetv1_imagenet"}
    assert runs[0].config["teacher"] == {"arch": "resnet50_imagenet", "checkpoint": "torchvision"}
    hparams = {r.variant: r.config["hparams"] for r in runs}
    assert hparams["kd"]["temperature"] == 1.0 and hparams["kd"]["ce_weight"] == hparams["kd"]["kd_weight"] == 0.5
    assert (hparams["dkd"]["beta"], hparams["dkd"]["temperature"], hparams["dkd"]["warmup"]) == (2.0, 1.0, 1)
    assert (hparams["rld"]["beta"], hparams["rld"]["alpha_temperature"]) == (2.0, 1.0)
    assert (hparams["luminet"]["alpha"], hparams["luminet"]["temperature"]) == (2.0, 0.7)


def test_the_tiny_imagenet_grid_trains_its_teachers_under_the_cifar_recipe():
    grid = config.load_grid(EXPERIMENTS / "tiny_imagenet.yaml")
    runs = plan.plan(grid)
    assert {r.config["dataset"]["name"] for r in runs} == {"tiny_imagenet"}
    assert all(r.config["teacher"]["checkpoint"] == "train" for r in runs)
    assert {r.config["schedule"]["epochs"] for r in runs} == {240} and len(runs) == 5 * 16 * 3
    crld = next(r for r in runs if r.method == "crld").config["hparams"]
    assert (crld["temperature"], crld["within_weight"], crld["cross_weight"]) == (2.0, 4.0, 1.0)
