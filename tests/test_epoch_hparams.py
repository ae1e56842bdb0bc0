"""The recipe around the loss: epoch-counting hyper-parameters and milestones follow the
schedule by a stated rule, and `run` says what the rule changed."""

from __future__ import annotations

import copy
import subprocess
import sys

import pandas as pd
import pytest

from kdbench import KdbenchError
from kdbench.launch import commands
from kdbench.grid import plan
from kdbench.grid.config import parse_grid
from kdbench.grid.recipe import merge_schedule, scale_epochs, scaled_milestones
from kdbench.report.prepare import epoch_hparam_notes

SRC = "grid.yaml"


def grid(**changes) -> dict:
    obj = {
        "name": "g",
        "dataset": {"name": "synthetic", "num_classes": 10},
        "schedule": {"epochs": 7, "milestones": [4, 6]},
        "pairs": [{"teacher": "resnet20", "student": "resnet8"}],
        "methods": {"kd": {}, "dkd": {}, "rld": {}, "ctkd": {}},
    }
    obj.update(copy.deepcopy(changes))
    return obj


def configs(obj: dict) -> dict[str, dict]:
    return {f"{r.pair}|{r.variant}": r.config for r in plan.plan(parse_grid(obj, SRC))}


def error(obj: dict) -> str:
    with pytest.raises(KdbenchError) as exc:
        parse_grid(obj, SRC)
    assert "\n" not in str(exc.value)
    return str(exc.value)


# -- the rule ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value,epochs,expected", [
    (20, 240, 20), (20, 7, 1), (20, 120, 10), (20, 30, 3), (20, 18, 2), (10, 7, 1), (0, 7, 0), (1, 480, 2),
    (30, 36, 5),  # 30·36/240 = 4.5: halves go up
])
def test_scale_epochs_keeps_the_reference_shape(value, epochs, expected):
    assert scale_epochs(value, epochs) == expected


@pytest.mark.parametrize("epochs,expected", [
    (240, [150, 180, 210]), (100, [63, 75, 88]), (7, [4, 5, 6]), (5, [3, 4]), (2, [1]), (1, []),
])
def test_milestones_not_set_are_the_reference_ones_scaled(epochs, expected):
    assert scaled_milestones(epochs) == expected


def test_merged_schedules_derive_milestones_only_when_no_layer_sets_them():
    base = {"epochs": 240, "milestones": [150, 180, 210]}
    assert merge_schedule(base, {"epochs": 8}, derived_milestones=True)["milestones"] == [5, 6, 7]
    assert merge_schedule(base, {"epochs": 8}, derived_milestones=False)["milestones"] == [150, 180, 210]
    assert merge_schedule(base, {"epochs": 8, "milestones": [2]}, derived_milestones=True)["milestones"] == [2]


# -- what runs train --------------------------------------------------------------------------


def test_default_epoch_counts_are_scaled_to_the_schedule_and_recorded():
    runs = {r.variant: r for r in plan.plan(parse_grid(grid(), SRC))}
    assert runs["dkd"].config["hparams"]["warmup"] == 1
    assert runs["rld"].config["hparams"]["warmup"] == 1
    assert runs["ctkd"].config["hparams"]["lambda_epochs"] == 1
    assert runs["dkd"].epoch_hparams == {"rule": "scale", "reference_epochs": 240, "scaled": {"warmup": [20, 1]}}
    assert runs["kd"].epoch_hparams is None  # no hyper-parameter of KD counts epochs
    assert runs["dkd"].summary_fields("g")["epoch_hparams"] == runs["dkd"].epoch_hparams


def test_keep_uses_the_reference_values():
    runs = {r.variant: r for r in plan.plan(parse_grid(grid(schedule={"epochs": 7, "epoch_hparams": "keep"}), SRC))}
    assert runs["dkd"].config["hparams"]["warmup"] == 20
    assert runs["dkd"].epoch_hparams == {"rule": "keep", "reference_epochs": 240, "scaled": {}}


def test_values_the_grid_sets_are_used_as_given():
    obj = grid(methods={"dkd": {"warmup": 20}, "rld": {"warmup": [3, 5]}},
               pairs=[{"teacher": "resnet20", "student": "resnet8", "methods": {"dkd": {"warmup": 2}}},
                      {"teacher": "resnet32", "student": "resnet8"}])
    got = {k: c["hparams"]["warmup"] for k, c in configs(obj).items()}
    assert got == {"resnet20->resnet8|dkd": 2, "resnet20->resnet8|rld(warmup=3)": 3,
                   "resnet20->resnet8|rld(warmup=5)": 5, "resnet32->resnet8|dkd": 20,
                   "resnet32->resnet8|rld(warmup=3)": 3, "resnet32->resnet8|rld(warmup=5)": 5}


