"""The report's views: every format shows its frame's numbers, and the statistics match the SciPy fixture."""

from html.parser import HTMLParser
import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from _report_fake import build_grid, md_rows, write_run
from kdbench import results
from kdbench.cli import main
from kdbench.report import build, options, prepare, provenance, render
from kdbench.report import html as report_html
from kdbench.report.layout import finite, render_cell

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "stats_golden.json").read_text())


def full_grid(root):
    """`build_grid` plus a pair with published numbers, a protocol note and a failed run with an error log."""
    build_grid(root)
    for seed in range(3):
        for variant, value in (("vanilla", 72.1), ("kd", 73.5), ("rld", 75.9)):
            write_run(root, "g", variant=variant, pair="resnet32x4->resnet8x4", seed=seed, final_top1=value + seed / 10,
                      protocol="own protocol: 480 epochs" if variant == "rld" else None)
    write_run(root, "g", variant="rld", pair="tA->sA", seed=0, final_top1=None, status="failed",
              failure={"reason": "AttributeError: 'NoneType' object has no attribute 'x'", "epoch": 2, "step": 7,
                       "terms": None, "error_log": "error.log"})


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("views") / "results"
    full_grid(root)
    return build.build_report(results.load(root), results.load_metrics(root), grid="g")


# ---------------------------------------------------------------------------- every format against the frame


def latex_rows(tex):
    body = tex.split("\\midrule\n", 1)[1].split("\\bottomrule", 1)[0]
    return [line.removesuffix(" \\\\").split(" & ") for line in body.splitlines() if line != "\\midrule"]


def markdown_rows(md):
    lines = [line for line in md.splitlines() if line.startswith("|")][2:]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]


