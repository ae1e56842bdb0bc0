"""The run record: one Summary type, its JSON round-trip, the documented fields, old folders."""

import json
import re
import shutil
from pathlib import Path

import pytest

from kdbench import results
from kdbench.runs import records
from kdbench.runs.records import Failure, RecordError, Status, Summary

REPO = Path(__file__).resolve().parents[1]
V01 = Path(__file__).parent / "fixtures" / "results_v0_1"


def test_summary_round_trips_and_keeps_unknown_fields():
    obj = {"run_id": "abc", "status": "failed", "failure": {"reason": "x", "epoch": 2, "step": 5, "terms": None,
                                                            "error_log": "error.log"},
           "final_top1": None, "a_field_from_a_newer_kdbench": [1, 2]}
    summary = Summary.from_json(obj)
    assert summary.status is Status.FAILED and summary.failure == Failure("x", 2, 5, None, "error.log")
    out = summary.to_json()
    assert out["a_field_from_a_newer_kdbench"] == [1, 2] and out["status"] == "failed"
    assert Summary.from_json(out) == summary
    assert list(out)[:len(records.SUMMARY_FIELDS) - 1] == [f for f in records.SUMMARY_FIELDS if f != "rebuilt"]


@pytest.mark.parametrize("obj,why", [
    ([1], "expected a JSON object, got list"),
    ({"run_id": "a"}, "missing field status"),
    ({"run_id": "a", "status": "finished"}, "status 'finished' is not one of done, failed, running"),
    ({"run_id": "a", "status": "done"}, "a done run without final_top1"),
    ({"run_id": "a", "status": "failed"}, "a failed run without its failure"),
])
def test_unusable_summaries_say_why(obj, why):
    with pytest.raises(RecordError) as e:
        Summary.from_json(obj)
    assert str(e.value) == why


def test_read_summary_names_the_file_and_the_problem(tmp_path):
    path = tmp_path / "summary.json"
    assert records.read_summary(tmp_path) is None
    for text, why in [("", "empty"), ('{"run_id": ', "not JSON (Expecting value at line 1, column 12)")]:
        path.write_text(text)
        with pytest.raises(RecordError) as e:
            records.read_summary(tmp_path)
        assert str(e.value) == f"{path}: {why}"
    path.write_text(json.dumps({"status": "running"}))
    assert records.read_summary(tmp_path).run_id == tmp_path.name  # the folder's name is the run id


def test_metrics_lines_must_be_consecutive_epochs(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')
    with pytest.raises(RecordError, match="line 3 is not JSON"):
        records.read_metrics(tmp_path)
    assert records.epochs_recorded(tmp_path) == 0
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 3}\n')
    with pytest.raises(RecordError, match="line 2 is not the record of epoch 2"):
        records.read_metrics(tmp_path)


def test_design_doc_lists_exactly_the_summary_fields():
    design = (REPO / "docs" / "design.md").read_text()
    section = design[design.index("- `summary.json`"):design.index("- `checkpoint.pt`")]
    documented = set()
    for row in re.findall(r"^\s*\| (`.+?`) \|", section, flags=re.M):
        documented |= set(re.findall(r"`([a-z0-9_]+)`", row))
    assert documented == set(records.SUMMARY_FIELDS)
    assert results.SUMMARY_COLUMNS == list(records.SUMMARY_FIELDS)


def test_first_release_folders_load(tmp_path):
    shutil.copytree(V01, tmp_path / "v01")
    frame = results.load(tmp_path / "v01" / "results")
    assert sorted(frame["status"]) == ["done", "done", "failed", "failed", "running", "running"]
    failed = frame[frame["status"] == "failed"]
    assert all("t14.pth" in reason for reason in failed["failure_reason"])
    for run_dir in (tmp_path / "v01" / "results" / "v01" / "runs").iterdir():
        summary = records.read_summary(run_dir)
        assert summary.run_id == run_dir.name and summary.to_json()["run_id"] == run_dir.name
