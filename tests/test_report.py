"""`kdbench report`: numbers, marks, formats and plots on hand-built grids."""

import math
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from _report_fake import build_grid, md_rows, write_run
from kdbench import methods, results
from kdbench.report import build, cli as report_cli, layout, published, render
from kdbench.cli import main

def run_report(tmp_path, *extra, plots=False):
    args = ["report", "--results-dir", str(tmp_path / "results"), "--out", str(tmp_path / "out"), *extra]
    if not plots:
        args.append("--no-plots")
    return main(args)


@pytest.fixture
def grid_report(tmp_path):
    build_grid(tmp_path / "results")
    assert run_report(tmp_path) == 0
    return tmp_path / "out"


def test_main_table_markdown_numbers(grid_report):
    text = (grid_report / "main.md").read_text()
    assert "| Method | tA→sA | tB→sB | Average |" in text
    rows = md_rows(text)
    assert list(rows) == ["Teacher", "vanilla", "kd (baseline)", "dkd", "noisy"]
    assert rows["Teacher"] == ["80.00", "75.00", "77.50"]
    assert rows["vanilla"] == ["70.20 ± 0.20 ↓", "61.00 ± 1.00 ↓", "65.60"]
    assert rows["kd (baseline)"] == ["72.50 ± 0.50", "66.00 ± 1.00", "69.25"]
    # dkd: best in A (bold, ↑); only 2 seeds done in B -> (n=2); every B difference is +1 -> ↑ (zero variance).
    assert rows["dkd"] == ["**74.60 ± 0.56** ↑", "66.50 ± 0.71 ↑ (n=2)", "**70.55**"]
    # noisy: best in B but not significant in either pair.
    assert rows["noisy"] == ["72.83 ± 1.15", "**66.67 ± 0.58**", "69.75"]
    assert "paired two-sided t-test" in text and "α = 0.05" in text and "↑ / ↓" in text
    assert "Holm–Bonferroni correction over the methods compared with `kd` in each pair (Holm 1979" in text
    assert "no multiple-comparison correction" not in text
    assert "zero variance" in text
    assert "2 run(s) not done" in text


def test_main_table_csv_numbers(grid_report):
    csv = pd.read_csv(grid_report / "main.csv")
    cell = csv.set_index(["variant", "pair"])
    dkd_a = cell.loc[("dkd", "tA→sA")]
    assert dkd_a["mean"] == pytest.approx(74.6) and dkd_a["std"] == pytest.approx(math.sqrt(0.31))
    assert dkd_a["n"] == 3 and dkd_a["mark"] == "↑" and bool(dkd_a["best"])
    assert (dkd_a["teacher"], dkd_a["student"]) == ("tA", "sA")
    # scipy.stats.ttest_rel; Holm over dkd, noisy and vanilla (statsmodels multipletests).
    assert dkd_a["p_value"] == pytest.approx(0.000755001995138429, rel=1e-6)
    assert dkd_a["p_adjusted"] == pytest.approx(3 * 0.000755001995138429, rel=1e-6)
    assert dkd_a["gain"] == pytest.approx(2.1) and dkd_a["gain_low"] == pytest.approx(1.8515878, rel=1e-6)
    noisy_a = cell.loc[("noisy", "tA→sA")]
    assert noisy_a["p_value"] == pytest.approx(0.6913933000758161, rel=1e-6)
    assert pd.isna(noisy_a["mark"]) and not bool(noisy_a["best"])
    assert cell.loc[("vanilla", "tA→sA"), "p_value"] == pytest.approx(0.0056232873156309955, rel=1e-6)
    assert cell.loc[("vanilla", "tA→sA"), "p_adjusted"] == pytest.approx(2 * 0.0056232873156309955, rel=1e-6)
    assert set(csv["correction"]) == {"holm"} and set(csv["alpha"]) == {0.05}
    dkd_b = cell.loc[("dkd", "tB→sB")]
    assert dkd_b["n"] == 2 and dkd_b["n_max"] == 3 and dkd_b["p_value"] == 0.0
    # The failed kd run (10.0) and the running dkd run (50.0) are not averaged.
    assert cell.loc[("kd", "tA→sA"), "mean"] == pytest.approx(72.5) and cell.loc[("kd", "tA→sA"), "n"] == 3
    assert cell.loc[("kd", "Average"), "mean"] == pytest.approx(69.25)
    assert pd.isna(cell.loc[("kd", "tA→sA"), "p_value"])  # the baseline is not tested against itself
    assert set(csv["metric"]) == {"last"}


