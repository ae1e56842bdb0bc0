"""`protocol: own`: a variant trained under its method's official schedules (MLKD's)."""

from pathlib import Path

import pytest

from kdbench import methods
from kdbench.grid import config, plan
from kdbench.grid.config import parse_grid
from kdbench.errors import KdbenchError

SRC = "grid.yaml"
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def grid(pairs, methods_section) -> dict:
    return {"name": "g", "dataset": "cifar100", "pairs": pairs, "methods": methods_section}


def test_own_protocol_takes_the_methods_schedule_for_the_pair():
    g = parse_grid(grid([{"teacher": "resnet32x4", "student": "ShuffleV2"}],
                        {"kd": {}, "mlkd": {}, "mlkd_own": {"method": "mlkd", "protocol": "own"}}), SRC)
    runs = {r.variant: r for r in plan.plan(g)}
    own = runs["mlkd_own"].config
    assert own["protocol"] == "own" and own["schedule"]["epochs"] == 960 and own["schedule"]["lr"] == 0.01
    assert own["schedule"]["milestones"] == [150, 180, 210]
    assert "protocol" not in runs["mlkd"].config and runs["mlkd"].config["schedule"]["epochs"] == 240
    assert runs["mlkd_own"].cohort_key != runs["mlkd"].cohort_key  # other epochs: another cohort
    assert methods.own_schedules("mlkd")["resnet32x4->resnet8x4"]["lr"] == 0.025


@pytest.mark.parametrize("body,pairs,message", [
    ({"method": "mlkd", "protocol": "mine"}, None,
     "grid.yaml: methods.x.protocol: expected grid or own, got 'mine' (str)"),
    ({"method": "kd", "protocol": "own"}, None,
     "grid.yaml: methods.x.protocol: method 'kd' declares no schedule of its own (own_schedules); expected grid"),
    ({"method": "mlkd", "protocol": "own"}, [{"teacher": "resnet110", "student": "resnet20"}],
     "grid.yaml: pairs[0]: variant 'x' trains under mlkd's own schedules, which have none for resnet110->resnet20; "
     "known: resnet32x4->resnet8x4, vgg13->vgg8, wrn_40_2->wrn_40_1, wrn_40_2->wrn_16_2, resnet56->resnet20, "
     "resnet110->resnet32, ResNet50->MobileNetV2, vgg13->MobileNetV2, wrn_40_2->ShuffleV1, resnet32x4->ShuffleV1, "
     "resnet32x4->ShuffleV2"),
])
def test_bad_protocols_are_one_line_errors(body, pairs, message):
    with pytest.raises(KdbenchError) as e:
        parse_grid(grid(pairs or [{"teacher": "resnet32x4", "student": "resnet8x4"}], {"x": body}), SRC)
    assert str(e.value) == message


def test_the_same_method_under_both_protocols_is_two_variants():
    g = parse_grid(grid([{"teacher": "resnet56", "student": "resnet20"}],
                        {"mlkd": {}, "mlkd_own": {"method": "mlkd", "protocol": "own"}}), SRC)
    assert [v.protocol for v in g.variants] == ["grid", "own"]


def test_the_shipped_own_protocol_grid():
    g = config.load_grid(EXPERIMENTS / "cifar100_mlkd_own.yaml")
    runs = plan.plan(g)
    assert len(runs) == 10 * 3 * 3
    own = [r for r in runs if r.variant == "mlkd_own"]
    assert {r.config["schedule"]["epochs"] for r in own} == {240, 480, 960}


def test_reports_mark_own_protocol_rows(tmp_path):
    from _report_fake import write_run
    from kdbench.report import prepare
    from kdbench import results

    for seed in (0, 1):
        write_run(tmp_path, "g", variant="kd", pair="resnet56->resnet20", seed=seed, final_top1=70.0 + seed)
        write_run(tmp_path, "g", variant="mlkd_own", pair="resnet56->resnet20", seed=seed, final_top1=71.0 + seed,
                  protocol="own")
    prep = prepare.prepare(results.load(tmp_path), baseline="kd")
    assert prep.protocols == {"mlkd_own": prepare.OWN_PROTOCOL}
