"""`kdbench compare A B`: differences of two results folders (or two grids) on their shared cells."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from _report_fake import build_grid, md_rows, write_run
from kdbench.cli import main
from kdbench.errors import KdbenchError
from kdbench.report import compare

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "stats_golden.json").read_text())


def shift(folder, variant, by, field="final_top1"):
    """Add `by` to `field` of every run of `variant` under `folder`."""
    for path in Path(folder).rglob("summary.json"):
        record = json.loads(path.read_text())
        if record["variant"] == variant and record.get(field) is not None:
            record[field] += by
            path.write_text(json.dumps(record))


def run_compare(a, b, *extra, out=None):
    args = ["compare", str(a), str(b), *extra] + (["--out", str(out)] if out else [])
    return main(args)


@pytest.fixture
def grid_copy(tmp_path):
    build_grid(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    return tmp_path / "a", tmp_path / "b"


def test_a_folder_against_itself_has_no_difference(grid_copy, tmp_path, capsys):
    a, _ = grid_copy
    assert run_compare(a, a, out=tmp_path / "out") == 0
    frame = pd.read_csv(tmp_path / "out" / "compare.csv")
    assert (frame["mean_diff"] == 0).all() and frame["mark"].isna().all()
    cells = frame[(frame["pair"] != "Average") & (frame["variant"] != "Teacher")]
    assert len(cells) == 8 and set(cells["test"]) == {"paired"} and set(cells["p_value"]) == {1.0}
    out = capsys.readouterr().out
    assert "No significant difference in 8 cells (largest |B − A|: 0.00 points)." in out
    assert (tmp_path / "out" / "compare.md").exists() and (tmp_path / "out" / "compare.tex").exists()


def test_a_shifted_method_is_the_only_difference(grid_copy, tmp_path, capsys):
    a, b = grid_copy
    shift(b, "dkd", 0.5)
    assert run_compare(a, b, out=tmp_path / "out") == 0
    frame = pd.read_csv(tmp_path / "out" / "compare.csv").set_index(["variant", "pair"])
    cells = frame.drop(index="Average", level="pair")
    changed = cells[cells["mean_diff"].abs() > 1e-9]
    assert list(changed.index) == [("dkd", "tA→sA"), ("dkd", "tB→sB")]
    assert changed["mean_diff"].tolist() == pytest.approx([0.5, 0.5])
    assert set(changed["mark"]) == {"↑"} and cells.drop(index="dkd", level="variant")["mark"].isna().all()
    out = capsys.readouterr().out
    assert "Significant differences (B − A) in 2 of 8 cells: dkd in tA→sA (+0.50↑); dkd in tB→sB (+0.50↑)." in out
    rows = md_rows((tmp_path / "out" / "compare.md").read_text())
    assert rows["dkd"][0] == "+0.50 [+0.50, +0.50] ↑" and rows["kd"][0] == "+0.00 [+0.00, +0.00]"


def test_seeds_that_do_not_match_are_compared_with_welch(tmp_path):
    case = GOLDEN["welch"][0]  # scipy.stats.ttest_ind(equal_var=False) of B against A
    for seed, value in enumerate(case["b"]):
        write_run(tmp_path / "a", "g", variant="kd", pair="t->s", seed=seed, final_top1=value)
    for seed, value in enumerate(case["a"]):
        write_run(tmp_path / "b", "g", variant="kd", pair="t->s", seed=10 + seed, final_top1=value)
    assert run_compare(tmp_path / "a", tmp_path / "b", out=tmp_path / "out") == 0
    row = pd.read_csv(tmp_path / "out" / "compare.csv").set_index(["variant", "pair"]).loc[("kd", "t→s")]
    assert row["test"] == "welch" and row["n_paired"] == 0
    assert row["t_stat"] == pytest.approx(case["t"], abs=1e-6) and row["df"] == pytest.approx(case["df"], abs=1e-6)
    assert row["p_value"] == pytest.approx(case["p"], abs=1e-6)
    assert row["ci_low"] == pytest.approx(case["ci_low"], abs=1e-6)
    assert row["ci_high"] == pytest.approx(case["ci_high"], abs=1e-6)
    assert "(unpaired)" in (tmp_path / "out" / "compare.md").read_text()


def test_two_grids_in_one_folder_and_what_is_not_shared(tmp_path, capsys):
    build_grid(tmp_path / "results", grid="g1")
    build_grid(tmp_path / "results", grid="g2")
    for seed in range(2):
        write_run(tmp_path / "results", "g2", variant="extra", pair="tA->sA", seed=seed, final_top1=70.0)
        write_run(tmp_path / "results", "g2", variant="kd", pair="tC->sC", seed=seed, final_top1=70.0)
    assert run_compare(tmp_path / "results" / "g1", tmp_path / "results" / "g2", out=tmp_path / "out") == 0
    text = (tmp_path / "out" / "compare.md").read_text()
    assert "Not compared, pairs only in B: `tC→sC`." in text and "Not compared, methods only in B: `extra`." in text
    # A results folder with several grids needs --grid; with it, both sides read that grid.
    assert run_compare(tmp_path / "results", tmp_path / "results") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"kdbench: error: {tmp_path / 'results'}: holds several grids (g1, g2): choose one with --grid, "
                   f"or give the grid's folder ({tmp_path / 'results'}/GRID)")
    assert run_compare(tmp_path / "results", tmp_path / "results", "--grid", "g2") == 0


def test_locate_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(KdbenchError, match="no results under"):
        compare.locate(tmp_path / "empty", None)
    build_grid(tmp_path / "r", grid="g")
    assert compare.locate(tmp_path / "r", None) == (tmp_path / "r", "g")
    assert compare.locate(tmp_path / "r" / "g", "ignored") == (tmp_path / "r", "g")
    with pytest.raises(KdbenchError, match=r"nope: no such grid .*grids there: g\)"):
        compare.locate(tmp_path / "r", "nope")


def test_nothing_shared_is_one_error(tmp_path, capsys):
    write_run(tmp_path / "a", "g", variant="kd", pair="t1->s1", seed=0, final_top1=70.0)
    write_run(tmp_path / "b", "g", variant="kd", pair="t2->s2", seed=0, final_top1=70.0)
    assert run_compare(tmp_path / "a", tmp_path / "b") == 2
    assert "share no pair and method with done runs" in capsys.readouterr().err
