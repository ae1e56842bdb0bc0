"""`kdbench bench`: every registered method runs in a cohort (multi-view ones with their views),
`--methods all`, `--precision auto`. No test asserts a speed."""

import math

import pytest

from kdbench import cli, methods
from kdbench.tools import bench
from kdbench.train.precision import resolve

TINY = dict(batch_size=4, steps=1, warmup_steps=0, device="cpu", num_classes=5, image_size=8, gemm_peak=False)


def test_every_registered_method_trains_one_step_in_a_cohort():
    names = methods.available()
    result = bench.measure("resnet8", "resnet8", names, separate=False, **TINY)
    assert result["methods"] == names and result["cohort_size"] == len(names)
    assert math.isfinite(result["student_images_per_s"]) and result["student_images_per_s"] > 0
    multi = {n: list(methods.views_of(methods.method_class(n))) for n in names if methods.views_of(methods.method_class(n))}
    assert multi and result["views"] == multi  # mlkd at least, with its weak and strong views
    assert "gemm_peak_tflops" not in result


def test_a_multi_view_method_one_at_a_time_gets_the_teacher_on_each_of_its_views():
    setup = bench._Setup("resnet8", "resnet8", ["mlkd", "vanilla"], bench.devices.parse("cpu"),
                         bench.Options(precision="fp32"), 4, 5, 3, 8)
    assert set(setup.images) == {"weak", "strong"} and setup.teacher_views == ["weak", "strong"]
    assert set(setup.teacher_logits(setup.teacher_views)) == {"weak", "strong"}
    mlkd, vanilla = setup.trainees
    setup.separate_step(mlkd)
    setup.separate_step(vanilla)
    assert mlkd.term_sums is not None and vanilla.term_sums is not None
    result = bench.measure("resnet8", "resnet8", ["mlkd", "kd"], separate=True, precision="auto", **TINY)
    assert result["speedup"] > 0 and result["precision"] == resolve("cpu", "auto")
    assert result["precision_requested"] == "auto"


def test_methods_all_and_precision_auto_on_the_command_line():
    args = cli.build_parser().parse_args(["bench", "--methods", "all", "--precision", "auto"])
    assert bench.method_list(args.methods) == methods.available()
    assert args.precision == "auto"
    assert bench.method_list(" kd, dkd ,") == ["kd", "dkd"]
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["bench", "--precision", "fp8"])
