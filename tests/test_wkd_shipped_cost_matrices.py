"""WKD-L's cost matrices as kdbench builds them, against the two the authors ship for CIFAR-100
(JiamingLv/WKD 214cf88 `wkd_cost_matrix/cifar100/{resnet32x4,wrn_40_2}/linear_cka.pth`).

It needs what this repository does not hold: CIFAR-100 and mdistiller's teachers under the
data root (`$KDBENCH_DATA`, else `./data`: `cifar-100-python/` and
`cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth`, as `kdbench teachers fetch` puts them), and
a checkout of the WKD repository (`$KDBENCH_WKD_CHECKOUT`). Without them the test skips and says
which is missing. Run by hand it prints the differences:

    python tests/test_wkd_shipped_cost_matrices.py --wkd WKD_CHECKOUT [--data DATA] [--device cuda]

The official files were made in float32 on a GPU (tools/generate_cost_matrix.py) from the
teachers' last feature maps on the training set in dataset order; kdbench computes in float64,
so the two should agree to float32's precision, about 1e-5.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import torch

from kdbench import data, methods, models
from kdbench.runs.teacher_files import release_path
from kdbench.train import artifacts

TEACHERS = ("resnet32x4", "wrn_40_2")
TOLERANCE = 1e-4


def shipped(wkd: Path, arch: str) -> Path:
    return wkd / "wkd_cost_matrix" / "cifar100" / arch / "linear_cka.pth"


def missing(wkd: Path | None, root: Path) -> str | None:
    """Why the comparison cannot run here, or None."""
    if wkd is None or not all(shipped(wkd, arch).is_file() for arch in TEACHERS):
        return "set KDBENCH_WKD_CHECKOUT to a checkout of JiamingLv/WKD at 214cf88 (its wkd_cost_matrix/cifar100/)"
    if not (root / "cifar-100-python").is_dir() and not (root / "cifar-100-python.tar.gz").is_file():
        return f"CIFAR-100 is not under the data root {root} (cifar-100-python/ or its archive)"
    absent = [arch for arch in TEACHERS if not release_path(root, arch).is_file()]
    if absent:
        return f"mdistiller's teachers {', '.join(absent)} are not under {root}/cifar_teachers (kdbench teachers fetch)"
    return None


def difference(wkd: Path, root: Path, arch: str, device: str) -> float:
    """max |kdbench's D − the shipped D| for teacher `arch`."""
    splits = data.build("cifar100", root=root, device=device, seed=0, batch_size=64, eval_batch_size=500)
    teacher = models.load_teacher(arch, release_path(root, arch), num_classes=100).to(device)
    inputs = artifacts.inputs(teacher, arch, splits.train, 100, batch_size=500)
    ours = methods.method_class("wkd_l").build_teacher_artifact(inputs).cpu()
    theirs = torch.load(shipped(wkd, arch), map_location="cpu", weights_only=True).double()
    return (ours - theirs).abs().max().item()


def _paths() -> tuple[Path | None, Path]:
    wkd = os.environ.get("KDBENCH_WKD_CHECKOUT")
    return (Path(wkd) if wkd else None), Path(os.environ.get("KDBENCH_DATA", "data"))


@pytest.mark.slow
@pytest.mark.parametrize("arch", TEACHERS)
def test_kdbench_rebuilds_the_shipped_cost_matrix(arch):
    wkd, root = _paths()
    reason = missing(wkd, root)
    if reason:
        pytest.skip(reason)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert difference(wkd, root, arch, device) < TOLERANCE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wkd", type=Path, required=True, help="checkout of JiamingLv/WKD at 214cf88")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("KDBENCH_DATA", "data")))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    reason = missing(args.wkd, args.data)
    if reason:
        raise SystemExit(f"cannot compare: {reason}")
    for arch in TEACHERS:
        print(f"{arch}: max |kdbench − shipped| = {difference(args.wkd, args.data, arch, args.device):.2e}")


if __name__ == "__main__":
    main()
