"""`--set key.path=value` overrides: parsing, paths, validation like the file with the
override named as the source, the override grid name, and the effective grid's YAML."""

from __future__ import annotations

import re

import pytest

from kdbench import KdbenchError
from kdbench.grid import config, overrides, plan, yaml_io
from kdbench.cli import build_parser
from kdbench.grid.overrides import load_grid, parse_override

GRID = """\
name: g
dataset: {name: synthetic, num_classes: 10}
seeds: [0, 1]
schedule: {epochs: 2, weight_decay: 5e-4}
pairs:
  - {teacher: resnet32x4, student: resnet8x4}
  - teacher: resnet56
    student: resnet20
    methods: {dkd: {beta: 2}}
methods:
  vanilla: {}
  kd: {temperature: 4}
  dkd: {beta: 8}
"""


@pytest.fixture
def grid_file(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(GRID)
    return path


def error(path, *sets: str) -> str:
    with pytest.raises(KdbenchError) as exc:
        load_grid(path, list(sets))
    message = str(exc.value)
    assert "\n" not in message
    return message


# -- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, keys, value", [
    ("schedule.epochs=5", ("schedule", "epochs"), 5),
    ("schedule.weight_decay=5e-4", ("schedule", "weight_decay"), 5e-4),
    ("schedule.lr=auto", ("schedule", "lr"), "auto"),
    ("pairs[0].student=resnet20", ("pairs", 0, "student"), "resnet20"),
    ("pairs.0.student=resnet20", ("pairs", "0", "student"), "resnet20"),
    ("options.log=[tensorboard, wandb]", ("options", "log"), ["tensorboard", "wandb"]),
    ("methods.dkd={beta: 2, warmup: 5}", ("methods", "dkd"), {"beta": 2, "warmup": 5}),
    ("options.compile=true", ("options", "compile"), True),
    ("teachers.checkpoint=", ("teachers", "checkpoint"), None),
    ("name=a=b", ("name",), "a=b"),
])
def test_parse_override(text, keys, value):
    o = parse_override(text)
    assert (o.text, o.keys, o.value) == (text, keys, value)
    assert type(o.value) is type(value)


@pytest.mark.parametrize("text, expected", [
    ("foo", "--set foo: expected key.path=value"),
    ("=5", "--set =5: expected key.path=value"),
    ("a..b=1", "--set a..b=1: expected key.path=value; 'a..b' is not a key path "
               "(keys joined by '.', list items as [N] or .N)"),
    ("pairs[x].student=1", "--set pairs[x].student=1: expected key.path=value; 'pairs[x].student' is not a key "
                           "path (keys joined by '.', list items as [N] or .N)"),
    ("[0]=1", "--set [0]=1: expected key.path=value; '[0]' is not a key path "
              "(keys joined by '.', list items as [N] or .N)"),
    ("seeds=[1,2", "--set seeds=[1,2: line 1, column 5: invalid YAML: expected ',' or ']', but got '<stream end>' "
                   "(while parsing a flow sequence started on line 1, column 1)"),
])
def test_parse_errors_are_one_line(text, expected):
    with pytest.raises(KdbenchError) as exc:
        parse_override(text)
    assert str(exc.value) == expected


# -- applying and validating ---------------------------------------------------------------------


def test_overrides_change_the_resolved_config_and_run_ids(grid_file):
    base = config.load_grid(grid_file)
    grid = load_grid(grid_file, ["schedule.epochs=5", "methods.dkd.beta=2.0", "options.log=[tensorboard]"])
    assert grid.schedule["epochs"] == 5 and grid.variant("dkd").hparams["beta"] == 2.0
    assert grid.options["log"] == ("tensorboard",) and base.options["log"] == ()
    assert grid.overrides == ("schedule.epochs=5", "methods.dkd.beta=2.0", "options.log=[tensorboard]")
    runs = plan.plan(grid)
    assert {r.config["schedule"]["epochs"] for r in runs} == {5}
    assert {r.run_id for r in runs}.isdisjoint(r.run_id for r in plan.plan(base))


def test_log_sinks_stay_out_of_run_ids(grid_file):
    base_ids = [r.run_id for r in plan.plan(config.load_grid(grid_file))]
    grid = load_grid(grid_file, ["options.log=[tensorboard, wandb]"])
    assert [r.run_id for r in plan.plan(grid)] == base_ids
    assert grid.name != "g"