class _Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self._cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag == "td":
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "td":
            self.rows[-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def html_rows(table):
    parser = _Cells()
    parser.feed(table)
    return [r for r in parser.rows if r]


def test_every_format_shows_the_numbers_of_the_frame(report, tmp_path):
    page = report_html.html_page(report.grid, report.prepared, report.views)
    tables = report.tables
    assert {v.name for v in tables} >= {"main", "gain", "seeds_needed", "best_vs_last", "reproduction",
                                        "teacher_wrong_right", "agreement_calibration", "cost", "environment",
                                        "teachers", "not_done"}
    checked = 0
    for view in tables:
        grid = view.layout()
        frame = view.frame
        md, tex = markdown_rows(render.to_markdown(view)), latex_rows(render.to_latex(view))
        table = report_html.grid_table(grid, heat=view.name == "gain")
        assert table in page, view.name
        rows_html = html_rows(table)
        assert len(md) == len(tex) == len(rows_html) == len(grid.rows), view.name
        for i, row in enumerate(grid.rows):
            for j, cell in enumerate(row):
                plain = render_cell(cell, bold=lambda s: s, pm=" ± ", arrow=lambda a: a)
                assert md[i][j].replace("**", "").replace("\\|", "|") == plain, (view.name, i, j)
                assert rows_html[i][j] == plain, (view.name, i, j)
                if cell.source is None:
                    continue
                index, column = cell.source
                value = frame.at[index, column]
                assert cell.value == value or (math.isnan(cell.value) and math.isnan(value)), (view.name, i, j)
                if finite(value):
                    shown = f"{value:+.2f}" if cell.signed else f"{value:.2f}"
                    assert shown in plain and shown.replace("-", "$-$") in tex[i][j].replace("-", "$-$"), \
                        (view.name, i, j)
                    checked += 1
    assert checked > 100
    # CSV: the frame itself, column by column.
    for view in report.views:
        back = pd.read_csv(tmp_path / "x.csv") if (tmp_path / "x.csv").write_text(render.to_csv(view)) else None
        assert list(back.columns) == list(view.frame.columns), view.name
        for column in view.frame.columns:
            ours = view.frame[column]
            if pd.api.types.is_numeric_dtype(ours) and not pd.api.types.is_bool_dtype(ours):
                assert back[column].to_numpy(dtype=float) == pytest.approx(ours.to_numpy(dtype=float), rel=1e-9,
                                                                           nan_ok=True), (view.name, column)


def test_options_match_the_report_constants():
    assert options.METRIC_CHOICES == list(prepare.METRICS)
    assert options.CORRECTION_CHOICES == list(prepare.CORRECTIONS)


# ---------------------------------------------------------------------------- statistics against the fixture


def fixture_report(tmp_path, families, alpha):
    root = tmp_path / "results"
    for k, fam in enumerate(families):
        pair = f"t{k}->s{k}"
        for variant, values in [("kd", fam["baseline"]), *fam["methods"].items()]:
            for seed, value in values.items():
                write_run(root, "g", variant=variant, pair=pair, seed=int(seed), final_top1=value)
    return build.build_report(results.load(root), grid="g", alpha=alpha)


@pytest.mark.parametrize("names, alpha", [(["2 seeds", "3 seeds", "5 seeds"], 0.05), (["10 seeds, alpha 0.01"], 0.01)])
def test_gains_intervals_holm_and_seeds_match_scipy(tmp_path, names, alpha):
    families = [f for f in GOLDEN["families"] if f["name"] in names]
    rep = fixture_report(tmp_path, families, alpha)
    gain = rep.view("gain").frame.set_index(["variant", "pair"])
    seeds = rep.view("seeds_needed").frame.set_index(["variant", "pair"])
    main_frame = rep.view("main").frame.set_index(["variant", "pair"])
    checked = 0
    for k, fam in enumerate(families):
        pair = f"t{k}→s{k}"
        for method, expected in fam["results"].items():
            row = gain.loc[(method, pair)]
            assert row["n"] == expected["n"]
            for ours, theirs in ((row["mean_diff"], expected["mean_diff"]), (row["ci_low"], expected["ci_low"]),
                                 (row["ci_high"], expected["ci_high"]), (row["p_value"], expected["p"]),
                                 (row["p_adjusted"], expected["p_holm"])):
                assert (theirs is None and math.isnan(ours)) or ours == pytest.approx(theirs, abs=1e-6), method
            significant = expected["p_holm"] is not None and expected["p_holm"] < alpha
            assert (row["mark"] != "") == significant, method
            assert main_frame.loc[(method, pair), "mark"] == row["mark"]
            if expected["n"] >= 2:
                s = seeds.loc[(method, pair)]
                mdd = expected["mdd"]
                assert (mdd is None and math.isnan(s["mdd"])) or s["mdd"] == pytest.approx(mdd, rel=1e-6), method
                needed = expected["seeds_needed"]
                assert (needed is None and math.isnan(s["seeds_needed"])) or s["seeds_needed"] == needed, method
            checked += 1
    assert checked == sum(len(f["results"]) for f in families)


def test_correction_none_uses_raw_p_values(tmp_path):
    fam = next(f for f in GOLDEN["families"] if f["name"] == "3 seeds")
    root = tmp_path / "results"
    for variant, values in [("kd", fam["baseline"]), *fam["methods"].items()]:
        for seed, value in values.items():
            write_run(root, "g", variant=variant, pair="t->s", seed=int(seed), final_top1=value)
    holm = build.build_report(results.load(root), grid="g").view("gain").frame.set_index(["variant", "pair"])
    raw = build.build_report(results.load(root), grid="g", correction="none")
    frame = raw.view("gain").frame.set_index(["variant", "pair"])
    # tie_a and tie_b: p = 0.0494 each, significant alone, not after Holm (0.148).
    tie = ("tie_a", "t→s")
    assert frame.loc[tie, "mark"] == "↑" and holm.loc[tie, "mark"] == ""
    assert frame.loc[tie, "p_adjusted"] == frame.loc[tie, "p_value"]
    text = render.to_markdown(raw.view("main"))
    assert "each cell on its own, with no multiple-comparison correction (--correction none)" in text
    assert "Holm" not in text


# ---------------------------------------------------------------------------- the other views


def test_seeds_needed_view(report):
    frame = report.view("seeds_needed").frame.set_index(["variant", "pair"])
    # vanilla in B: every difference is −5 (zero variance): no estimate.
    assert math.isnan(frame.loc[("vanilla", "tB→sB"), "mdd"]) and math.isnan(frame.loc[("vanilla", "tB→sB"), "seeds_needed"])
    rows = {(r[0], r[1]): r for r in markdown_rows(render.to_markdown(report.view("seeds_needed")))}
    assert rows[("tB→sB", "vanilla")][5:] == ["—", "—"]
    assert rows[("tA→sA", "dkd")][2:4] == ["3", "+2.10"]
    assert "noncentral t" in render.to_markdown(report.view("seeds_needed"))


def test_best_against_last_view(report):
    frame = report.view("best_vs_last").frame.set_index("variant")
    # best_top1 = last + 1 in every build_grid run; the resnet32x4 pair's runs have best = last.
    assert frame.loc["dkd", "optimism_mean"] == pytest.approx(1.0) and frame.loc["dkd", "runs"] == 5
    assert frame.loc["kd", "runs"] == 9 and frame.loc["kd", "optimism_mean"] == pytest.approx(6 / 9)
    assert frame.loc["All runs", "runs"] == 32
    text = render.to_markdown(report.view("best_vs_last"))
    assert "megvii-research/mdistiller#30" in text and not re.search(r"(?<![-\w])research/", text)


def test_agreement_calibration_view(report):
    view = report.view("agreement_calibration")
    frame = view.frame.set_index(["variant", "pair"])
    # The fake derives the fields linearly from final_top1 (`BEYOND_TOP1`), so a cell's means follow its top-1s.
    kd = frame.loc[("kd", "tA→sA")]  # 72.0, 72.5, 73.0 (the failed seed 3 is not averaged)
    assert kd["seeds"] == 3 and kd["agreement_n"] == kd["ece_n"] == 3
    assert kd["agreement_mean"] == pytest.approx(80.5) and kd["agreement_std"] == pytest.approx(0.5)
    assert kd["agreement_teacher_wrong_mean"] == pytest.approx(32.5)
    assert kd["ece_mean"] == pytest.approx(2.75) and kd["nll_mean"] == pytest.approx(1.1)
    # `LEGACY` runs recorded none of them: every seed of vanilla in B, seed 0 of noisy in B.
    vanilla = frame.loc[("vanilla", "tB→sB")]
    assert vanilla["seeds"] == 3 and vanilla["ece_n"] == 0
    assert all(math.isnan(vanilla[f"{m}_mean"]) for m in ("agreement", "agreement_teacher_wrong", "ece", "nll"))
    noisy = frame.loc[("noisy", "tB→sB")]  # seeds 1 and 2: 66.0, 67.0
    assert noisy["seeds"] == 3 and noisy["nll_n"] == 2 and noisy["ece_mean"] == pytest.approx(3.35)
    rows = {(r[0], r[1]): r for r in markdown_rows(render.to_markdown(view))}
    assert rows[("tB→sB", "vanilla")][2:] == ["3", "—", "—", "—", "—"]
    assert rows[("tB→sB", "noisy")][5] == "3.35 ± 0.07 (n=2)"
    assert rows[("tA→sA", "kd")][3:] == ["80.50 ± 0.50", "32.50 ± 0.50", "2.75 ± 0.05", "1.10 ± 0.02"]


def test_agreement_view_without_a_teacher_and_without_any_record(tmp_path):
    root = tmp_path / "results"
    for seed in range(2):
        write_run(root, "g", variant="kd", pair="t->s", seed=seed, final_top1=70.0 + seed)
        write_run(root, "g", variant="vanilla", pair="->s", seed=seed, final_top1=68.0 + seed)
    view = build.build_report(results.load(root), grid="g").view("agreement_calibration")
    vanilla = view.frame.set_index(["variant", "pair"]).loc[("vanilla", "t→s")]  # the teacherless run fills the pair
    assert vanilla["agreement_n"] == 0 and math.isnan(vanilla["agreement_mean"])
    assert vanilla["ece_n"] == 2 and vanilla["ece_mean"] == pytest.approx(3.15)
    old = tmp_path / "old"
    for seed in range(2):
        write_run(old, "g", variant="kd", pair="t->s", seed=seed, final_top1=70.0 + seed, legacy=True)
    runs = results.load(old)  # summaries without the fields load, and show them missing
    assert runs[["test_agreement", "test_agreement_teacher_wrong", "test_ece", "test_nll"]].isna().all().all()
    assert build.build_report(runs, grid="g").view("agreement_calibration") is None


def test_provenance_views(report):
    env = report.view("environment").frame
    assert env[["kdbench", "torch", "device", "runs"]].values.tolist() == [["0.1", "2.4", "cuda:0", 32]]
    teachers = report.view("teachers").frame.set_index("teacher")
    assert teachers.loc["tA", "teacher_sha256"] == "0" * 64 and teachers.loc["tA", "teacher_top1"] == 80.0
    assert teachers.loc["resnet32x4", "runs"] == 9


def test_not_done_view_shows_the_error_log(report):
    view = report.view("not_done")
    frame = view.frame.set_index("variant")
    log = frame.loc["rld", "error_log"]
    assert log.endswith("error.log") and Path(log).parent.name == frame.loc["rld", "run_id"]
    assert frame.loc["kd", "error_log"] == ""
    text = render.to_markdown(view)
    assert "| Error log |" in text and log in text and "traceback" in text


def test_protocol_notes_mark_rows_in_the_main_and_reproduction_views(report):
    main_text = render.to_markdown(report.view("main"))
    assert "rld †" in md_rows(main_text)
    assert "- † `rld`: own protocol: 480 epochs" in main_text
    main_frame = report.view("main").frame
    assert set(main_frame.loc[main_frame["variant"] == "rld", "protocol"]) == {"own protocol: 480 epochs"}
    assert set(main_frame.loc[main_frame["variant"] == "kd", "protocol"]) == {""}
    repro = report.view("reproduction")
    assert repro.frame.set_index("variant").loc["rld", "protocol"] == "own protocol: 480 epochs"
    assert "| resnet32x4→resnet8x4 | rld † | rld |" in render.to_markdown(repro)


def test_protocols_can_be_given_to_the_api(tmp_path):
    build_grid(tmp_path / "results")
    rep = build.build_report(results.load(tmp_path / "results"), grid="g", protocols={"dkd": "its own schedule"})
    assert "- † `dkd`: its own schedule" in render.to_markdown(rep.view("main"))
    assert "dkd †" in md_rows(render.to_markdown(rep.view("main")))


def test_reproduction_notes_cite_public_sources(report):
    text = render.to_markdown(report.view("reproduction"))
    assert not re.search(r"(?<![-\w])research/", text) and "methods.md" not in text
    assert "megvii-research/mdistiller#30" in text and "sunshangquan/logit-standardization-KD#23" in text


def test_no_report_note_cites_an_internal_file(report):
    for view in report.views:
        for note in view.notes:
            assert not re.search(r"(?<![-\w])research/|methods\.md|/work/|notes/", note), (view.name, note)


def test_curves_view_and_csv_only_views(tmp_path, report):
    curves = report.view("curves").frame
    dkd_b = curves[(curves["variant"] == "dkd") & (curves["pair"] == "tB→sB")]
    assert list(dkd_b["epoch"]) == [1, 2, 3] and set(dkd_b["n"]) == {2}
    assert dkd_b["max"].iloc[-1] == pytest.approx(67.0) and dkd_b["min"].iloc[-1] == pytest.approx(66.0)
    out = tmp_path / "out"
    build.write_report(report, out, with_plots=False)
    assert (out / "curves.csv").exists() and not (out / "curves.md").exists()
    assert (out / "runs.csv").exists() and not (out / "runs.md").exists()
    assert "curves" not in (out / "report.md").read_text().lower().split("###")[0]


def test_report_html_flag_writes_one_page(tmp_path, capsys):
    build_grid(tmp_path / "results")
    assert main(["report", "--results-dir", str(tmp_path / "results"), "--out", str(tmp_path / "out"),
                 "--no-plots", "--html"]) == 0
    assert (tmp_path / "out" / "report.html").exists()
    assert f"open {tmp_path / 'out' / 'report.html'}" in capsys.readouterr().out


def test_teacher_paths_inside_the_results_folder_are_shown_relative_to_it(tmp_path):
    results_dir = tmp_path / "results"
    inside = results_dir / "teachers" / "d9e3805a8846" / "teacher.pth"
    assert provenance.shown_path(str(inside), results_dir) == "teachers/d9e3805a8846/teacher.pth"
    assert provenance.shown_path("/data/cifar_teachers/resnet56_vanilla/ckpt_epoch_240.pth", results_dir) \
        == "/data/cifar_teachers/resnet56_vanilla/ckpt_epoch_240.pth"
    assert provenance.shown_path(str(inside), None) == str(inside)
    assert provenance.shown_path("", results_dir) == ""


def test_a_cell_whose_runs_used_different_teachers_is_marked_with_both_hashes(tmp_path):
    root = tmp_path / "results"
    for seed, sha in enumerate(["a" * 64, "a" * 64, "b" * 64]):
        write_run(root, "g", variant="kd", pair="t->s", seed=seed, final_top1=70.0 + seed, teacher_sha256=sha)
        write_run(root, "g", variant="vanilla", pair="t->s", seed=seed, final_top1=68.0 + seed)
    main_view = build.build_report(results.load(root), grid="g").view("main")
    frame = main_view.frame.set_index(["variant", "pair"])
    assert frame.loc[("kd", "t→s"), "mark"].endswith("‡")
    assert "‡" not in frame.loc[("vanilla", "t→s"), "mark"]
    (note,) = [n for n in main_view.notes if n.startswith("‡")]
    runs = results.load(root).set_index(["variant", "seed"])["run_id"]
    assert f"kd, t→s: run {runs[('kd', 0)]} (SHA-256 {'a' * 16}…), run {runs[('kd', 2)]} (SHA-256 {'b' * 16}…)" in note