def test_gain_table(grid_report):
    text = (grid_report / "gain.md").read_text()
    assert "| Method | tA→sA | tB→sB | Mean over pairs | Won / tied / lost |" in text
    rows = md_rows(text)
    # 95% paired t intervals (scipy.stats.ttest_rel(...).confidence_interval()).
    assert rows["dkd"][0] == "+2.10 [+1.85, +2.35] ↑"
    assert rows["noisy"][1] == "+0.67 [-2.20, +3.54]"
    assert rows["vanilla"][0] == "-2.30 [-3.05, -1.55] ↓"
    # B: dkd has 2 of 3 seeds; every difference is +1, an interval of one point.
    assert rows["dkd"][1] == "+1.00 [+1.00, +1.00] ↑ (n=2)"
    assert rows["dkd"][3] == "2 / 0 / 0" and rows["noisy"][3] == "0 / 2 / 0" and rows["vanilla"][3] == "0 / 0 / 2"
    assert "kd" not in rows
    csv = pd.read_csv(grid_report / "gain.csv").set_index(["variant", "pair"])
    assert csv.loc[("dkd", "tB→sB"), "mean_diff"] == pytest.approx(1.0)
    assert csv.loc[("dkd", "tB→sB"), "n"] == 2
    assert csv.loc[("dkd", "tA→sA"), "t_stat"] == pytest.approx(36.37306695894589, rel=1e-9)
    assert csv.loc[("dkd", "tA→sA"), "ci_high"] == pytest.approx(2.3484121, rel=1e-6)
    # Mean over pairs: mean of 2.1 and 1.0, t interval with df = 1 (scipy.stats.t.interval).
    average = csv.loc[("dkd", "Average")]
    assert average["mean_diff"] == pytest.approx(1.55) and average["n"] == 2
    assert average["ci_low"] == pytest.approx(1.55 - 12.706204736174698 * 0.55, rel=1e-9)
    assert (average["won"], average["tied"], average["lost"], average["untested"]) == (2, 0, 0, 0)


def test_not_done_runs_are_listed_with_reason(grid_report):
    text = (grid_report / "not_done.md").read_text()
    assert "non-finite loss (epoch 5)" in text
    assert "| failed |" in text and "| running |" in text
    csv = pd.read_csv(grid_report / "not_done.csv")
    assert sorted(csv["status"]) == ["failed", "running"]


def test_teacher_split_and_cost(grid_report):
    rows = md_rows((grid_report / "teacher_wrong_right.md").read_text())
    # The fake records put wrong = final - 50 and right = final + 10.
    assert rows["kd"][0] == "22.50 / 82.50"
    cost = pd.read_csv(grid_report / "cost.csv").set_index("pair")
    # 15 done runs in A (kd's failed run is left out), each 3600 s shared by a cohort of 4.
    assert cost.loc["tA→sA", "runs"] == 12
    assert cost.loc["tA→sA", "per_run_s"] == pytest.approx(900.0)
    assert cost.loc["Total", "gpu_hours"] == pytest.approx(23 * 0.25)
    assert "GPU-hours" in (grid_report / "cost.md").read_text()


def test_cpu_runs_are_labelled_cpu_hours(tmp_path):
    build_grid(tmp_path / "results", device="cpu")
    assert run_report(tmp_path) == 0
    text = (tmp_path / "out" / "cost.md").read_text()
    assert "CPU-hours" in text and "GPU-hours" not in text


def test_significance_mark_absent_when_not_significant(tmp_path):
    for seed, (kd, other) in enumerate([(70.0, 70.5), (71.0, 70.8), (72.0, 72.1)]):
        write_run(tmp_path / "results", "g", variant="kd", pair="t->s", seed=seed, final_top1=kd)
        write_run(tmp_path / "results", "g", variant="other", pair="t->s", seed=seed, final_top1=other)
    assert run_report(tmp_path) == 0
    rows = md_rows((tmp_path / "out" / "main.md").read_text())
    assert "↑" not in rows["other"][0] and "↓" not in rows["other"][0]