def test_both_list_syntaxes_and_short_forms(grid_file):
    a = load_grid(grid_file, ["pairs[0].student=resnet20", "pairs[1].student=resnet8"])
    b = load_grid(grid_file, ["pairs.0.student=resnet20", "pairs.1.student=resnet8"])
    assert [p.student for p in a.pairs] == [p.student for p in b.pairs] == ["resnet20", "resnet8"]
    assert a.name == b.name  # the name hashes the normalised paths
    grid = load_grid(grid_file, ["dataset.train_size=100", "pairs[0].teacher.checkpoint=train"])
    assert grid.dataset["train_size"] == 100 and grid.dataset["name"] == "synthetic"
    assert grid.pairs[0].teacher.arch == "resnet32x4" and grid.pairs[0].teacher.checkpoint == "train"


def test_appending_a_pair_and_replacing_a_mapping(grid_file):
    grid = load_grid(grid_file, ["pairs[2]={teacher: resnet56, student: resnet8, variants: [kd]}",
                                 "methods.kd={temperature: 2}"])
    assert [p.name for p in grid.pairs] == ["resnet32x4->resnet8x4", "resnet56->resnet20", "resnet56->resnet8"]
    assert grid.variant("kd").hparams["temperature"] == 2.0


def test_a_label_with_dots_is_matched_whole(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(GRID.replace("  kd: {temperature: 4}", "  kd.v2: {method: kd, temperature: 4}"))
    grid = load_grid(path, ["methods.kd.v2.temperature=2"])
    assert grid.variant("kd.v2").hparams["temperature"] == 2.0


def test_later_overrides_win(grid_file):
    assert load_grid(grid_file, ["schedule.epochs=5", "schedule.epochs=3"]).schedule["epochs"] == 3


def test_an_override_can_fix_the_file(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(GRID.replace("epochs: 2", "epochs: x"))
    assert error(path, "seeds=[0]") == f"{path}: schedule.epochs: expected int >= 1, got 'x' (str)"
    assert load_grid(path, ["schedule.epochs=3"]).schedule["epochs"] == 3


def test_new_options(grid_file):
    grid = load_grid(grid_file, ["options.precision=fp16", "options.deterministic=true", "options.log=wandb"])
    assert (grid.options["precision"], grid.options["deterministic"], grid.options["log"]) == ("fp16", True, ("wandb",))
    assert config.load_grid(grid_file).options["deterministic"] is False


@pytest.mark.parametrize("sets, expected", [
    (["schedule.epochs=x"], "--set schedule.epochs=x: schedule.epochs: expected int >= 1, got 'x' (str)"),
    (["schedule.epochs=5", "methods.dkd.beta=high"],
     "--set methods.dkd.beta=high: methods.dkd.beta: expected float, got 'high' (str)"),
    (["foo=1"], "--set foo=1: foo: unknown key; allowed: name, dataset, data, seeds, schedule, teachers, pairs, "
                "methods, options"),
    (["sched.epochs=1"], "--set sched.epochs=1: sched: unknown key (did you mean 'schedule'?)"),
    (["options.precison=bf16"], "--set options.precison=bf16: options.precison: unknown key "
                                "(did you mean 'precision'?)"),
    (["options.precision=fp8"], "--set options.precision=fp8: options.precision: expected 'auto' | 'fp32' | 'bf16' | 'fp16', "
                                "got 'fp8' (str)"),
    (["options.deterministic=maybe"], "--set options.deterministic=maybe: options.deterministic: expected bool, "
                                      "got 'maybe' (str)"),
    (["options.log=[tensorbord]"], "--set options.log=[tensorbord]: options.log[0]: unknown tracking sink "
                                   "'tensorbord' (did you mean 'tensorboard'?)"),
    (["options.log=[mlflow]"], "--set options.log=[mlflow]: options.log[0]: unknown tracking sink 'mlflow'; "
                               "known: tensorboard, wandb"),
    (["options.log=[wandb, wandb]"], "--set options.log=[wandb, wandb]: options.log[1]: sink 'wandb' is listed twice"),
    (["options.log=3"], "--set options.log=3: options.log: expected a list of tracking sinks (tensorboard, wandb), "
                        "got 3 (int)"),
    (["name=my grid"], "--set name=my grid: name: expected a name of letters, digits, _ . + -, got 'my grid' (str)"),
    (["pairs[1].teacher=resnet32x4", "pairs[1].student=resnet8x4"],
     "--set pairs[1].student=resnet8x4: pairs[1]: same teacher, student and schedule as pairs[0] "
     "(resnet32x4->resnet8x4); merge them (use `variants:` and `methods:` in one pair)"),
    (["pairs[5].student=resnet20"], "--set pairs[5].student=resnet20: pairs[5]: no such item (the list has 2; "
                                    "[2] appends one)"),
    (["pairs.student=resnet20"], "--set pairs.student=resnet20: pairs: expected a list index ([N] or .N), "
                                 "got 'student'"),
    (["schedule.epochs.x=1"], "--set schedule.epochs.x=1: schedule.epochs: expected a mapping to set 'x' in, "
                              "got 2 (int)"),
    (["seeds.x=1"], "--set seeds.x=1: seeds: expected a list index ([N] or .N), got 'x'"),
    (["schedule[0]=1"], "--set schedule[0]=1: schedule: expected a list to index with [0], got a mapping"),
    (["data.root[0]=x"], "--set data.root[0]=x: data.root: expected a list to index with [0], got null"),
])
def test_errors_name_the_override(grid_file, sets, expected):
    assert error(grid_file, *sets) == expected


def test_an_error_in_the_file_names_the_file(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(GRID.replace("temperature: 4", "temperature: hot"))
    assert error(path, "schedule.epochs=3") == f"{path}: methods.kd.temperature: expected float, got 'hot' (str)"


def test_an_error_made_by_overrides_together_names_them_all(grid_file):
    # Each key is fine; dropping dkd leaves pairs[1]'s dkd override pointing at nothing.
    assert error(grid_file, "schedule.epochs=3", "methods={kd: {}}") == (
        f"{grid_file} with --set schedule.epochs=3 --set methods={{kd: {{}}}}: pairs[1].methods.dkd: no such variant "
        "in methods (did you mean 'kd'?); per-pair overrides name a label of `methods`")


def test_missing_file_is_still_the_file_error(tmp_path):
    assert error(tmp_path / "nope.yaml", "schedule.epochs=3") == f"{tmp_path / 'nope.yaml'}: no such file"


# -- names and the effective grid ----------------------------------------------------------------


def test_override_grid_name(grid_file):
    name = load_grid(grid_file, ["schedule.epochs=1"]).name
    assert re.fullmatch(r"g\+set-[0-9a-f]{6}", name)
    assert load_grid(grid_file, ["schedule.epochs=01"]).name == name  # same value, same name
    assert load_grid(grid_file, ["schedule.epochs=2"]).name != name
    assert load_grid(grid_file, ["schedule.epochs=1", "name=quick"]).name == "quick"
    assert load_grid(grid_file, ["name=quick"]).name == "quick"
    assert load_grid(grid_file).name == "g" and load_grid(grid_file, []).overrides == ()


def test_effective_grid_yaml_reads_back_to_the_same_grid(grid_file, tmp_path):
    sets = ["schedule.epochs=5", "methods.dkd.beta=2.0", "options.log=[tensorboard]", "dataset.train_size=64"]
    grid = load_grid(grid_file, sets)
    assert grid.text.startswith(f"# The effective grid: {grid_file} with\n#   --set schedule.epochs=5\n")
    saved = tmp_path / "results" / grid.name / "grid.yaml"
    saved.parent.mkdir(parents=True)
    saved.write_text(grid.text)
    again = config.load_grid(saved)
    assert again.name == grid.name
    assert (again.schedule, again.options, again.dataset, again.pairs, again.variants) == \
        (grid.schedule, grid.options, grid.dataset, grid.pairs, grid.variants)
    assert [r.run_id for r in plan.plan(again)] == [r.run_id for r in plan.plan(grid)]


def test_plain_load_keeps_the_file_text(grid_file):
    assert config.load_grid(grid_file).text == GRID
    assert overrides.effective_grid_text(grid_file) == GRID
    sets = ["schedule.epochs=1"]
    assert overrides.effective_grid_text(grid_file, sets) == load_grid(grid_file, sets).text


def test_dumped_strings_that_look_like_floats_stay_strings():
    obj = {"a": "1e5", "b": 1e5, "c": "5e-4", "d": [0.0005, "auto", None, True]}
    assert yaml_io.parse_yaml(yaml_io.dump_yaml(obj), "x") == obj


def test_override_name_hashes_paths_and_values():
    a = overrides.parse_overrides(["schedule.epochs=1", "options.log=[tensorboard]"])
    assert overrides.override_name("g", a, ["schedule.epochs", "options.log"]) == \
        overrides.override_name("g", list(a), ("schedule.epochs", "options.log"))
    assert overrides.override_name("g", a[:1], ["name"]) == "g"


# -- command line --------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["run", "g.yaml", "--dry-run"], ["status", "g.yaml"]])
def test_cli_set_is_repeatable_plain_strings(command):
    args = build_parser().parse_args(command + ["--set", "schedule.epochs=5", "--set", "options.log=[tensorboard]"])
    assert args.set == ["schedule.epochs=5", "options.log=[tensorboard]"]
    assert build_parser().parse_args(command).set == []
