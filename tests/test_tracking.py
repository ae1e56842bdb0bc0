"""Tracking sinks: tags, TensorBoard events read back with TensorBoard's reader, W&B offline
records read back with W&B's own protobuf schema, and sinks that are missing or fail."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from kdbench.core import once
from kdbench.train import tracking
from kdbench.train.tracking import TrackingWarning, open_sinks, scalar_tags


def row(epoch: int, top1: float = 50.0) -> dict:
    """A metrics.jsonl row as train.py writes it, plus a method scalar."""
    return {
        "epoch": epoch, "lr": 0.05, "train_loss": 1.5, "train_top1": 40.0 + epoch, "loss_ce": 1.0,
        "loss_kd": 0.5, "test_loss": 1.2, "test_top1": top1 + epoch, "test_top5": 80.0,
        "test_top1_teacher_wrong": 10.0, "test_top1_teacher_right": 60.0, "epoch_seconds": 2.5,
        "images_per_s": None, "method_temperature": 4.0 + epoch,
    }


CONFIG = {"student": "resnet8", "method": "kd", "hparams": {"temperature": 4.0}, "seed": 0,
          "schedule": {"epochs": 3, "lr": 0.05}}


def sinks(names, run_dir, start_epoch=0):
    return open_sinks(names, run_dir, run_config=CONFIG, run_id="abc123def456", grid="g+set-0a1b2c",
                      cohort="c0ffee", start_epoch=start_epoch)


def test_scalar_tags_name_every_numeric_field():
    assert scalar_tags(row(1)) == {
        "lr": 0.05, "loss/train": 1.5, "train/top1": 41.0, "loss/ce": 1.0, "loss/kd": 0.5, "loss/test": 1.2,
        "test/top1": 51.0, "test/top5": 80.0, "test/top1_teacher_wrong": 10.0, "test/top1_teacher_right": 60.0,
        "time/epoch_seconds": 2.5, "method/temperature": 5.0,
    }
    assert scalar_tags({"epoch": 1, "val_top1": 3, "val_loss": 2.0, "note": "x", "flag": True}) == \
        {"val/top1": 3.0, "loss/val": 2.0}


# -- TensorBoard --------------------------------------------------------------------------------


def read_tensorboard(folder: Path) -> dict[str, list[tuple[int, float]]]:
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installed (kdbench[test] has it)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, round(e.value, 4)) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_read_back(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installed (kdbench[test] has it)")
    with sinks(["tensorboard"], tmp_path) as s:
        assert s.names == ("tensorboard",)
        for epoch in (1, 2, 3):
            s.log_epoch(row(epoch))
    scalars = read_tensorboard(tmp_path / "tensorboard")
    assert set(scalars) == set(scalar_tags(row(1)))
    assert [t for t in scalars if "top1" in t and t.startswith(("train/", "test/"))]
    assert scalars["test/top1"] == [(1, 51.0), (2, 52.0), (3, 53.0)]
    assert scalars["method/temperature"] == [(1, 5.0), (2, 6.0), (3, 7.0)]
    assert scalars["loss/kd"] == [(1, 0.5), (2, 0.5), (3, 0.5)]


def test_tensorboard_resume_replaces_the_retrained_epochs(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installed (kdbench[test] has it)")
    with sinks(["tensorboard"], tmp_path) as s:
        for epoch in (1, 2, 3):
            s.log_epoch(row(epoch))
    # The process died after epoch 3 was logged but the checkpoint holds epoch 2.
    with sinks(["tensorboard"], tmp_path, start_epoch=2) as s:
        for epoch in (3, 4):
            s.log_epoch(row(epoch, top1=60.0))
    assert read_tensorboard(tmp_path / "tensorboard")["test/top1"] == [(1, 51.0), (2, 52.0), (3, 63.0), (4, 64.0)]


# -- Weights & Biases ----------------------------------------------------------------------------


def read_wandb(path: Path) -> list:
    """The records of an offline `.wandb` file, parsed with W&B's own protobuf schema.

    The file is W&B's transaction log: a 7-byte header, then LevelDB-log chunks (CRC,
    length, type) in 32 KiB blocks; full records are `wandb_internal_pb2.Record`s.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        pending += chunk
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb package is not installed (kdbench[test] has it)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)


def test_wandb_offline_run_holds_config_group_and_epochs(tmp_path, wandb_offline):
    run_dir = tmp_path / "run"
    with sinks(["wandb"], run_dir) as s:
        assert s.names == ("wandb",)
        for epoch in (1, 2):
            s.log_epoch(row(epoch))
    wandb_id = tracking.wandb_id("g+set-0a1b2c", "abc123def456")
    assert wandb_id == "g-set-0a1b2c-abc123def456"
    [log] = list((run_dir / "wandb").glob(f"offline-run-*-{wandb_id}/run-{wandb_id}.wandb"))
    records = read_wandb(log)
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.run_id, run.project, run.run_group, run.job_type, run.display_name) == \
        (wandb_id, "kdbench", "g+set-0a1b2c", "cohort-c0ffee", "abc123def456")
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert {k: config[k] for k in CONFIG} == CONFIG
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert [h["test/top1"] for h in history] == [51.0, 52.0]
    assert set(scalar_tags(row(1))) <= set(history[0])


