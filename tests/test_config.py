"""Grid YAML validation: every mistake is one line naming the file and the key path."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from kdbench import KdbenchError
from kdbench.grid import schema
from kdbench.grid.config import load_grid, parse_grid

SRC = "grid.yaml"

def base() -> dict:
    return {
        "name": "g",
        "dataset": {"name": "synthetic", "num_classes": 10},
        "seeds": [0, 1],
        "schedule": {"epochs": 2},
        "pairs": [
            {"teacher": "resnet32x4", "student": "resnet8x4"},
            {"teacher": "resnet56", "student": "resnet20", "methods": {"dkd": {"beta": 2}}},
        ],
        "methods": {"vanilla": {}, "kd": {"temperature": 4}, "dkd": {"beta": 8}},
    }


def with_(**changes) -> dict:
    """The base grid with `changes`; replacing `methods` also drops the base's per-pair override."""
    obj = copy.deepcopy(base())
    if "methods" in changes and "pairs" not in changes:
        obj["pairs"][1].pop("methods")
    obj.update(changes)
    return obj


def error(obj, source: str = SRC) -> str:
    with pytest.raises(KdbenchError) as exc:
        parse_grid(obj, source)
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(f"{source}: ")
    return message


def load_error(path) -> str:
    with pytest.raises(KdbenchError) as exc:
        load_grid(path)
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(f"{path}")
    return message


# -- a valid grid -----------------------------------------------------------------------------


def test_valid_grid_is_resolved():
    grid = parse_grid(base(), SRC)
    assert grid.name == "g" and grid.source == SRC
    assert grid.dataset["name"] == "synthetic" and grid.dataset["num_classes"] == 10
    assert grid.dataset["val_size"] == 0 and "split_seed" in grid.dataset
    assert grid.seeds == [0, 1]
    assert grid.schedule == {**schema.SCHEDULE_DEFAULTS, "epochs": 2, "milestones": [1]}  # scaled to 2 epochs
    assert grid.options == schema.OPTION_DEFAULTS
    assert grid.data_root is None
    assert [v.label for v in grid.variants] == ["vanilla", "kd", "dkd"]
    kd = grid.variant("kd")
    assert kd.method == "kd" and kd.hparams["temperature"] == 4.0 and "ce_weight" in kd.hparams
    p0, p1 = grid.pairs
    assert p0.name == "resnet32x4->resnet8x4"
    assert p0.teacher == schema.Teacher("resnet32x4", "mdistiller", 0, grid.schedule)
    assert p0.variants == ("vanilla", "kd", "dkd")
    assert p0.hparams["dkd"]["beta"] == 8.0
    assert p1.hparams["dkd"]["beta"] == 2.0 and p1.methods == {"dkd": {"beta": 2.0}}
    assert p1.hparams["kd"] == kd.hparams


