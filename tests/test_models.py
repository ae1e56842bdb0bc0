"""The model zoo: names, reference fingerprints, golden logits, small inputs, counts."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdbench import models
from kdbench.errors import KdbenchError
from kdbench.models.fingerprint import golden_logits, key_digest

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "models" / "reference.json").read_text())

CIFAR = [
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4", "resnet32x4",
    "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19",
    "MobileNetV2", "ShuffleV1", "ShuffleV2", "ResNet18", "ResNet50",
]
IMAGENET = ["resnet18_imagenet", "resnet34_imagenet", "resnet50_imagenet", "mobilenetv1_imagenet"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Batch-2 forwards gain nothing from threads, and spinning threads cost a lot on a busy CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_architecture_is_registered():
    assert sorted(models.available("cifar")) == sorted(CIFAR)
    assert sorted(models.available("imagenet")) == sorted(IMAGENET)
    assert set(FIXTURES) == set(CIFAR) | {"mobilenetv1_imagenet"}


@pytest.mark.parametrize("alias,name", [
    ("mobilenetv2", "MobileNetV2"), ("mobile_half", "MobileNetV2"), ("shufflev1", "ShuffleV1"),
    ("shufflev2", "ShuffleV2"), ("resnet18", "ResNet18"), ("resnet50", "ResNet50"), ("vgg13_bn", "vgg13"),
    ("resnet8x4", "resnet8x4"), ("resnet18_imagenet", "resnet18_imagenet"),
])
def test_canonical_resolves_aliases(alias, name):
    assert models.canonical(alias) == name


def test_unknown_name_suggests_the_closest():
    with pytest.raises(KdbenchError, match=r"unknown model 'resnet8x5' \(did you mean 'resnet8x4'\?\)"):
        models.build("resnet8x5")


@pytest.mark.parametrize("kwargs", [{"num_classes": 0}, {"in_channels": -1}, {"num_classes": 2.5}])
def test_build_rejects_bad_sizes(kwargs):
    with pytest.raises(KdbenchError, match="must be a positive integer"):
        models.build("resnet8", **kwargs)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_keys_shapes_and_params_match_the_reference(name):
    expected = FIXTURES[name]
    with torch.device("meta"):  # shapes only: instant
        model = models.build(name, num_classes=expected["num_classes"])
    state = model.state_dict()
    assert models.count_parameters(model) == expected["params"]
    assert len(state) == expected["num_keys"]
    assert key_digest(state) == expected["digest"]


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_golden_logits_match_the_reference(name):
    expected = FIXTURES[name]
    with torch.device("meta"):  # skip the initialisation: every tensor is overwritten
        model = models.build(name, num_classes=expected["num_classes"])
    logits = golden_logits(model.to_empty(device="cpu"), 2, 3, expected["image_size"])
    head = torch.tensor(expected["logits_head"], dtype=torch.float64)
    torch.testing.assert_close(logits[:, : head.shape[1]], head, rtol=1e-4, atol=1e-4)
    assert logits.sum().item() == pytest.approx(expected["logits_sum"], abs=2e-3)
    assert logits.abs().sum().item() == pytest.approx(expected["logits_abs_sum"], abs=2e-3)


@pytest.mark.parametrize("name", CIFAR)
def test_one_channel_28x28_forward(name):
    model = models.build(name, num_classes=10, in_channels=1)
    with torch.no_grad():
        out = model(torch.randn(2, 1, 28, 28))  # train mode: BN uses batch statistics
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_forward_returns_logits_only():
    out = models.build("resnet8")(torch.zeros(1, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 100)


def test_imagenet_models():
    with torch.device("meta"):
        assert models.count_parameters(models.build("resnet18_imagenet", num_classes=1000)) == 11_689_512
        assert models.count_parameters(models.build("resnet50_imagenet", num_classes=1000)) == 25_557_032
        model = models.build("resnet34_imagenet", num_classes=10, in_channels=1)
    assert tuple(model.conv1.weight.shape) == (64, 1, 7, 7) and model.fc.out_features == 10
    small = models.build("mobilenetv1_imagenet", num_classes=10)
    assert small(torch.zeros(1, 3, 64, 64)).shape == (1, 10)


def test_importing_the_zoo_does_not_import_torchvision():
    code = "import sys, kdbench.models; assert 'torchvision' not in sys.modules, 'torchvision imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name,macs", [
    ("resnet8x4", 177_071_104), ("resnet32x4", 1_083_040_768), ("wrn_40_2", 327_610_880),
    ("vgg13", 284_936_192), ("resnet56", 125_753_600), ("resnet20", 40_818_944),
])
def test_count_macs_matches_the_analytic_counts(name, macs):
    with torch.device("meta"):
        model = models.build(name)
    assert models.count_macs(model, 3, 32) == macs


def test_count_macs_leaves_the_model_as_it_was():
    model = models.build("resnet8").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    models.count_macs(model, 3, 32)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_count_macs_counts_grouped_convs_and_linears():
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1, groups=2), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 5 * 5, 3))
    assert models.count_macs(model, 4, 5) == 8 * 5 * 5 * 2 * 9 + 200 * 3


def test_summary_rows():
    rows = {r["name"]: r for r in models.summary_rows()}
    assert set(rows) == set(CIFAR)
    assert rows["resnet8x4"] == {"name": "resnet8x4", "params": 1_233_540, "macs": 177_071_104}
    assert rows["MobileNetV2"]["params"] == 812_836
    mnist = {r["name"]: r for r in models.summary_rows(num_classes=10, in_channels=1, image_size=28)}
    assert mnist["resnet8"]["params"] < rows["resnet8"]["params"]


def test_register_adds_a_model(monkeypatch):
    from kdbench.models import zoo

    monkeypatch.setattr(zoo, "_registry", copy.deepcopy(zoo._registry))  # keep the real zoo unchanged

    @models.register("tiny_test_net", aliases=("tinytestnet",))
    def tiny(num_classes: int = 100, in_channels: int = 3) -> torch.nn.Module:
        """A one-layer test model."""
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))

    assert models.canonical("tinytestnet") == "tiny_test_net"
    assert models.build("tiny_test_net", num_classes=3)(torch.zeros(1, 1, 2, 2)).shape == (1, 3)
    assert "tiny_test_net" in models.available("cifar")


def test_register_left_the_real_zoo_alone():
    assert "tiny_test_net" not in models.available()


# ---------------------------------------------------------------- feature map and classifier


@pytest.mark.parametrize("name", models.available())
def test_classifier_of_the_pooled_final_feature_map_is_the_model(name):
    from kdbench.models.layers import global_pool

    torch.manual_seed(0)
    model = models.build(name, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fmap = models.features(model, x)
        assert fmap.dim() == 4 and torch.equal(models.classifier(model)(global_pool(fmap)), model(x))
        last = models.last_stage(model, x)
    assert last.dim() == 4 and last.shape[0] == 2


def test_last_stage_is_before_the_head_of_wrn_mobilenetv2_and_shufflenetv2():
    import torch.nn.functional as F

    x = torch.randn(2, 3, 32, 32)
    heads = {"wrn_16_1": lambda m, z: F.relu(m.bn1(z)), "MobileNetV2": lambda m, z: m.conv2(z),
             "ShuffleV2": lambda m, z: F.relu(m.bn2(m.conv2(z)))}
    with torch.no_grad():
        for name in ["resnet8", "wrn_16_1", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2", "ResNet18"]:
            model = models.build(name, num_classes=10).eval()
            last = models.last_stage(model, x)
            expected = heads[name](model, last) if name in heads else last
            assert torch.equal(models.features(model, x), expected), name


def test_a_model_without_the_split_is_named():
    with pytest.raises(KdbenchError, match="^model Linear has no split into a feature map and a classifier"):
        models.features(torch.nn.Linear(2, 2), torch.zeros(1, 2))


def test_region_logits_pool_to_4x4_then_take_2x2_and_1x1_from_that_pool():
    from kdbench.models.regions import region_logits

    head = torch.nn.Identity()
    fmap = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    regions = region_logits(head, fmap, (1, 2, 4))  # (B, C, 1 + 4 + 16)
    assert regions.shape == (2, 3, 21)
    blocks4 = fmap.reshape(2, 3, 4, 2, 4, 2).mean(dim=(3, 5)).flatten(2)
    blocks2 = fmap.reshape(2, 3, 2, 4, 2, 4).mean(dim=(3, 5)).flatten(2)
    torch.testing.assert_close(regions[:, :, 0], fmap.mean(dim=(2, 3)), rtol=0, atol=1e-14)
    torch.testing.assert_close(regions[:, :, 1:5], blocks2, rtol=0, atol=1e-14)
    torch.testing.assert_close(regions[:, :, 5:], blocks4, rtol=0, atol=1e-14)
    # A 7x7 map: the 4x4 pool's cells overlap, so its 2x2 pool is not the map's own 2x2 pool.
    odd = torch.randn(1, 1, 7, 7, dtype=torch.float64)
    coarse = region_logits(head, odd, (1, 2))[:, :, 1:]
    assert not torch.allclose(coarse, torch.nn.functional.adaptive_avg_pool2d(odd, 2).flatten(2))
    # A 2x2 map at scale 4: each cell repeated in a 2x2 block, as AdaptiveAvgPool2d does.
    small = torch.randn(1, 1, 2, 2, dtype=torch.float64)
    fine = region_logits(head, small, (1, 2, 4))[0, 0, 5:].reshape(4, 4)
    assert torch.equal(fine, small[0, 0].repeat_interleave(2, 0).repeat_interleave(2, 1))


def test_region_forward_gives_the_model_logits_and_one_region_tensor_per_scale_list():
    model = models.build("resnet8", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, (two, four) = models.RegionForward(model)(x, ((1, 2), (1, 2, 4)))
        assert torch.equal(logits, model(x)) and two.shape == (2, 10, 5) and four.shape == (2, 10, 21)
        assert torch.equal(two, four[:, :, :5])


def test_a_map_without_local_regions_is_refused_in_one_line():
    from kdbench.models.regions import map_size, require_poolable

    assert map_size("resnet8", 3, 32) == (8, 8) and map_size("MobileNetV2", 3, 32) == (2, 2)
    require_poolable("resnet32x4->MobileNetV2", "sdd", (1, 2, 4), {"student": "MobileNetV2"}, 3, 32)  # official
    with pytest.raises(KdbenchError) as exc:
        require_poolable("resnet8->resnet18_imagenet", "sdd", (1, 2), {"student": "resnet18_imagenet",
                                                                       "teacher": "resnet8"}, 3, 32)
    assert str(exc.value) == ("pair resnet8->resnet18_imagenet: method sdd pools scales [1, 2], but the student "
                              "resnet18_imagenet's final feature map is 1×1 on 32×32 images: no local regions; use "
                              "scales [1] or a larger input")
    require_poolable("resnet8->resnet18_imagenet", "sdd", (1,), {"student": "resnet18_imagenet"}, 3, 32)
