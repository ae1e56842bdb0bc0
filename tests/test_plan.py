"""Grid → runs → cohorts: expansion order, run_id stability, the LR rule, cohort grouping."""

from __future__ import annotations

import copy
import hashlib
import json

import pandas as pd
import pytest

from kdbench.grid.config import parse_grid
from kdbench.grid.recipe import lr_for
from kdbench.grid.plan import (
    Run, canonical_json, cohorts, config_hash, describe_plan, plan, teacher_training_config,
    teacher_training_id,
)

def base() -> dict:
    return {
        "name": "g",
        "dataset": {"name": "synthetic", "num_classes": 10},
        "seeds": [0, 1],
        "schedule": {"epochs": 3},
        "pairs": [
            {"teacher": "resnet32x4", "student": "resnet8x4"},
            {"teacher": "resnet56", "student": "resnet20", "methods": {"dkd": {"beta": 2}}},
            {"teacher": "vgg13", "student": "MobileNetV2"},
        ],
        "methods": {
            "vanilla": {},
            "kd": {"temperature": 4},
            "dkd": {"beta": 8},
            "rld": {"beta": [2, 4, 8], "alpha_temperature": 4},
        },
    }


def runs_of(obj: dict) -> list[Run]:
    return plan(parse_grid(obj, "grid.yaml"))


def ids(obj: dict) -> set[str]:
    return {r.run_id for r in runs_of(obj)}


# -- expansion ---------------------------------------------------------------------------------------


def test_counts_with_sweeps():
    runs = runs_of(base())
    assert len(runs) == 3 * (3 + 3) * 2  # pairs × (3 variants + a 3-way sweep) × seeds
    assert len({r.run_id for r in runs}) == len(runs)


def test_order_is_pairs_then_variants_then_seeds():
    runs = runs_of(base())
    head = [(r.pair, r.variant, r.seed) for r in runs[:8]]
    assert head == [
        ("resnet32x4->resnet8x4", "vanilla", 0), ("resnet32x4->resnet8x4", "vanilla", 1),
        ("resnet32x4->resnet8x4", "kd", 0), ("resnet32x4->resnet8x4", "kd", 1),
        ("resnet32x4->resnet8x4", "dkd", 0), ("resnet32x4->resnet8x4", "dkd", 1),
        ("resnet32x4->resnet8x4", "rld(beta=2)", 0), ("resnet32x4->resnet8x4", "rld(beta=2)", 1),
    ]
    assert [r.pair for r in runs[::12]] == ["resnet32x4->resnet8x4", "resnet56->resnet20", "vgg13->MobileNetV2"]


def test_run_fields_and_config():
    run = next(r for r in runs_of(base()) if r.pair == "resnet32x4->resnet8x4" and r.variant == "rld(beta=4)")
    assert (run.method, run.student, run.teacher_arch, run.seed) == ("rld", "resnet8x4", "resnet32x4", 0)
    config = run.config
    assert set(config) == {"dataset", "teacher", "student", "method", "hparams", "seed", "schedule", "options"}
    assert config["teacher"] == {"arch": "resnet32x4", "checkpoint": "mdistiller"}
    assert config["hparams"]["beta"] == 4.0 and config["hparams"]["alpha_temperature"] == 4.0
    # Defaults filled in; the warm-up of 20 epochs (set for 240) scaled to the 3-epoch schedule.
    assert config["hparams"]["warmup"] == 1
    assert run.epoch_hparams == {"rule": "scale", "reference_epochs": 240, "scaled": {"warmup": [20, 1]}}
    assert config["dataset"]["name"] == "synthetic" and config["dataset"]["val_size"] == 0
    # Milestones not set: the reference ones scaled to 3 epochs (150, 180, 210 → 2, 2, 3), those
    # that coincide merged and those at or past the last epoch left out.
    assert config["schedule"] == {"epochs": 3, "batch_size": 64, "lr": 0.05, "momentum": 0.9,
                                  "weight_decay": 5e-4, "milestones": [2], "lr_decay": 0.1}
    assert config["options"] == {"precision": "fp32", "channels_last": False, "compile": False}
    assert json.loads(json.dumps(config)) == config  # plain JSON: what config.yaml holds


def test_run_id_is_the_hash_of_the_canonical_config():
    run = runs_of(base())[0]
    text = json.dumps(run.config, sort_keys=True, separators=(",", ":"))
    assert canonical_json(run.config) == text
    assert run.run_id == hashlib.sha256(text.encode()).hexdigest()[:12] == config_hash(run.config)


def test_per_pair_override_applied():
    runs = runs_of(base())
    betas = {r.pair: r.config["hparams"]["beta"] for r in runs if r.variant == "dkd"}
    assert betas == {"resnet32x4->resnet8x4": 8.0, "resnet56->resnet20": 2.0, "vgg13->MobileNetV2": 8.0}


def test_pair_variants_restrict_runs():
    obj = base()
    obj["pairs"].append({"teacher": None, "student": "resnet8", "variants": ["vanilla"]})
    runs = [r for r in runs_of(obj) if r.student == "resnet8"]
    assert [(r.pair, r.variant, r.teacher_arch) for r in runs] == [("->resnet8", "vanilla", None)] * 2
    assert runs[0].config["teacher"] is None