def test_at_the_reference_length_nothing_changes():
    runs = plan.plan(parse_grid(grid(schedule={}), SRC))
    assert {r.variant: r.config["hparams"].get("warmup") for r in runs} == {"kd": None, "dkd": 20, "rld": 20,
                                                                             "ctkd": None}
    assert all(r.config["schedule"]["milestones"] == [150, 180, 210] for r in runs)
    assert all(not (r.epoch_hparams or {}).get("scaled") for r in runs)


def test_a_scaled_default_and_the_reference_value_are_two_variants_of_a_short_grid():
    obj = grid(methods={"dkd": {}, "dkd_w20": {"method": "dkd", "warmup": 20}})
    assert {k: c["hparams"]["warmup"] for k, c in configs(obj).items()} == {"resnet20->resnet8|dkd": 1,
                                                                            "resnet20->resnet8|dkd_w20": 20}
    at_240 = grid(schedule={}, methods={"dkd": {}, "dkd_w20": {"method": "dkd", "warmup": 20}})
    assert error(at_240) == ("grid.yaml: methods: variants 'dkd' and 'dkd_w20' are identical (dkd with the same "
                             "hyper-parameters); remove one")


def test_a_pair_or_teacher_with_its_own_epochs_gets_milestones_scaled_to_them():
    obj = grid(schedule={"epochs": 7}, teachers={"checkpoint": "train", "schedule": {"epochs": 15}},
               pairs=[{"teacher": "resnet20", "student": "resnet8"},
                      {"teacher": "resnet32", "student": "resnet8", "schedule": {"epochs": 14}}])
    g = parse_grid(obj, SRC)
    assert g.schedule["milestones"] == [4, 5, 6]
    assert g.pairs[0].teacher.schedule["milestones"] == [9, 11, 13]
    by_pair = {r.pair: r.config for r in plan.plan(g) if r.variant == "dkd"}
    assert by_pair["resnet20->resnet8"]["schedule"]["milestones"] == [4, 5, 6]
    assert by_pair["resnet32->resnet8"]["schedule"]["milestones"] == [9, 11, 12]  # 8.75, 10.5, 12.25
    assert by_pair["resnet32->resnet8"]["hparams"]["warmup"] == 1  # round(20·14/240 = 1.17)


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("obj,message", [
    (grid(methods={"dkd": {"warmup": -1}}), "grid.yaml: methods.dkd.warmup: expected int >= 0, got -1 (int)"),
    (grid(methods={"dkd": {"warmup": 2.5}}), "grid.yaml: methods.dkd.warmup: expected int >= 0, got 2.5 (float)"),
    (grid(methods={"dkd": {"warmup": [1, -2]}}), "grid.yaml: methods.dkd.warmup[1]: expected int >= 0, got -2 (int)"),
    (grid(schedule={"epochs": 7, "epoch_hparams": "scaled"}),
     "grid.yaml: schedule.epoch_hparams: expected scale or keep, got 'scaled' (str) (did you mean 'scale'?)"),
    (grid(pairs=[{"teacher": "resnet20", "student": "resnet8", "schedule": {"epoch_hparams": "keep"}}]),
     "grid.yaml: pairs[0].schedule.epoch_hparams: the rule for epoch-counting hyper-parameters is set once, in "
     "the grid's schedule (schedule.epoch_hparams)"),
])
def test_bad_epoch_settings_are_one_line_errors(obj, message):
    assert error(obj) == message


# -- what run and run --dry-run say -----------------------------------------------------------


def test_run_says_what_the_rule_changed_and_warns_of_what_exceeds_the_schedule():
    obj = grid(methods={"kd": {}, "dkd": {}, "rld": {"warmup": 20}, "ctkd": {}},
               schedule={"epochs": 7, "milestones": [4, 7, 9]})
    g = parse_grid(obj, SRC)
    assert plan.protocol_lines(g, plan.plan(g)) == [
        "dkd: warmup 20 → 1 for 7 epochs (set for 240; schedule.epoch_hparams: scale)",
        "ctkd: lambda_epochs 10 → 1 for 7 epochs (set for 240; schedule.epoch_hparams: scale)",
        "warning: rld: warmup 20 exceeds the 7-epoch schedule, so it never completes (set by the grid)",
        "warning: schedule: milestones 7, 9 lie at or past the last epoch (7): the LR never decays there",
    ]
    kept = parse_grid(grid(schedule={"epochs": 7, "milestones": [4, 6], "epoch_hparams": "keep"}), SRC)
    assert plan.protocol_lines(kept, plan.plan(kept)) == [
        "warning: dkd: warmup 20 exceeds the 7-epoch schedule, so it never completes (set by the grid or kept by "
        "schedule.epoch_hparams: keep)",
        "warning: rld: warmup 20 exceeds the 7-epoch schedule, so it never completes (set by the grid or kept by "
        "schedule.epoch_hparams: keep)",
        "warning: ctkd: lambda_epochs 10 exceeds the 7-epoch schedule, so it never completes (set by the grid or "
        "kept by schedule.epoch_hparams: keep)",
    ]