def test_ties_are_all_bold(tmp_path):
    for seed in range(2):
        for variant in ("kd", "a", "b"):
            write_run(tmp_path / "results", "g", variant=variant, pair="t->s", seed=seed,
                      final_top1={"kd": 70.0, "a": 71.0, "b": 71.0}[variant] + seed)
    assert run_report(tmp_path) == 0
    rows = md_rows((tmp_path / "out" / "main.md").read_text())
    assert rows["a"][0].startswith("**71.50") and rows["b"][0].startswith("**71.50")
    assert not rows["kd (baseline)"][0].startswith("**")


def test_one_seed_grid_has_no_std_and_says_why(tmp_path):
    for variant, value in (("kd", 70.0), ("dkd", 75.0)):
        write_run(tmp_path / "results", "g", variant=variant, pair="t->s", seed=0, final_top1=value)
    assert run_report(tmp_path) == 0
    text = (tmp_path / "out" / "main.md").read_text()
    rows = md_rows(text)
    assert rows["dkd"] == ["**75.00**", "**75.00**"]
    assert "±" not in "".join(rows["kd (baseline)"]) and "↑" not in text.split("- ")[0]
    assert "One seed per cell: no std and no significance test" in text


def test_metric_best_is_labelled_and_uses_best_top1(tmp_path):
    build_grid(tmp_path / "results")
    assert run_report(tmp_path, "--metric", "best") == 0
    text = (tmp_path / "out" / "main_best.md").read_text()
    assert "best epoch on the test set — optimistic" in text.splitlines()[0]
    assert md_rows(text)["kd (baseline)"][0] == "73.50 ± 0.50"
    assert "best epoch on the test set" in (tmp_path / "out" / "main_best.tex").read_text()


def test_metric_val_needs_a_validation_split(tmp_path, capsys):
    build_grid(tmp_path / "results")
    assert run_report(tmp_path, "--metric", "val") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("kdbench: error: --metric val: no done run has a validation split")


def test_metric_val_uses_val_selected_top1(tmp_path):
    for seed in range(2):
        write_run(tmp_path / "results", "g", variant="kd", pair="t->s", seed=seed, final_top1=70.0,
                  val_selected_top1=68.0 + seed)
    write_run(tmp_path / "results", "g", variant="kd", pair="t->s", seed=5, final_top1=70.0)  # no split
    assert run_report(tmp_path, "--metric", "val") == 0
    text = (tmp_path / "out" / "main_val.md").read_text()
    assert md_rows(text)["kd (baseline)"][0] == "**68.50 ± 0.71**"
    assert "1 done run(s) have no validation split" in text