def test_load_grid_from_file(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(
        "name: g\n"
        "dataset: {name: synthetic}\n"
        "schedule: {weight_decay: 5e-4, lr: 1e-2}\n"
        "data: {root: /data}\n"
        "pairs:\n  - {teacher: resnet56, student: resnet20}\n"
        "methods:\n  kd:\n  dkd: {beta: 8}\n"
    )
    grid = load_grid(path)
    assert grid.source == str(path)
    assert grid.schedule["weight_decay"] == 5e-4 and grid.schedule["lr"] == 0.01  # 5e-4 is a float, not a string
    assert grid.data_root == "/data"
    assert grid.seeds == [0]
    assert grid.variant("kd").hparams["temperature"] == 4.0  # `kd:` with no value: all defaults


def test_defaults_and_full_schema():
    obj = with_(
        data={"root": "data"},
        schedule={"epochs": 10, "batch_size": 32, "lr": 0.1, "momentum": 0.0, "weight_decay": 0,
                  "milestones": [5, 8], "lr_decay": 0.2},
        teachers={"checkpoint": "train", "seed": 3, "schedule": {"epochs": 20}},
        options={"precision": "bf16", "channels_last": True, "compile": True, "val_size": 50,
                 "eval_batch_size": 256, "max_cohort_size": 4},
    )
    grid = parse_grid(obj, SRC)
    assert grid.schedule["weight_decay"] == 0.0 and isinstance(grid.schedule["weight_decay"], float)
    assert grid.teachers == schema.TeacherDefaults("train", 3, {"epochs": 20})
    teacher = grid.pairs[0].teacher
    assert teacher.checkpoint == "train" and teacher.seed == 3
    assert teacher.schedule == {**grid.schedule, "epochs": 20}
    assert grid.options["precision"] == "bf16" and grid.options["max_cohort_size"] == 4
    assert grid.dataset["val_size"] == 50


# -- reading the file ---------------------------------------------------------------------------


def test_malformed_yaml_names_line_and_column(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("name: g\nmethods: {kd: {}\npairs: []\n")
    message = load_error(path)
    assert "line " in message and "column " in message and "invalid YAML" in message


def test_bad_indentation_yaml(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("name: g\n  dataset: x\n")
    assert "line 2" in load_error(path)


def test_duplicate_yaml_key(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("name: g\nmethods:\n  kd: {}\n  kd: {temperature: 2}\n")
    message = load_error(path)
    assert "duplicate key 'kd'" in message and "line 4" in message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    assert load_error(path) == f"{path}: no such file"


def test_folder_instead_of_file(tmp_path):
    assert "folder" in load_error(tmp_path)


@pytest.mark.parametrize("text, expected", [
    ("- a\n- b\n", "expected a mapping at the top level, got ['a', 'b'] (list)"),
    ("just text\n", "expected a mapping at the top level, got 'just text' (str)"),
    ("", "empty file"),
])
def test_top_level_not_a_mapping(tmp_path, text, expected):
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    assert expected in load_error(path)


# -- keys -----------------------------------------------------------------------------------------


def test_unknown_top_level_key_suggests():
    obj = with_(schedul={"epochs": 3})
    assert error(obj) == "grid.yaml: schedul: unknown key (did you mean 'schedule'?)"


def test_unknown_key_without_suggestion_lists_allowed():
    message = error(with_(zzz=1))
    assert message.startswith("grid.yaml: zzz: unknown key; allowed: name, dataset")


@pytest.mark.parametrize("changes, expected", [
    ({"schedule": {"epoch": 3}}, "grid.yaml: schedule.epoch: unknown key (did you mean 'epochs'?)"),
    ({"options": {"precison": "bf16"}}, "grid.yaml: options.precison: unknown key (did you mean 'precision'?)"),
    ({"teachers": {"checkpont": "train"}}, "grid.yaml: teachers.checkpont: unknown key (did you mean 'checkpoint'?)"),
    ({"data": {"rot": "x"}}, "grid.yaml: data.rot: unknown key (did you mean 'root'?)"),
])
def test_unknown_nested_key(changes, expected):
    assert error(with_(**changes)) == expected


def test_unknown_pair_key():
    obj = with_(pairs=[{"teacher": "resnet56", "student": "resnet20", "method": {}}])
    assert error(obj) == "grid.yaml: pairs[0].method: unknown key (did you mean 'methods'?)"


@pytest.mark.parametrize("key", ["name", "dataset", "pairs", "methods"])
def test_required_keys(key):
    obj = base()
    del obj[key]
    assert error(obj) == f"grid.yaml: {key}: missing (required)"


def test_bad_grid_name():
    assert "name: expected a name of letters" in error(with_(name="my grid"))


# -- types ----------------------------------------------------------------------------------------


def test_schedule_epochs_wrong_type():
    assert error(with_(schedule={"epochs": "ten"})) == "grid.yaml: schedule.epochs: expected int >= 1, got 'ten' (str)"


@pytest.mark.parametrize("schedule, path", [
    ({"epochs": 0}, "schedule.epochs"),
    ({"epochs": 2.5}, "schedule.epochs"),
    ({"batch_size": True}, "schedule.batch_size"),
    ({"lr": "fast"}, "schedule.lr"),
    ({"lr": 0}, "schedule.lr"),
    ({"lr": None}, "schedule.lr"),
    ({"momentum": -0.1}, "schedule.momentum"),
    ({"milestones": 150}, "schedule.milestones"),
    ({"milestones": [150, "x"]}, "schedule.milestones"),
    ({"milestones": [180, 150]}, "schedule.milestones"),
    ({"lr_decay": 0}, "schedule.lr_decay"),
])
def test_schedule_values_checked(schedule, path):
    assert error(with_(schedule=schedule)).startswith(f"grid.yaml: {path}: expected ")


def test_lr_message():
    assert error(with_(schedule={"lr": "fast"})) == "grid.yaml: schedule.lr: expected auto or a float > 0, got 'fast' (str)"


def test_lr_auto_or_number():
    assert parse_grid(with_(schedule={"lr": "auto"}), SRC).schedule["lr"] == "auto"
    assert parse_grid(with_(schedule={"lr": 1}), SRC).schedule["lr"] == 1.0


@pytest.mark.parametrize("seeds, path, expected", [
    (0, "seeds", "expected a non-empty list of int, got 0 (int)"),
    ([], "seeds", "expected a non-empty list of int, got [] (list)"),
    ([0, "1"], "seeds[1]", "expected int >= 0, got '1' (str)"),
    ([0, 1.5], "seeds[1]", "expected int >= 0, got 1.5 (float)"),
    ([0, -1], "seeds[1]", "expected int >= 0, got -1 (int)"),
    ([0, 1, 0], "seeds[2]", "seed 0 is listed twice"),
])
def test_seeds_must_be_distinct_ints(seeds, path, expected):
    assert error(with_(seeds=seeds)) == f"grid.yaml: {path}: {expected}"


@pytest.mark.parametrize("options, expected", [
    ({"precision": "fp8"}, "grid.yaml: options.precision: expected 'auto' | 'fp32' | 'bf16' | 'fp16', got 'fp8' (str)"),
    ({"compile": "yes"}, "grid.yaml: options.compile: expected bool, got 'yes' (str)"),
    ({"max_cohort_size": -1}, "grid.yaml: options.max_cohort_size: expected int >= 0, got -1 (int)"),
])
def test_options_checked(options, expected):
    assert error(with_(options=options)) == expected


def test_hparam_wrong_type():
    obj = with_(methods={"kd": {"temperature": "hot"}})
    assert error(obj) == "grid.yaml: methods.kd.temperature: expected float, got 'hot' (str)"


def test_hparam_wrong_type_in_override():
    obj = with_(pairs=[{"teacher": "resnet56", "student": "resnet20", "methods": {"dkd": {"beta": [2, 4]}}}])
    assert error(obj) == "grid.yaml: pairs[0].methods.dkd.beta: expected float, got [2, 4] (list)"


def test_unknown_hparam_suggests():
    message = error(with_(methods={"kd": {"temprature": 4}}))
    assert message == "grid.yaml: methods.kd.temprature: unknown hyper-parameter of method 'kd' (did you mean 'temperature'?)"


# -- names: methods, models, datasets ---------------------------------------------------------------


def test_unknown_method():
    message = error(with_(methods={"dkdd": {}}))
    assert message.startswith("grid.yaml: methods.dkdd: unknown method 'dkdd' (did you mean 'dkd'?)")


def test_unknown_method_in_method_key():
    message = error(with_(methods={"mine": {"method": "kdd"}}))
    assert message.startswith("grid.yaml: methods.mine.method: unknown method 'kdd' (did you mean 'kd'?)")


def test_bad_variant_label():
    assert "a variant label may hold only" in error(with_(methods={"my kd": {"method": "kd"}}))


def test_unknown_model():
    obj = with_(pairs=[{"teacher": "resnet56", "student": "resnet9"}])
    assert error(obj).startswith("grid.yaml: pairs[0].student: unknown model 'resnet9' (did you mean 'resnet8'?)")


def test_unknown_teacher_model():
    obj = with_(pairs=[{"teacher": "resnet5", "student": "resnet20"}])
    assert error(obj).startswith("grid.yaml: pairs[0].teacher: unknown model 'resnet5'")
    obj = with_(pairs=[{"teacher": {"arch": "resnet5"}, "student": "resnet20"}])
    assert error(obj).startswith("grid.yaml: pairs[0].teacher.arch: unknown model 'resnet5'")


def test_student_not_a_string():
    obj = with_(pairs=[{"teacher": "resnet56", "student": 20}])
    assert error(obj) == "grid.yaml: pairs[0].student: expected a model name, got 20 (int)"


def test_unknown_dataset():
    message = error(with_(dataset="cifar10O"))
    assert message.startswith("grid.yaml: dataset: unknown dataset 'cifar10O' (did you mean 'cifar100'?)")


def test_unknown_dataset_key():
    message = error(with_(dataset={"name": "synthetic", "num_clases": 10}))
    assert message == "grid.yaml: dataset.num_clases: unknown key (did you mean 'num_classes'?)"


def test_unknown_dataset_name_in_mapping():
    message = error(with_(dataset={"name": "synthetik"}))
    assert message.startswith("grid.yaml: dataset.name: unknown dataset 'synthetik' (did you mean 'synthetic'?)")


def test_dataset_wrong_type():
    message = error(with_(dataset={"name": "synthetic", "num_classes": "ten"}))
    assert message == "grid.yaml: dataset.num_classes: expected int, got 'ten' (str)"


def test_dataset_range_checked():
    message = error(with_(dataset={"name": "synthetic", "val_size": -1}))
    assert message.startswith("grid.yaml: dataset: ") and "val_size" in message


def test_dataset_mapping_needs_name():
    assert error(with_(dataset={"num_classes": 10})) == "grid.yaml: dataset.name: missing (required)"


# -- val_size: options.val_size is a shorthand for the dataset's ---------------------------------------


def test_options_val_size_merges_into_dataset():
    grid = parse_grid(with_(options={"val_size": 64}), SRC)
    assert grid.dataset["val_size"] == 64 and grid.options["val_size"] == 64


def test_dataset_val_size_alone():
    grid = parse_grid(with_(dataset={"name": "synthetic", "val_size": 32}), SRC)
    assert grid.dataset["val_size"] == 32 and grid.options["val_size"] == 32


def test_val_size_in_both_places_must_agree():
    same = with_(dataset={"name": "synthetic", "val_size": 32}, options={"val_size": 32})
    assert parse_grid(same, SRC).dataset["val_size"] == 32
    clash = with_(dataset={"name": "synthetic", "val_size": 32}, options={"val_size": 64})
    assert error(clash) == "grid.yaml: options.val_size: 64 conflicts with dataset.val_size 32; set it in one place"


# -- pairs ------------------------------------------------------------------------------------------


def test_empty_pairs():
    assert error(with_(pairs=[])) == "grid.yaml: pairs: expected at least one {teacher, student} pair, got an empty list"


def test_pairs_not_a_list():
    assert error(with_(pairs={"teacher": "resnet56"})).startswith("grid.yaml: pairs: expected a list")


def test_pair_needs_teacher_key():
    obj = with_(pairs=[{"student": "resnet20"}])
    assert error(obj) == "grid.yaml: pairs[0].teacher: missing (required)"


def test_override_for_unknown_variant():
    obj = with_(pairs=[{"teacher": "resnet56", "student": "resnet20", "methods": {"dkdd": {"beta": 2}}}])
    message = error(obj)
    assert message.startswith("grid.yaml: pairs[0].methods.dkdd: no such variant in methods (did you mean 'dkd'?)")


def test_override_cannot_change_method():
    obj = with_(pairs=[{"teacher": "resnet56", "student": "resnet20", "methods": {"kd": {"method": "dkd"}}}])
    assert error(obj) == "grid.yaml: pairs[0].methods.kd.method: a per-pair override cannot change the method"


def test_override_of_swept_key_is_refused():
    obj = with_(methods={"dkd": {"beta": [2, 8]}},
                pairs=[{"teacher": "resnet56", "student": "resnet20", "methods": {"dkd": {"beta": 2}}}])
    assert error(obj).startswith("grid.yaml: pairs[0].methods.dkd.beta: 'beta' is swept in methods.dkd")


def test_teacherless_pair_must_list_teacher_free_variants():
    obj = with_(pairs=[{"teacher": None, "student": "resnet8"}])
    assert error(obj).startswith("grid.yaml: pairs[0].variants: missing; a pair without teacher must list")
    obj = with_(pairs=[{"teacher": None, "student": "resnet8", "variants": ["vanilla", "kd"]}])
    assert error(obj) == ("grid.yaml: pairs[0].variants: pair without teacher cannot run variant 'kd' "
                          "(method kd needs a teacher)")
    grid = parse_grid(with_(pairs=[{"teacher": None, "student": "resnet8", "variants": ["vanilla"]}]), SRC)
    assert grid.pairs[0].teacher is None and grid.pairs[0].variants == ("vanilla",)
    assert grid.pairs[0].name == "->resnet8"


def test_pair_variants_select_and_keep_grid_order():
    obj = with_(methods={"vanilla": {}, "kd": {}, "rld": {"beta": [2, 4]}},
                pairs=[{"teacher": "resnet56", "student": "resnet20", "variants": ["rld(beta=4)", "vanilla"]},
                       {"teacher": "resnet32x4", "student": "resnet8x4", "variants": ["rld"]}])
    grid = parse_grid(obj, SRC)
    assert grid.pairs[0].variants == ("vanilla", "rld(beta=4)")
    assert grid.pairs[1].variants == ("rld(beta=2)", "rld(beta=4)")


@pytest.mark.parametrize("variants, expected", [
    (["kdd"], "grid.yaml: pairs[0].variants[0]: no such variant 'kdd' (did you mean 'kd'?)"),
    (["kd", "kd"], "grid.yaml: pairs[0].variants[1]: variant 'kd' is listed twice"),
    ([], "grid.yaml: pairs[0].variants: expected a non-empty list of variant labels, got [] (list)"),
])
def test_pair_variants_checked(variants, expected):
    obj = with_(pairs=[{"teacher": "resnet56", "student": "resnet20", "variants": variants}])
    assert error(obj) == expected


def test_override_for_variant_the_pair_does_not_run():
    obj = with_(pairs=[{"teacher": "resnet56", "student": "resnet20", "variants": ["kd"],
                        "methods": {"dkd": {"beta": 2}}}])
    assert error(obj) == "grid.yaml: pairs[0].methods.dkd: variant 'dkd' is not run by this pair (see pairs[0].variants)"


def test_duplicate_pairs():
    obj = with_(pairs=[{"teacher": "resnet56", "student": "resnet20"},
                       {"teacher": "resnet56", "student": "resnet20", "methods": {"dkd": {"beta": 2}}}])
    assert error(obj).startswith("grid.yaml: pairs[1]: same teacher, student and schedule as pairs[0]")


def test_duplicate_pairs_compare_the_effective_schedule():
    obj = with_(pairs=[{"teacher": "resnet56", "student": "resnet20"},
                       {"teacher": "resnet56", "student": "resnet20", "schedule": {"lr": 0.05}}])
    assert error(obj).startswith("grid.yaml: pairs[1]: same teacher, student and schedule as pairs[0]")


def test_same_pair_with_different_schedules_is_allowed():
    obj = with_(pairs=[{"teacher": "resnet56", "student": "resnet20"},
                       {"teacher": "resnet56", "student": "resnet20", "schedule": {"lr": 0.01}}])
    grid = parse_grid(obj, SRC)
    assert grid.pairs[1].schedule == {"lr": 0.01}


def test_per_pair_schedule_checked():
    obj = with_(pairs=[{"teacher": "resnet56", "student": "resnet20", "schedule": {"epochs": "x"}}])
    assert error(obj) == "grid.yaml: pairs[0].schedule.epochs: expected int >= 1, got 'x' (str)"


# -- teachers --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("checkpoint", ["mdistiller", "train", "torchvision", "ckpt/t.pth", "t.pth", "/abs/t.pt"])
def test_checkpoint_sources(checkpoint):
    obj = with_(pairs=[{"teacher": {"arch": "resnet56", "checkpoint": checkpoint}, "student": "resnet20"}])
    assert parse_grid(obj, SRC).pairs[0].teacher.checkpoint == checkpoint


def test_checkpoint_typo_suggests():
    obj = with_(teachers={"checkpoint": "mdistiler"})
    message = error(obj)
    assert message.startswith("grid.yaml: teachers.checkpoint: expected mdistiller, train, torchvision, random or a file path")
    assert message.endswith("got 'mdistiler' (did you mean 'mdistiller'?)")


def test_teacher_overrides_merge_over_defaults():
    obj = with_(
        teachers={"checkpoint": "train", "seed": 1, "schedule": {"epochs": 5, "lr": 0.1}},
        pairs=[{"teacher": {"arch": "resnet56", "seed": 2, "schedule": {"lr": 0.2}}, "student": "resnet20"},
               {"teacher": {"arch": "resnet32x4", "checkpoint": "mdistiller"}, "student": "resnet8x4"}],
    )
    grid = parse_grid(obj, SRC)
    t0, t1 = grid.pairs[0].teacher, grid.pairs[1].teacher
    assert (t0.checkpoint, t0.seed, t0.schedule["epochs"], t0.schedule["lr"]) == ("train", 2, 5, 0.2)
    assert (t1.checkpoint, t1.seed) == ("mdistiller", 1)


def test_teacher_wrong_shape():
    obj = with_(pairs=[{"teacher": ["resnet56"], "student": "resnet20"}])
    assert error(obj).startswith("grid.yaml: pairs[0].teacher: expected a model name, a mapping")
    obj = with_(pairs=[{"teacher": {"arch": "resnet56", "sed": 1}, "student": "resnet20"}])
    assert error(obj) == "grid.yaml: pairs[0].teacher.sed: unknown key (did you mean 'seed'?)"


# -- variants: sweeps and duplicates --------------------------------------------------------------------


def test_sweep_expands_with_labels():
    grid = parse_grid(with_(methods={"rld": {"beta": [2, 4, 8], "alpha_temperature": 4}}), SRC)
    assert [v.label for v in grid.variants] == ["rld(beta=2)", "rld(beta=4)", "rld(beta=8)"]
    assert [v.hparams["beta"] for v in grid.variants] == [2.0, 4.0, 8.0]
    assert all(v.hparams["alpha_temperature"] == 4.0 and v.base == "rld" for v in grid.variants)
    assert grid.variants[1].sweep == {"beta": 4.0}


def test_two_swept_keys_give_the_product_in_key_order():
    grid = parse_grid(with_(methods={"kd": {"temperature": [2, 4], "standardize": [False, True]}}), SRC)
    assert [v.label for v in grid.variants] == [
        "kd(temperature=2,standardize=false)", "kd(temperature=2,standardize=true)",
        "kd(temperature=4,standardize=false)", "kd(temperature=4,standardize=true)",
    ]


def test_sweep_items_checked():
    message = error(with_(methods={"rld": {"beta": [2, "x"]}}))
    assert message == "grid.yaml: methods.rld.beta[1]: expected float, got 'x' (str)"
    assert error(with_(methods={"rld": {"beta": []}})).startswith("grid.yaml: methods.rld.beta: an empty list")
    assert error(with_(methods={"rld": {"beta": [2, 2.0]}})) == "grid.yaml: methods.rld.beta[1]: value 2.0 is listed twice"


def test_method_key_names_the_registered_method():
    grid = parse_grid(with_(methods={"kd_ls": {"method": "kd", "standardize": True, "temperature": 2, "kd_weight": 9}}), SRC)
    (v,) = grid.variants
    assert (v.label, v.method, v.hparams["standardize"], v.hparams["kd_weight"]) == ("kd_ls", "kd", True, 9.0)


def test_duplicate_variants_name_both():
    obj = with_(methods={"kd": {}, "kd4": {"method": "kd", "temperature": 4.0}})
    message = error(obj)
    assert message.startswith("grid.yaml: methods: variants 'kd' and 'kd4' are identical")


def test_duplicate_variants_after_pair_override():
    obj = with_(methods={"dkd": {}, "dkd2": {"method": "dkd", "beta": 2}},
                pairs=[{"teacher": "resnet56", "student": "resnet20", "methods": {"dkd": {"beta": 2}}}])
    assert error(obj).startswith("grid.yaml: pairs[0].methods: variants 'dkd' and 'dkd2' are identical")


def test_empty_methods():
    assert error(with_(methods={})) == "grid.yaml: methods: expected at least one method variant, got none"


def test_error_prefix_is_the_given_source():
    assert error(with_(schedule={"epochs": "x"}), source="experiments/c.yaml").startswith(
        "experiments/c.yaml: schedule.epochs:")


def test_docstring_example_is_a_valid_grid(tmp_path):
    """The documented example (copied into the README) must itself load."""
    import textwrap

    doc = schema.__doc__
    example = textwrap.dedent(doc[doc.index("    name:"):doc.index("Rules:")])
    path = tmp_path / "example.yaml"
    path.write_text(example)
    grid = load_grid(path)
    assert [p.name for p in grid.pairs][-1] == "->resnet8"
    assert [v.label for v in grid.variants][3:6] == ["rld(beta=2)", "rld(beta=4)", "rld(beta=8)"]


def test_guide_grid_example_is_a_valid_grid(tmp_path):
    guide = (Path(__file__).resolve().parents[1] / "docs" / "guide.md").read_text()
    section = guide[guide.index("## The grid format"):]
    start = section.index("```yaml\n") + len("```yaml\n")
    path = tmp_path / "example.yaml"
    path.write_text(section[start:section.index("```", start)])
    grid = load_grid(path)
    assert [v.label for v in grid.variants][-1] == "mlkd_own" and grid.variants[-1].protocol == "own"


def test_the_docs_grid_reference_is_generated_from_the_schema():
    page = (Path(__file__).resolve().parents[1] / "docs" / "grid-reference.md").read_text(encoding="utf-8")
    assert page == schema.reference_markdown(), "run: python -m kdbench.grid.schema docs/grid-reference.md"