# -- the LR rule ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("student, lr", [
    ("MobileNetV2", 0.01), ("ShuffleV1", 0.01), ("ShuffleV2", 0.01),
    ("resnet8x4", 0.05), ("wrn_16_2", 0.05), ("vgg8", 0.05),
])
def test_auto_lr_rule(student, lr):
    assert lr_for(student, "auto") == lr


def test_explicit_lr_wins():
    assert lr_for("MobileNetV2", 0.2) == 0.2


def test_auto_lr_in_runs_and_pair_schedule_override():
    obj = base()
    obj["pairs"][0]["schedule"] = {"lr": 0.02}
    lrs = {r.pair: r.config["schedule"]["lr"] for r in runs_of(obj)}
    assert lrs == {"resnet32x4->resnet8x4": 0.02, "resnet56->resnet20": 0.05, "vgg13->MobileNetV2": 0.01}


def edited(**edit) -> dict:
    obj = copy.deepcopy(base())
    for key, value in edit.items():
        obj[key] = value
    return obj


@pytest.mark.parametrize("change", [
    "add_seed", "add_method", "add_pair", "rename_grid", "rename_label", "eval_options", "data_root",
    "explicit_default_hparam", "auto_lr_written_out", "reorder",
])
def test_run_ids_survive_unrelated_edits(change):
    before = {(r.pair, r.variant.replace("vanilla", "baseline"), r.seed): r.run_id for r in runs_of(base())}
    obj = copy.deepcopy(base())
    if change == "add_seed":
        obj["seeds"].append(7)
    elif change == "add_method":
        obj["methods"]["normkd"] = {}
    elif change == "add_pair":
        obj["pairs"].insert(0, {"teacher": "resnet110", "student": "resnet32"})
    elif change == "rename_grid":
        obj["name"] = "other"
    elif change == "rename_label":
        obj["methods"] = {("baseline" if k == "vanilla" else k): (v if k != "vanilla" else {"method": "vanilla"})
                          for k, v in obj["methods"].items()}
    elif change == "eval_options":
        obj["options"] = {"eval_batch_size": 128, "max_cohort_size": 2}
    elif change == "data_root":
        obj["data"] = {"root": "/elsewhere"}
    elif change == "explicit_default_hparam":
        obj["methods"]["kd"]["ce_weight"] = 0.1
    elif change == "auto_lr_written_out":
        obj["schedule"]["lr"] = 0.05
        obj["pairs"][2]["schedule"] = {"lr": 0.01}
    elif change == "reorder":
        obj["pairs"].reverse()
        obj["methods"] = dict(reversed(list(obj["methods"].items())))
    after = {(r.pair, r.variant.replace("vanilla", "baseline"), r.seed): r.run_id for r in runs_of(obj)}
    assert all(after[key] == run_id for key, run_id in before.items())


@pytest.mark.parametrize("change", ["hparam", "epochs", "precision", "dataset", "teacher_source", "val_size"])
def test_run_ids_change_with_what_is_trained(change):
    obj = copy.deepcopy(base())
    if change == "hparam":
        obj["methods"]["kd"]["temperature"] = 2
    elif change == "epochs":
        obj["schedule"]["epochs"] = 4
    elif change == "precision":
        obj["options"] = {"precision": "bf16"}
    elif change == "dataset":
        obj["dataset"]["num_classes"] = 20
    elif change == "teacher_source":
        obj["teachers"] = {"checkpoint": "train"}
    elif change == "val_size":
        obj["options"] = {"val_size": 64}
    old, new = runs_of(base()), runs_of(obj)
    changed = {r.variant for r, s in zip(old, new) if r.run_id != s.run_id}
    if change == "hparam":
        assert changed == {"kd"}
    else:
        assert changed == {r.variant for r in old}


def test_checkpoint_path_hashed_as_written():
    obj = copy.deepcopy(base())
    obj["pairs"] = [{"teacher": {"arch": "resnet56", "checkpoint": "ckpt/r56.pth"}, "student": "resnet20"}]
    run = runs_of(obj)[0]
    assert run.config["teacher"] == {"arch": "resnet56", "checkpoint": "ckpt/r56.pth"}
    obj["pairs"][0]["teacher"]["checkpoint"] = "./ckpt/r56.pth"
    assert runs_of(obj)[0].run_id != run.run_id


