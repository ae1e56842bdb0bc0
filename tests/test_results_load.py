"""kdbench.results: loading run records into frames."""

import json

import pandas as pd
import pytest

from _report_fake import write_run
from kdbench import results
from kdbench.errors import KdbenchError


def test_load_one_row_per_run_with_grid_and_dicts(tmp_path):
    write_run(tmp_path, "g1", variant="kd", pair="t->s", seed=0, final_top1=71.0)
    write_run(tmp_path, "g1", variant="dkd", pair="t->s", seed=0, final_top1=72.0)
    write_run(tmp_path, "g2", variant="kd", pair="t->s", seed=1, final_top1=73.0,
              status="failed", failure={"reason": "loss is NaN", "epoch": 2, "step": 10, "terms": {}})
    frame = results.load(tmp_path)
    assert len(frame) == 3
    assert sorted(frame["grid"]) == ["g1", "g1", "g2"]
    assert set(results.SUMMARY_COLUMNS) <= set(frame.columns)
    assert isinstance(frame.loc[frame["variant"] == "kd", "hparams"].iloc[0], dict)
    assert frame["final_top1"].dtype.kind == "f"
    failed = frame[frame["status"] == "failed"].iloc[0]
    assert failed["failure_reason"] == "loss is NaN"
    assert len(results.load(tmp_path, grid="g1")) == 2
    assert results.grid_names(tmp_path) == ["g1", "g2"]


def test_missing_fields_become_columns(tmp_path):
    folder = tmp_path / "g" / "runs" / "abc"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"variant": "kd", "status": "done", "final_top1": 70}))
    frame = results.load(tmp_path)
    assert frame.loc[0, "run_id"] == "abc"
    assert pd.isna(frame.loc[0, "val_selected_top1"])


def test_unreadable_files_are_skipped_with_a_warning(tmp_path):
    write_run(tmp_path, "g", variant="kd", pair="t->s", seed=0, final_top1=71.0)
    bad = tmp_path / "g" / "runs" / "broken"
    bad.mkdir(parents=True)
    (bad / "summary.json").write_text('{"run_id": "broken", "status": ')
    (bad / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": ')
    (tmp_path / "g" / "runs" / "nosummary").mkdir()  # a run that has not finished an epoch
    with pytest.warns(results.ResultsWarning, match="summary.json: skipped"):
        frame = results.load(tmp_path)
    assert list(frame["variant"]) == ["kd"]
    with pytest.warns(results.ResultsWarning, match="metrics.jsonl: skipped"):
        metrics = results.load_metrics(tmp_path)
    assert set(metrics["run_id"]) == {frame.loc[0, "run_id"]}


def test_load_metrics_long_frame(tmp_path):
    folder = write_run(tmp_path, "g", variant="kd", pair="t->s", seed=0, final_top1=60.0, curve=[20.0, 40.0, 60.0])
    metrics = results.load_metrics(tmp_path, grid="g")
    assert list(metrics["epoch"]) == [1, 2, 3]
    assert list(metrics["test_top1"]) == [20.0, 40.0, 60.0]
    assert set(metrics["run_id"]) == {folder.name}
    assert set(metrics["grid"]) == {"g"}


def test_no_results_is_one_clear_error(tmp_path):
    with pytest.raises(KdbenchError, match=r"no results under .*: run `kdbench run GRID` first"):
        results.load(tmp_path / "results")
    (tmp_path / "results" / "g" / "runs").mkdir(parents=True)
    with pytest.raises(KdbenchError, match="no results under"):
        results.load(tmp_path / "results")
    assert results.load_metrics(tmp_path / "results").empty


def test_unknown_grid_lists_the_known_ones(tmp_path):
    write_run(tmp_path, "g1", variant="kd", pair="t->s", seed=0, final_top1=71.0)
    with pytest.raises(KdbenchError, match="grids there: g1"):
        results.load(tmp_path, grid="nope")


def test_metrics_out_of_order_are_damaged_for_load_metrics_as_for_verify(tmp_path):
    """One reader of metrics.jsonl: `results.load_metrics` skips what `kdbench verify` calls damaged."""
    from kdbench.runs import records

    folder = write_run(tmp_path, "g", variant="kd", pair="t->s", seed=0, final_top1=60.0, curve=[20.0, 40.0])
    (folder / "metrics.jsonl").write_text('{"epoch": 2, "test_top1": 40.0}\n{"epoch": 1, "test_top1": 20.0}\n')
    with pytest.raises(records.RecordError, match="line 1 is not the record of epoch 1"):
        records.read_metrics(folder)
    with pytest.warns(results.ResultsWarning, match="metrics.jsonl: skipped, line 1 is not the record of epoch 1"):
        assert results.load_metrics(tmp_path).empty