# -- missing and failing sinks -------------------------------------------------------------------


class FakeSink:
    """Records what it gets; raises on the `fail_at`-th call of `log`."""

    def __init__(self, *args, fail_at: int | None = None, **kwargs):
        self.epochs, self.closed, self.fail_at = [], None, fail_at

    def log(self, epoch, scalars):
        if self.fail_at is not None and len(self.epochs) + 1 == self.fail_at:
            raise OSError("disk full")
        self.epochs.append(epoch)

    def close(self, failed):
        self.closed = failed


@pytest.fixture
def fakes(monkeypatch):
    """Both sink names open fakes; `json` stands in for their packages (always importable)."""
    made: dict[str, FakeSink] = {}

    def opener(name, **kw):
        def make(*args):
            made[name] = FakeSink(*args, **kw)
            return made[name]
        return make

    monkeypatch.setattr(tracking, "_PACKAGES", {"tensorboard": "json", "wandb": "json"})
    monkeypatch.setattr(tracking, "_OPENERS", {"tensorboard": opener("tensorboard", fail_at=2),
                                               "wandb": opener("wandb")})
    return made


def test_sink_failing_mid_run_warns_once_and_logging_goes_on(tmp_path, fakes):
    with pytest.warns(TrackingWarning) as caught:
        s = sinks(["tensorboard", "wandb"], tmp_path)
        for epoch in (1, 2, 3):
            s.log_epoch(row(epoch))
        s.close()
    assert [str(w.message) for w in caught] == [
        "tensorboard failed while logging for run abc123def456 (OSError: disk full); it is off for this run, "
        "training goes on (metrics.jsonl has every epoch)"
    ]
    assert fakes["tensorboard"].epochs == [1] and fakes["tensorboard"].closed is True
    assert fakes["wandb"].epochs == [1, 2, 3] and fakes["wandb"].closed is False
    assert s.names == ()


def test_sink_failing_to_open_warns_and_is_left_out(tmp_path, fakes, monkeypatch):
    def broken(*args):
        raise RuntimeError("no API key configured")

    monkeypatch.setitem(tracking._OPENERS, "wandb", broken)
    with pytest.warns(TrackingWarning) as caught:
        s = sinks(["wandb", "tensorboard"], tmp_path)
    assert [str(w.message) for w in caught] == [
        "wandb failed to open for run abc123def456 (RuntimeError: no API key configured); it is off for this run, "
        "training goes on"
    ]
    assert s.names == ("tensorboard",)


def test_missing_package_warns_once_per_process(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "_PACKAGES", {"tensorboard": "kdbench_no_such_package", "wandb": "json"})
    monkeypatch.setattr(once, "_warned", set())
    with pytest.warns(TrackingWarning) as caught:
        first = sinks(["tensorboard"], tmp_path / "a")
        second = sinks(["tensorboard"], tmp_path / "b")
    assert [str(w.message) for w in caught] == [
        "tensorboard logging needs the kdbench_no_such_package package: pip install 'kdbench[tensorboard]'; "
        "training goes on without it"
    ]
    assert first.names == second.names == ()
    first.log_epoch(row(1))  # nothing to do, nothing raised
    first.close()


def test_no_sinks_no_warnings(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with sinks([], tmp_path) as s:
            s.log_epoch(row(1))
    assert not any(tmp_path.iterdir())


def test_unknown_sink_is_a_programming_error(tmp_path):
    with pytest.raises(ValueError, match="unknown tracking sink 'mlflow'; known: tensorboard, wandb"):
        sinks(["mlflow"], tmp_path)


def test_wandb_without_login_logs_offline_instead_of_prompting(tmp_path, wandb_offline, monkeypatch):
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setattr(once, "_warned", set())
    with pytest.warns(TrackingWarning, match=r"^wandb: no W&B login found .* logging offline"):
        s = sinks(["wandb"], tmp_path / "run")
    s.log_epoch(row(1))
    s.close()
    assert s.names == () and list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))


def test_a_grid_run_with_overrides_writes_tensorboard_events(tmp_path, capsys):
    """kdbench run GRID --set schedule.epochs=1 --set options.log=[tensorboard], end to end."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from kdbench import cli

    grid = tmp_path / "g.yaml"
    grid.write_text(
        "name: g\n"
        "dataset: {name: synthetic, num_classes: 10, train_size: 64, test_size: 32, image_size: 16, channels: 3}\n"
        "schedule: {epochs: 3, milestones: [1]}\n"
        "pairs: [{teacher: null, student: resnet8, variants: [vanilla]}]\n"
        "methods: {vanilla: {}}\n")
    code = cli.main(["run", str(grid), "--device", "cpu", "--results-dir", str(tmp_path / "results"),
                     "--set", "schedule.epochs=1", "--set", "options.log=[tensorboard]"])
    assert code == 0, capsys.readouterr()
    (grid_dir,) = (tmp_path / "results").glob("g+set-*")
    (run_dir,) = (grid_dir / "runs").iterdir()
    assert "epochs: 1" in (grid_dir / "grid.yaml").read_text()
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"test/top1", "train/top1", "loss/ce", "lr"} <= set(tags)
    (event,) = acc.Scalars("test/top1")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert event.step == 1 and event.value == pytest.approx(summary["final_top1"])