def test_trained_teacher_hashes_its_training_config():
    obj = copy.deepcopy(base())
    obj["teachers"] = {"checkpoint": "train", "seed": 5, "schedule": {"epochs": 7}}
    grid = parse_grid(obj, "grid.yaml")
    pair = grid.pairs[2]
    config = teacher_training_config(grid, pair)
    assert config == {"arch": "vgg13", "dataset": grid.dataset, "seed": 5,
                      "schedule": {**grid.schedule, "epochs": 7, "lr": 0.05, "milestones": [4, 5, 6]},
                      "options": {"precision": "fp32", "channels_last": False, "compile": False}}
    run = next(r for r in plan(grid) if r.teacher_arch == "vgg13")
    assert run.config["teacher"] == {"arch": "vgg13", "checkpoint": "train", "train_id": teacher_training_id(grid, pair)}
    # The teacher's seed matters for runs of a trained teacher, not for a released one.
    before = ids(obj)
    obj["teachers"]["seed"] = 6
    assert ids(obj).isdisjoint(before)
    released = copy.deepcopy(base())
    released["teachers"] = {"seed": 6}
    assert ids(released) == ids(base())


def test_teacher_training_config_needs_a_teacher():
    obj = copy.deepcopy(base())
    obj["pairs"] = [{"teacher": None, "student": "resnet8", "variants": ["vanilla"]}]
    grid = parse_grid(obj, "grid.yaml")
    with pytest.raises(ValueError):
        teacher_training_config(grid, grid.pairs[0])


def test_run_is_frozen_and_hashable():
    run = runs_of(base())[0]
    with pytest.raises(AttributeError):
        run.run_id = "x"  # type: ignore[misc]
    assert {run: 1}[run] == 1


# -- cohorts --------------------------------------------------------------------------------------------


def test_cohorts_share_dataset_teacher_and_seed():
    runs = runs_of(base())
    groups = cohorts(runs)
    assert len(groups) == 3 * 2  # pairs × seeds
    for cohort in groups:
        assert len(cohort.runs) == 6
        assert {(r.teacher_arch, r.seed) for r in cohort.runs} == {(cohort.teacher_config["arch"], cohort.seed)}
        assert {r.cohort_key for r in cohort.runs} == {cohort.key}
        assert (cohort.epochs, cohort.batch_size) == (3, 64)
        assert cohort.dataset["name"] == "synthetic" and cohort.options["precision"] == "fp32"
    assert [c.runs for c in groups][0][0] is runs[0]  # first-seen order
    assert sum(len(c.runs) for c in groups) == len(runs)
    assert len({c.cohort_id for c in groups}) == len(groups)


def test_different_seeds_do_not_share():
    runs = runs_of(base())
    a = next(r for r in runs if r.seed == 0)
    b = next(r for r in runs if r.seed == 1 and r.pair == a.pair)
    assert a.cohort_key != b.cohort_key


def test_lr_differences_share_a_cohort_epochs_do_not():
    obj = copy.deepcopy(base())
    obj["pairs"] = [{"teacher": "resnet32x4", "student": "resnet8x4"},
                    {"teacher": "resnet32x4", "student": "MobileNetV2", "schedule": {"momentum": 0.8}},
                    {"teacher": "resnet32x4", "student": "ShuffleV2", "schedule": {"epochs": 5}}]
    obj["seeds"] = [0]
    groups = cohorts(runs_of(obj))
    assert [sorted({r.student for r in c.runs}) for c in groups] == [["MobileNetV2", "resnet8x4"], ["ShuffleV2"]]
    assert [c.epochs for c in groups] == [3, 5]


def test_teacher_source_separates_cohorts():
    obj = copy.deepcopy(base())
    obj["pairs"] = [{"teacher": "resnet32x4", "student": "resnet8x4"},
                    {"teacher": {"arch": "resnet32x4", "checkpoint": "train"}, "student": "resnet8x4"}]
    assert len(cohorts(runs_of(obj))) == 2 * 2


def test_max_size_splits_evenly_in_order():
    runs = [r for r in runs_of(base()) if r.seed == 0 and r.pair == "resnet32x4->resnet8x4"]
    assert len(runs) == 6
    parts = cohorts(runs, max_size=4)
    assert [len(c.runs) for c in parts] == [3, 3]
    assert [r for c in parts for r in c.runs] == runs
    assert parts[0].key == parts[1].key and parts[0].cohort_id != parts[1].cohort_id
    assert [len(c.runs) for c in cohorts(runs, max_size=5)] == [3, 3]
    assert [len(c.runs) for c in cohorts(runs, max_size=6)] == [6]
    assert [len(c.runs) for c in cohorts(runs, max_size=1)] == [1] * 6
    assert [len(c.runs) for c in cohorts(runs + runs[:1], max_size=3)] == [3, 2, 2]


def test_cohorts_is_pure():
    runs = runs_of(base())
    assert cohorts(runs, 4) == cohorts(list(runs), 4)
    assert [c.cohort_id for c in cohorts(runs)] == [c.cohort_id for c in cohorts(runs_of(base()))]


def test_describe_plan_rows():
    runs = runs_of(base())
    groups = cohorts(runs)
    rows = describe_plan(runs, groups)
    frame = pd.DataFrame(rows)
    assert list(frame.columns) == ["run_id", "pair", "variant", "seed", "cohort"]
    assert len(frame) == len(runs) and frame["cohort"].nunique() == len(groups)
    assert rows[0] == {"run_id": runs[0].run_id, "pair": "resnet32x4->resnet8x4", "variant": "vanilla", "seed": 0,
                       "cohort": groups[0].cohort_id}