def test_no_results_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "results").mkdir()
    assert run_report(tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdbench: error: no results under") and "kdbench run GRID" in err
    assert len(err.splitlines()) == 1


def test_unknown_explicit_baseline_is_an_error(tmp_path, capsys):
    build_grid(tmp_path / "results")
    assert run_report(tmp_path, "--baseline", "nope") == 2
    assert "variants: vanilla, kd, dkd, noisy" in capsys.readouterr().err


def test_other_baseline_and_alpha(tmp_path):
    build_grid(tmp_path / "results")
    assert run_report(tmp_path, "--baseline", "dkd", "--alpha", "0.001") == 0
    text = (tmp_path / "out" / "main.md").read_text()
    rows = md_rows(text)
    assert "dkd (baseline)" in rows and "α = 0.001" in text
    assert "↓" not in rows["kd"][0]  # p = 0.000755 < 0.001 alone, 0.00227 after Holm over 3 methods


def test_teacherless_vanilla_fills_every_pair_with_its_student(tmp_path):
    root = tmp_path / "results"
    for seed in range(2):
        write_run(root, "g", variant="vanilla", pair="->s", seed=seed, final_top1=60.0 + seed)
        write_run(root, "g", variant="kd", pair="t1->s", seed=seed, final_top1=65.0 + seed)
        write_run(root, "g", variant="kd", pair="t2->s", seed=seed, final_top1=66.0 + seed)
    assert run_report(tmp_path) == 0
    rows = md_rows((tmp_path / "out" / "main.md").read_text())
    assert rows["vanilla"][:2] == ["60.50 ± 0.71 ↓", "60.50 ± 0.71 ↓"]


REAL_GRID = """name: g
dataset: cifar100
pairs:
  - {teacher: wrn_40_2, student: wrn_16_2}
  - {teacher: {arch: resnet32x4}, student: resnet8x4}
methods:
  dkd: {}
  noisy: {method: kd, temperature: 2.0}
  kd: {}
  vanilla: {}
"""


def build_real_grid(root, grid_text=REAL_GRID):
    """Runs written in an order unlike the grid file's: resnet32x4 first, vanilla first."""
    for pair in ("resnet32x4->resnet8x4", "wrn_40_2->wrn_16_2"):
        for variant in ("vanilla", "kd", "noisy", "dkd"):
            for seed in range(2):
                write_run(root, "g", variant=variant, pair=pair, seed=seed, final_top1=70.0 + seed)
    if grid_text is not None:
        (root / "g" / "grid.yaml").write_text(grid_text)


def test_grid_yaml_gives_the_row_and_pair_order(tmp_path, capsys):
    build_real_grid(tmp_path / "results")
    assert run_report(tmp_path) == 0
    text = (tmp_path / "out" / "main.md").read_text()
    assert list(md_rows(text)) == ["Teacher", "dkd", "noisy", "kd (baseline)", "vanilla"]
    assert "| Method | wrn_40_2→wrn_16_2 | resnet32x4→resnet8x4 | Average |" in text
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("grid_text, why", [
    (None, "g/grid.yaml: no copy of the grid file"),
    ("name: g\ndataset: cifar100\npairs: []\nmethods: {kd: {}}\n", "g/grid.yaml: pairs: expected"),
])
def test_missing_or_broken_grid_copy_gives_first_seen_order_and_one_warning(tmp_path, capsys, grid_text, why):
    build_real_grid(tmp_path / "results", grid_text)
    assert run_report(tmp_path) == 0
    text = (tmp_path / "out" / "main.md").read_text()
    assert list(md_rows(text)) == ["Teacher", "vanilla", "kd (baseline)", "noisy", "dkd"]
    assert "| Method | resnet32x4→resnet8x4 | wrn_40_2→wrn_16_2 | Average |" in text
    err = capsys.readouterr().err
    assert err.startswith("kdbench: warning: ") and why in err and "rows and columns in first-seen order" in err
    assert len(err.strip().splitlines()) == 1


PLUGIN = """from torch import nn
import torch.nn.functional as F
from kdbench.methods import register


@register("my_plugin_kd")
class MyPluginKD(nn.Module):
    \"\"\"A plug-in method for the report's grid-order test.\"\"\"

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = weight

    def forward(self, student_logits, teacher_logits, targets, *, epoch):
        return {"ce": self.weight * F.cross_entropy(student_logits, targets)}
"""


@pytest.mark.slow
def test_grid_with_a_plugin_method_needs_methods_dir_or_the_env_path(tmp_path, capsys):
    root = tmp_path / "results"
    build_real_grid(root, REAL_GRID.replace("noisy: {method: kd, temperature: 2.0}", "noisy: {method: my_plugin_kd}"))
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "my_plugin.py").write_text(PLUGIN)

    def report(*extra, env=None):
        args = [sys.executable, "-m", "kdbench", "report", "--results-dir", str(root), "--out", str(tmp_path / "out"),
                "--no-plots", *extra]
        env = {**os.environ, **(env or {})}
        env.pop(methods.ENV_PATH, None) if env.get(methods.ENV_PATH) is None else None
        proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stderr, list(md_rows((tmp_path / "out" / "main.md").read_text()))

    # Without the plug-in (in this process it is not registered): first-seen order, one warning.
    assert run_report(tmp_path) == 0
    err = capsys.readouterr().err
    assert "unknown method 'my_plugin_kd'" in err and "--methods-dir" in err and len(err.strip().splitlines()) == 1
    assert list(md_rows((tmp_path / "out" / "main.md").read_text()))[1] == "vanilla"
    for extra, env in ((("--methods-dir", str(plugins)), None), ((), {methods.ENV_PATH: str(plugins)})):
        err, rows = report(*extra, env=env)
        assert "warning" not in err and rows == ["Teacher", "dkd", "noisy", "kd (baseline)", "vanilla"]


