"""The harness's region logits (SDD) and teacher artifacts (WKD-L's cost matrix): one teacher
forward per batch, nothing changed for the other members, the artifact built once, cached
beside its teacher, recorded by SHA-256, and one-line failures for bad input."""

import json
from pathlib import Path

import pytest
import torch

from kdbench import data, methods, models
from kdbench.methods import artifacts as method_artifacts
from kdbench.runs.teacher_files import TeacherRef, TeacherSource
from kdbench.train import artifacts
from kdbench.train.cohort import CohortSpec, train_cohort
from test_train import SPEC, TEACHER, assert_same_results, cohort, member, teacher_model

SHA = "ab" * 32


@pytest.fixture(scope="module")
def splits():
    return data.build(SPEC, root=Path("data"), device="cpu", seed=0, batch_size=32, eval_batch_size=64)


def counted_teacher() -> tuple[torch.nn.Module, list[int]]:
    """The test teacher, and a list whose length is the number of its forwards (a hook on its stem)."""
    teacher, calls = teacher_model(), []
    teacher.conv1.register_forward_hook(lambda *_: calls.append(1))
    return teacher, calls


@pytest.mark.slow
def test_region_members_share_one_teacher_forward_and_change_nothing_for_the_others(splits):
    teacher, calls = counted_teacher()
    members = [member("kd", None, epochs=1), member("sdd", None, epochs=1),
               member("sdd4", None, epochs=1, method="sdd", base="dkd", scales=[1, 2, 4])]
    together = train_cohort(CohortSpec(dataset=SPEC, seed=0, members=members, teacher=TEACHER, teacher_model=teacher),
                            "cpu", data=splits)
    assert [r.status for r in together] == ["done"] * 3
    assert len(calls) == 2 * len(list(splits.test)) + len(splits.train)  # evaluation, then one per batch
    assert_same_results([together[0]], train_cohort(cohort([member("kd", None, epochs=1)]), "cpu", data=splits))
    assert_same_results([together[1]], train_cohort(cohort([member("sdd", None, epochs=1)]), "cpu", data=splits))


def test_a_map_without_local_regions_fails_that_member_in_one_line(splits):
    # MobileNetV2 halves a 16x16 input four times: a 1x1 map.
    bad = member("sdd", None, epochs=1)
    bad.student = "MobileNetV2"
    results = train_cohort(cohort([member("vanilla", None, epochs=1), bad]), "cpu", data=splits)
    assert [r.status for r in results] == ["done", "failed"]
    assert results[1].summary.failure.reason == (
        "pair resnet8->MobileNetV2: method sdd pools scales [1, 2], but the student MobileNetV2's final feature map "
        "is 1×1 on 16×16 images: no local regions; use scales [1] or a larger input")


def test_wkd_l_without_a_teacher_fails_in_one_line(splits):
    results = train_cohort(CohortSpec(dataset=SPEC, seed=0, members=[member("vanilla", None, epochs=1),
                                                                      member("wkd_l", None, epochs=1)]),
                           "cpu", data=splits)
    assert [r.status for r in results] == ["done", "failed"]
    assert results[1].summary.failure.reason == ("method wkd_l needs its teacher's wkd_cost_matrix, and this pair has "
                                                 "no teacher")


def grid_teacher(tmp_path: Path) -> TeacherRef:
    return TeacherRef("resnet8", TeacherSource.TRAIN, tmp_path / "teachers" / "t1" / "teacher.pth", "t1")