def test_precision_lines(monkeypatch):
    from kdbench.train import precision

    g = parse_grid(grid(schedule={"epochs": 240}, options={"precision": "bf16"}), SRC)
    monkeypatch.setattr(precision, "cpu_instructions", lambda kind: [])
    assert commands.recipe_lines(g, plan.plan(g), ["cpu"]) == [
        "warning: options.precision: bf16 is emulated on cpu (this CPU has no AVX512-BF16 or AMX), several times "
        "slower than fp32; use precision: fp32 (or auto, which picks fp32 here)"]
    auto = parse_grid(grid(schedule={"epochs": 240}, options={"precision": "auto"}), SRC)
    assert commands.recipe_lines(auto, plan.plan(auto), ["cpu"]) == ["options.precision: auto → fp32 on cpu"]
    monkeypatch.setattr(precision, "cpu_instructions", lambda kind: ["AVX512-BF16"] if kind == "bf16" else [])
    assert commands.recipe_lines(auto, plan.plan(auto), ["cpu"]) == ["options.precision: auto → bf16 on cpu"]
    assert commands.recipe_lines(g, plan.plan(g), ["cpu"]) == []


def test_auto_precision_resolves_per_device(monkeypatch):
    from kdbench.train import precision

    monkeypatch.setattr(precision, "cpu_instructions", lambda kind: [])
    assert precision.resolve("cpu", "auto") == "fp32" and precision.resolve("cpu", "bf16") == "bf16"
    monkeypatch.setattr(precision, "cpu_instructions", lambda kind: ["AMX"] if kind == "bf16" else [])
    assert precision.resolve("cpu", "auto") == "bf16"
    with pytest.raises(KdbenchError) as exc:
        precision.resolve("meta", "auto")
    assert str(exc.value) == ("options.precision: auto does not know which precisions meta runs natively; "
                              "set fp32, bf16 or fp16")


@pytest.mark.slow
def test_the_dry_run_prints_the_lines(tmp_path):
    (tmp_path / "grid.yaml").write_text(
        "name: g\ndataset: {name: synthetic, num_classes: 10, train_size: 64, test_size: 32, image_size: 16}\n"
        "schedule: {epochs: 3}\npairs: [{teacher: null, student: resnet8, variants: [dkd_free]}]\n"
        "methods: {dkd_free: {method: vanilla}}\n")
    (tmp_path / "grid2.yaml").write_text(
        "name: g2\ndataset: {name: synthetic, num_classes: 10, train_size: 64, test_size: 32, image_size: 16}\n"
        "schedule: {epochs: 3, milestones: [1, 3]}\npairs: [{teacher: resnet8, student: resnet8}]\n"
        "methods: {dkd: {}}\n")
    out = subprocess.run([sys.executable, "-m", "kdbench", "run", "grid2.yaml", "--dry-run", "--device", "cpu"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "dkd: warmup 20 → 1 for 3 epochs (set for 240; schedule.epoch_hparams: scale)" in out.stdout
    assert "warning: schedule: milestones 3 lie at or past the last epoch (3): the LR never decays there" in out.stdout


# -- the report's note ------------------------------------------------------------------------


def test_the_report_says_which_rule_the_runs_used():
    done = pd.DataFrame({
        "variant": ["dkd", "dkd", "kd", "rld"],
        "epochs": [7, 7, 7, 7],
        "epoch_hparams": [{"rule": "scale", "reference_epochs": 240, "scaled": {"warmup": [20, 1]}}] * 2
        + [None, {"rule": "scale", "reference_epochs": 240, "scaled": {"warmup": [20, 1]}}],
    })
    assert epoch_hparam_notes(done) == [
        "Hyper-parameters that count epochs (warm-ups, ramps) were scaled to the schedule (`schedule.epoch_hparams: "
        "scale`: v → max(1, round(v·E/240)), 0 stays 0; values the grid sets are used as given): dkd warmup 20 → 1 "
        "(7 epochs); rld warmup 20 → 1 (7 epochs)."]
    kept = done.assign(epoch_hparams=[{"rule": "keep", "scaled": {}}] * 4)
    assert epoch_hparam_notes(kept) == [
        "Hyper-parameters that count epochs (warm-ups, ramps) were used as set for the reference schedule "
        "(`schedule.epoch_hparams: keep`): no value changed."]
    assert epoch_hparam_notes(done.drop(columns="epoch_hparams")) == []