def test_incomplete_average_is_marked(tmp_path):
    root = tmp_path / "results"
    for seed in range(2):
        write_run(root, "g", variant="kd", pair="t1->s", seed=seed, final_top1=65.0)
        write_run(root, "g", variant="kd", pair="t2->s", seed=seed, final_top1=67.0)
        write_run(root, "g", variant="new", pair="t1->s", seed=seed, final_top1=68.0)
    assert run_report(tmp_path) == 0
    rows = md_rows((tmp_path / "out" / "main.md").read_text())
    assert rows["new"] == ["**68.00 ± 0.00** ↑", "—", "68.00 (1/2 pairs)"]
    assert rows["kd (baseline)"][2] == "**66.00**"  # best among complete rows


def test_reproduction_gap_matches_method_and_standardize(tmp_path):
    root = tmp_path / "results"
    for seed in range(2):
        write_run(root, "g", variant="vanilla", pair="->resnet8x4", seed=seed, final_top1=72.0)  # shared run
        for variant, value in (("kd", 73.83), ("kd_ls", 76.12), ("dkd", 76.0)):
            write_run(root, "g", variant=variant, pair="resnet32x4->resnet8x4", seed=seed, final_top1=value,
                      teacher_top1=79.42)
    assert run_report(tmp_path) == 0
    csv = pd.read_csv(tmp_path / "out" / "reproduction.csv").set_index(["variant", "published_method"])
    assert csv.loc[("kd", "kd"), "gap"] == pytest.approx(0.50)
    assert csv.loc[("kd_ls", "kd+ls"), "gap"] == pytest.approx(-0.50)
    assert csv.loc[("vanilla", "vanilla"), "gap"] == pytest.approx(-0.50)
    assert csv.loc[("dkd", "dkd"), "gap"] == pytest.approx(-0.32)
    assert csv.loc[("Teacher", "teacher"), "gap"] == pytest.approx(0.0)
    assert ("kd_ls", "kd") not in csv.index and ("kd", "kd+ls") not in csv.index
    assert ("dkd", "dkd+ls") not in csv.index
    text = (tmp_path / "out" / "reproduction.md").read_text()
    assert "| resnet32x4→resnet8x4 | kd | kd | 73.83 ± 0.00 (n=2) | 73.33 | +0.50 |" in text
    assert "[3rd-party]" in text  # rld is not in this grid, but the note explains the tag


def test_published_results_are_complete_and_cited():
    pub = published.load_published()
    assert list(pub.columns) == ["dataset", "teacher", "student", "method", "top1", "source", "protocol"]
    assert pub["source"].str.len().gt(10).all()
    # Every published method names a registered kdbench method, with "+ls" for logit standardization.
    named = {published.published_spec(m)[0] for m in pub["method"] if m != "teacher"}
    assert named <= set(methods.available())
    assert pub["top1"].between(60, 81).all()
    assert (pub.loc[pub["method"] == "rld", "source"].str.contains(r"\[3rd-party\]")).all()
    assert not pub.duplicated(["dataset", "teacher", "student", "method"]).any()
    row = pub[(pub["teacher"] == "resnet32x4") & (pub["student"] == "resnet8x4")].set_index("method")["top1"]
    expected = {"teacher": 79.42, "vanilla": 72.50, "kd": 73.33, "dkd": 76.32, "kd+ls": 76.62, "dkd+ls": 77.01,
                "rld": 76.64}
    assert {k: row[k] for k in expected} == expected
    assert set(pub["dataset"]) == {"cifar100", "imagenet"}
    assert published.published_spec("dkd+ls") == ("dkd", {"standardize": True})
    assert published.published_spec("ttm") == ("ttm", {"standardize": False})


