"""The method registry: registration, validation, discovery and its one-line errors."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from kdbench import KdbenchError, methods

REPO = Path(__file__).resolve().parents[1]
BUILTINS = {"vanilla", "kd", "dkd", "normkd", "label_swap", "label_revision", "rld",
            "dist", "ttm", "wttm", "nkd", "wsld", "ctkd", "mlkd", "luminet", "crld", "sdd", "wkd_l"}


@pytest.fixture
def clean_registry(monkeypatch):
    """Undo registrations and imports a test makes."""
    entries = dict(methods._registry._entries)
    sources = dict(methods._registry._sources)
    loaded = set(methods._loaded_files)
    extra = list(methods._extra_dirs)
    yield
    methods._registry._entries.clear()
    methods._registry._entries.update(entries)
    methods._registry._sources.clear()
    methods._registry._sources.update(sources)
    methods._loaded_files.clear()
    methods._loaded_files.update(loaded)
    methods._extra_dirs[:] = extra


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_builtin_methods_are_found():
    assert BUILTINS <= set(methods.available())


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtin_methods_name_their_paper_and_official_code(name):
    paper, code = methods.reference(name)
    if name == "vanilla":
        assert (paper, code) == ("", "")
        return
    assert paper
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+/blob/[0-9a-f]{40}/\S+\.py", code), code


def test_describe_reads_the_docstring_and_signature():
    info = methods.describe("dkd")
    assert info.summary.startswith("Decoupled KD")
    assert [(p.name, p.type, p.default) for p in info.hparams] == [
        ("alpha", float, 1.0), ("beta", float, 8.0), ("temperature", float, 4.0),
        ("ce_weight", float, 1.0), ("warmup", int, 20), ("standardize", bool, False),
    ]
    assert "beta: float = 8.0" in str(info)


@pytest.mark.parametrize("name, defaults", [
    ("vanilla", {}),
    ("kd", {"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9, "standardize": False}),
    ("dkd", {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "ce_weight": 1.0, "warmup": 20, "standardize": False}),
    ("normkd", {"t_norm": 2.0, "ce_weight": 0.1, "kd_weight": 0.9}),
    ("label_swap", {"temperature": 4.0, "ce_weight": 0.0, "kd_weight": 1.0, "standardize": False}),
    ("label_revision", {"lambda1": 4.0, "lambda2": 1.0, "eta": 0.8}),
    ("rld", {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "alpha_temperature": 1.0, "ce_weight": 1.0,
             "warmup": 20, "standardize": False}),
    ("dist", {"beta": 2.0, "gamma": 2.0, "temperature": 4.0, "ce_weight": 1.0}),
    ("ttm", {"gamma": 0.1, "ttm_weight": 45.0, "ce_weight": 1.0}),
    ("wttm", {"gamma": 0.2, "wttm_weight": 4.0, "ce_weight": 1.0}),
    ("nkd", {"temperature": 3.0, "gamma": 3.5, "ce_weight": 1.0}),
    ("wsld", {"alpha": 2.25, "temperature": 4.0, "ce_weight": 1.0}),
    ("ctkd", {"ce_weight": 0.1, "kd_weight": 0.9, "t_start": 1.0, "t_end": 20.0, "lambda_start": 0.0,
              "lambda_end": -1.0, "lambda_epochs": 10, "standardize": False}),
    ("mlkd", {"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9, "standardize": False}),
    ("luminet", {"alpha": 33.0, "temperature": 4.0, "ce_weight": 2.0, "warmup": 20}),
    ("crld", {"temperature": 4.0, "ce_weight": 1.0, "within_weight": 2.0, "cross_weight": 0.5, "tau_weak": 0.9,
              "tau_strong": 0.2}),
])
def test_hyper_parameter_names_and_defaults(name, defaults):
    assert methods.resolve_hparams(name) == defaults


def test_build_casts_and_detaches_the_inputs_of_every_view(clean_registry):
    seen = {}

    class Spy(nn.Module):
        views = ("weak", "strong")

        def forward(self, student_logits, teacher_logits, targets, *, epoch):
            seen.update(student=student_logits, teacher=teacher_logits)
            return {}

    methods.register("spy_views_test")(Spy)
    student = {v: torch.randn(2, 3, dtype=torch.bfloat16, requires_grad=True) for v in Spy.views}
    teacher = {v: torch.randn(2, 3, dtype=torch.float16, requires_grad=True) for v in Spy.views}
    methods.build("spy_views_test")(student, teacher, torch.zeros(2, dtype=torch.long), epoch=1)
    assert list(seen["student"]) == list(seen["teacher"]) == ["weak", "strong"]
    for view in Spy.views:
        assert seen["student"][view].dtype == seen["teacher"][view].dtype == torch.float32
        assert seen["student"][view].requires_grad and not seen["teacher"][view].requires_grad
    assert methods.views_of(Spy) == ("weak", "strong") and methods.views_of(methods.method_class("kd")) is None


def test_epoch_scalars_are_read_as_floats():
    assert methods.epoch_scalars(methods.build("kd")) == {}
    values = methods.epoch_scalars(methods.build("ctkd"))
    assert list(values) == ["temperature"] and isinstance(values["temperature"], float)


def test_build_converts_ints_to_floats_and_records_hparams():
    method = methods.build("kd", temperature=2)
    assert method.temperature == 2.0 and isinstance(method.temperature, float)
    assert method.kdbench_hparams["temperature"] == 2.0


def test_unknown_method_lists_the_available_ones_and_suggests():
    with pytest.raises(KdbenchError) as exc:
        methods.build("dkdd")
    message = one_line(exc)
    assert "unknown method 'dkdd'" in message and "did you mean 'dkd'" in message and "label_swap" in message


def test_unknown_hyper_parameter_names_method_and_key():
    with pytest.raises(KdbenchError) as exc:
        methods.build("rld", betta=2.0)
    message = one_line(exc)
    assert "method 'rld'" in message and "'betta'" in message and "did you mean 'beta'" in message


@pytest.mark.parametrize("key, value", [("temperature", "hot"), ("warmup", 2.5), ("standardize", 1), ("beta", True)])
def test_wrong_type_names_method_key_and_expected_type(key, value):
    with pytest.raises(KdbenchError) as exc:
        methods.build("dkd", **{key: value})
    message = one_line(exc)
    assert "method 'dkd'" in message and f"'{key}'" in message and "expects" in message


def write_method(folder: Path, file: str, name: str, doc: str = "A test loss.") -> Path:
    path = folder / file
    path.write_text(textwrap.dedent(f'''
        import torch.nn.functional as F
        from torch import nn
        from kdbench.methods import register

        @register("{name}")
        class Loss(nn.Module):
            """{doc}"""
            def __init__(self, weight: float = 1.0):
                super().__init__()
                self.weight = weight
            def forward(self, student_logits, teacher_logits, targets, *, epoch):
                return {{"ce": self.weight * F.cross_entropy(student_logits, targets)}}
    '''))
    return path


def test_methods_path_folder_is_discovered(tmp_path, monkeypatch, clean_registry):
    write_method(tmp_path, "my_loss.py", "my_test_loss", "My loss for the discovery test.")
    monkeypatch.setenv(methods.ENV_PATH, str(tmp_path))
    assert "my_test_loss" in methods.available()
    assert methods.describe("my_test_loss").summary == "My loss for the discovery test."
    assert methods.describe("my_test_loss").source.endswith("my_loss.py")


def test_methods_dir_is_discovered(tmp_path, clean_registry):
    write_method(tmp_path, "other.py", "my_other_loss")
    methods.add_search_path(tmp_path)
    assert "my_other_loss" in methods.available()


def test_duplicate_name_names_both_files(tmp_path, monkeypatch, clean_registry):
    write_method(tmp_path, "copy_of_kd.py", "kd")
    monkeypatch.setenv(methods.ENV_PATH, str(tmp_path))
    with pytest.raises(KdbenchError) as exc:
        methods.available()
    message = one_line(exc)
    assert "method 'kd' is registered twice" in message
    assert "copy_of_kd.py" in message and str(Path("methods") / "kd.py") in message


def test_broken_method_file_is_a_one_line_error(tmp_path, monkeypatch, clean_registry):
    (tmp_path / "broken.py").write_text("def oops(:\n")
    monkeypatch.setenv(methods.ENV_PATH, str(tmp_path))
    with pytest.raises(KdbenchError) as exc:
        methods.available()
    assert "broken.py" in one_line(exc) and "SyntaxError" in one_line(exc)


def test_register_refuses_a_non_module(clean_registry):
    with pytest.raises(KdbenchError):
        methods.register("not_a_module")(object)


def test_missing_methods_path_folder_is_an_error(monkeypatch, clean_registry):
    monkeypatch.setenv(methods.ENV_PATH, "/nonexistent/kdbench-methods")
    with pytest.raises(KdbenchError) as exc:
        methods.available()
    assert methods.ENV_PATH in one_line(exc)


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "kdbench", *args], capture_output=True, text=True, env=full_env, timeout=120)


@pytest.mark.slow
def test_cli_lists_a_dropped_in_method(tmp_path):
    write_method(tmp_path, "focal.py", "focal_test_loss", "Focal distillation for the CLI test.")
    result = run_cli("list", "methods", env={methods.ENV_PATH: str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "focal_test_loss" in result.stdout and "Focal distillation for the CLI test." in result.stdout
    assert "weight: float = 1.0" in result.stdout


def test_cli_methods_dir_option(tmp_path):
    write_method(tmp_path, "focal.py", "focal_cli_loss")
    result = run_cli("list", "methods", "--methods-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "focal_cli_loss" in result.stdout


@pytest.mark.slow
def test_cli_reports_a_duplicate_in_one_line(tmp_path):
    write_method(tmp_path, "dup.py", "dkd")
    result = run_cli("list", "methods", env={methods.ENV_PATH: str(tmp_path)})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "registered twice" in result.stderr and "Traceback" not in result.stderr


def test_readme_example_is_a_complete_method_under_25_lines(tmp_path):
    readme = (REPO / "README.md").read_text()
    start = readme.index("```python\n", readme.index("<!-- example-method -->")) + len("```python\n")
    code = readme[start:readme.index("```", start)]
    assert len(code.strip().splitlines()) < 25
    (tmp_path / "my_method.py").write_text(code)
    result = subprocess.run(
        [sys.executable, "-c", "from kdbench import methods; from kdbench.methods import conformance; "
         f"new = set(methods.available()) - set({sorted(BUILTINS)!r}); "
         "assert len(new) == 1, new; conformance.check(new.pop()); print('ok')"],
        capture_output=True, text=True, env={**os.environ, methods.ENV_PATH: str(tmp_path)}, timeout=120,
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_entry_points_are_loaded(monkeypatch, clean_registry):
    from importlib import metadata

    loaded = []

    class FakeEntryPoint:
        name, value = "fake", "fake_package.losses"

        def load(self):
            loaded.append(self.name)
            methods.register("entry_point_loss")(type("EntryPointLoss", (nn.Module,), {"__doc__": "From a package."}))

    monkeypatch.setattr(metadata, "entry_points", lambda group: [FakeEntryPoint()] if group == methods.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(methods, "_loaded_entry_points", False)
    assert "entry_point_loss" in methods.available() and loaded == ["fake"]
    methods.available()
    assert loaded == ["fake"]  # loaded once


def test_cli_lists_the_fourteen_methods_with_their_defaults():
    result = run_cli("list", "methods")
    assert result.returncode == 0, result.stderr
    for name in BUILTINS:
        assert f"│ {name} " in result.stdout, name
    for line in ("lambda_epochs: int = 10", "ttm_weight: float = 45.0", "gamma: float = 3.5", "alpha: float = 2.25"):
        assert line in result.stdout, line


def test_readme_method_table_is_the_generated_one():
    from kdbench.tools import listing

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert listing.readme_with_methods(readme) == readme, "run: python -m kdbench.tools.listing README.md"
    table = listing.methods_markdown()
    for name in BUILTINS:
        assert f"| `{name}` |" in table
    assert "[zhengli97/CTKD](https://github.com/zhengli97/CTKD/blob/" in table and "Views: weak, strong." in table


def test_unregister_forgets_a_method_and_its_aliases():
    from kdbench.core.registry import Registry

    registry = Registry("method")
    registry.add("mine", object, source="a.py", aliases=("my",))
    registry.remove("my")
    assert "mine" not in registry and "my" not in registry and registry.names() == []
    with pytest.raises(KdbenchError, match="unknown method 'mine'"):
        registry.remove("mine")
    methods.register("one_test_only")(nn.Identity)
    methods.unregister("one_test_only")
    assert "one_test_only" not in methods.available()