@pytest.mark.slow
def test_the_cost_matrix_is_built_once_cached_beside_a_grid_trained_teacher_and_recorded(tmp_path, splits, monkeypatch):
    ref = grid_teacher(tmp_path)
    spec = CohortSpec(dataset=SPEC, seed=0, members=[member("wkd_l", tmp_path / "a", epochs=1),
                                                     member("w2", tmp_path / "b", epochs=1, method="wkd_l", weight=5.0)],
                      teacher=ref, teacher_sha256=SHA, teacher_model=teacher_model())
    first = train_cohort(spec, "cpu", data=splits)
    (cached,) = (tmp_path / "teachers" / "t1" / "artifacts").iterdir()
    assert cached.name == f"wkd_cost_matrix-{SHA[:16]}-{artifacts.split_key(splits.spec)}.pt"
    record = torch.load(cached, weights_only=True)
    digest = method_artifacts.digest(record["artifact"])
    assert record["sha256"] == digest and record["teacher_sha256"] == SHA and record["artifact"].dtype == torch.float64
    assert [r.summary.teacher_artifacts for r in first] == [{"wkd_cost_matrix": digest}] * 2
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["teacher_artifacts"] == {"wkd_cost_matrix": digest}
    # The next cohort reads the cache: the builder is not called again.
    cls = methods.method_class("wkd_l")
    monkeypatch.setattr(cls, "build_teacher_artifact", classmethod(lambda c, inputs: pytest.fail("rebuilt")))
    again = train_cohort(CohortSpec(dataset=SPEC, seed=1, members=[member("wkd_l", None, epochs=1)], teacher=ref,
                                    teacher_sha256=SHA, teacher_model=teacher_model()), "cpu", data=splits)
    assert again[0].status == "done" and again[0].summary.teacher_artifacts == {"wkd_cost_matrix": digest}


def test_a_release_teacher_caches_under_the_results_folder_by_its_sha256(tmp_path):
    ref = TeacherRef("resnet32x4", TeacherSource.MDISTILLER, Path("/data/cifar_teachers/x/ckpt_epoch_240.pth"))
    path = artifacts.cache_path("wkd_cost_matrix", ref, SHA, tmp_path / "teachers" / "artifacts", {"name": "cifar100"})
    assert path.parent == tmp_path / "teachers" / "artifacts" / SHA
    assert artifacts.cache_path("wkd_cost_matrix", ref, None, tmp_path, {"name": "cifar100"}) is None
    assert artifacts.cache_path("wkd_cost_matrix", ref, SHA, None, {"name": "cifar100"}) is None
    assert artifacts.split_key({"name": "cifar100"}) != artifacts.split_key({"name": "cifar100", "train_size": 10})


@pytest.mark.slow
def test_a_run_is_not_resumed_on_another_cost_matrix(tmp_path, splits):
    ref = grid_teacher(tmp_path)
    make = lambda: CohortSpec(dataset=SPEC, seed=0, members=[member("wkd_l", tmp_path / "run", epochs=2)],  # noqa: E731
                              teacher=ref, teacher_sha256=SHA, teacher_model=teacher_model())
    assert train_cohort(make(), "cpu", data=splits, until_epoch=1)[0].status == "running"
    (cached,) = (tmp_path / "teachers" / "t1" / "artifacts").iterdir()
    record = torch.load(cached, weights_only=True)
    changed = record["artifact"] * 0.5
    torch.save({**record, "artifact": changed, "sha256": method_artifacts.digest(changed)}, cached)
    (result,) = train_cohort(make(), "cpu", data=splits)
    assert result.status == "failed" and result.summary.failure.reason.startswith(
        "teacher's wkd_cost_matrix changed: SHA-256 ")
    assert "recorded by this run; it is not resumed on another one" in result.summary.failure.reason


def test_a_damaged_cache_file_is_built_again(tmp_path, splits):
    ref = grid_teacher(tmp_path)
    folder = tmp_path / "teachers" / "t1" / "artifacts"
    folder.mkdir(parents=True)
    path = folder / f"wkd_cost_matrix-{SHA[:16]}-{artifacts.split_key(splits.spec)}.pt"
    path.write_bytes(b"not a torch file")
    (result,) = train_cohort(CohortSpec(dataset=SPEC, seed=0, members=[member("wkd_l", None, epochs=1)], teacher=ref,
                                        teacher_sha256=SHA, teacher_model=teacher_model()), "cpu", data=splits)
    assert result.status == "done"
    assert torch.load(path, weights_only=True)["sha256"] == result.summary.teacher_artifacts["wkd_cost_matrix"]


def test_the_artifact_sees_the_training_split_in_order_and_unaugmented(splits):
    inputs = artifacts.inputs(teacher_model(), "resnet8", splits.train, 10, batch_size=50)
    images = torch.cat([x for x, _ in inputs.batches()])
    assert len(images) == splits.train_size and inputs.zoo == "cifar"
    indices = torch.cat([i for _, _, i in splits.train.in_order(64)])
    assert torch.equal(indices, indices.sort().values)
    assert torch.equal(inputs.feature_map(images[:4]), models.features(teacher_model(), images[:4]))