def test_latex_escaping():
    grid = layout.Grid(header=["Method", "t_1→s_1"],
                       rows=[[layout.Cell(text="kd_ls"), layout.Cell(value=1.234, std=0.5, mark="↑", bold=True)]])
    view = layout.View(name="x", title="a_b 50% & c", frame=pd.DataFrame(), notes=["`kd_ls` is **bold** α"],
                       grid=lambda frame: grid)
    tex = render.to_latex(view)
    assert r"a\_b 50\% \& c" in tex and r"kd\_ls" in tex
    assert r"\textbf{1.23 $\pm$ 0.50} $\uparrow$" in tex
    assert r"\texttt{kd\_ls} is \textbf{bold} $\alpha$" in tex
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_latex_tables_compile(tmp_path):
    root = tmp_path / "results"
    build_grid(root)
    for seed in range(2):  # a pair with published numbers, so that the reproduction table exists too
        for variant in ("kd", "rld"):
            write_run(root, "g", variant=variant, pair="resnet32x4->resnet8x4", seed=seed, final_top1=74.0 + seed,
                      protocol="own protocol: 50% longer & a_b" if variant == "rld" else None)
    write_run(root, "g", variant="rld", pair="tA->sA", seed=0, final_top1=None, status="failed",
              failure={"reason": "ValueError: x_y < 1", "epoch": 1, "error_log": "error.log"})
    assert run_report(tmp_path) == 0
    tex_files = sorted((tmp_path / "out").glob("*.tex"))
    assert {p.stem for p in tex_files} == {"main", "gain", "seeds_needed", "best_vs_last", "reproduction",
                                           "teacher_wrong_right", "agreement_calibration", "cost", "environment",
                                           "teachers", "not_done"}
    doc = tmp_path / "doc.tex"
    inputs = "\n".join(rf"\input{{{p}}}" for p in tex_files)
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n" + inputs + "\n\\end{document}\n")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 1000


@pytest.mark.slow
def test_plots_are_written(tmp_path):
    build_grid(tmp_path / "results")
    assert run_report(tmp_path, plots=True) == 0
    plots = tmp_path / "out" / "plots"
    for name in ("bars_tA_to_sA", "bars_tB_to_sB", "curves_tA_to_sA", "curves_tB_to_sB", "gain_heatmap"):
        for ext in ("png", "pdf"):
            path = plots / f"{name}.{ext}"
            assert path.exists() and path.stat().st_size > 1000, path
    first = {p.relative_to(tmp_path / "out"): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert run_report(tmp_path, plots=True) == 0
    again = {p.relative_to(tmp_path / "out"): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert again == first  # the same runs give the same files, byte for byte (no timestamp in the PDFs)


def test_every_grid_is_reported_by_default(tmp_path, capsys):
    build_grid(tmp_path / "results", grid="g1")
    build_grid(tmp_path / "results", grid="g2")
    assert main(["report", "--results-dir", str(tmp_path / "results"), "--no-plots"]) == 0
    for grid in ("g1", "g2"):
        assert (tmp_path / "results" / grid / "report" / "main.md").exists()
        assert (tmp_path / "results" / grid / "report" / "report.md").exists()
    out = capsys.readouterr().out
    assert f"to {tmp_path / 'results' / 'g1' / 'report'}/" in out
    assert main(["report", "--results-dir", str(tmp_path / "results"), "--grid", "g2", "--no-plots",
                 "--out", str(tmp_path / "only")]) == 0
    assert (tmp_path / "only" / "main.md").exists()


def test_frames_api_without_cli(tmp_path):
    build_grid(tmp_path / "results")
    runs = results.load(tmp_path / "results")
    rep = build.build_report(runs, results.load_metrics(tmp_path / "results"), grid="g")
    assert [v.name for v in rep.views] == ["main", "gain", "seeds_needed", "best_vs_last", "teacher_wrong_right",
                                           "agreement_calibration", "cost", "environment", "teachers", "not_done",
                                           "runs", "curves"]
    assert [v.name for v in rep.tables] == [v.name for v in rep.views[:-2]]
    assert rep.prepared.variants == ["vanilla", "kd", "dkd", "noisy"]
    assert "±" in render.to_markdown(rep.views[0])


def test_grid_order_reads_a_real_grid_file_with_sweeps(tmp_path):
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "grid.yaml").write_text(
        "name: g\ndataset: cifar100\npairs:\n  - {teacher: wrn_40_2, student: wrn_16_2}\n"
        "  - {teacher: resnet32x4, student: resnet8x4}\n"
        "methods:\n  vanilla: {}\n  rld: {beta: [2, 8]}\n  kd: {temperature: 4}\n")
    variants, pairs, warning = report_cli.grid_order(tmp_path, "g")
    assert variants == ["vanilla", "rld(beta=2)", "rld(beta=8)", "kd"]
    assert pairs == ["wrn_40_2->wrn_16_2", "resnet32x4->resnet8x4"]
    assert warning is None
