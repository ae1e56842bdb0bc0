"""`kdbench export` / `kdbench import`: the round trip, and every refusal in one line with nothing written."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from _report_fake import build_grid, write_run
from kdbench import __version__, cli, results
from kdbench.errors import KdbenchError
from kdbench.launch import bundles


def _export(src: Path, out: Path, *extra: str, grid: str = "g") -> int:
    return cli.main(["export", grid, "--results-dir", str(src), "--out", str(out), *extra])


@pytest.fixture
def bundle(tmp_path):
    """A bundle of the fake grid `g` (23 done runs of 25), with its grid copy."""
    src = tmp_path / "src"
    build_grid(src)
    (src / "g" / "grid.yaml").write_text("name: g\n")
    out = tmp_path / "g.tar"
    assert _export(src, out) == 0
    return src, out


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def _rewrite(path: Path, members: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return path


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused(bundle_path: Path, dst: Path) -> str:
    with pytest.raises(KdbenchError) as info:
        bundles.import_bundle(bundle_path, dst)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_round_trip_into_an_empty_results_folder(bundle, tmp_path, capsys):
    src, out = bundle
    capsys.readouterr()
    dst = tmp_path / "dst"
    assert cli.main(["import", str(out), "--results-dir", str(dst)]) == 0
    said = capsys.readouterr().out
    assert f"imported 23 runs of grid 'g' into {dst / 'g' / 'runs'}/" in said
    assert "teacher tA (tA.pth): SHA-256 0000000000000000… (12 runs)" in said
    ours, theirs = (results.load(r, grid="g").drop(columns="path").set_index("run_id").sort_index() for r in (src, dst))
    # failure_reason is a column pandas types by its values: strings beside the source's failed runs.
    assert theirs["failure_reason"].isna().all()
    assert theirs.drop(columns="failure_reason").equals(ours[ours["status"] == "done"].drop(columns="failure_reason"))
    mine, imported = results.load_metrics(src, grid="g"), results.load_metrics(dst, grid="g")
    assert imported.equals(mine[mine["run_id"].isin(theirs.index)].reset_index(drop=True))
    assert (dst / "g" / "grid.yaml").read_text() == "name: g\n"
    record = json.loads(next((dst / "g" / "imports").glob("*.json")).read_text())
    assert record["bundle"] == "g.tar" and len(record["added"]) == 23 and record["manifest"]["kdbench"] == __version__
    # Importing it again adds nothing: the runs are there, byte for byte.
    assert bundles.import_bundle(out, dst).present == record["added"]


def test_the_bundle_holds_the_runs_files_grid_teachers_and_manifest(bundle):
    _, out = bundle
    members = _members(out)
    manifest = json.loads(members["kdbench-bundle/manifest.json"])
    assert (manifest["format"], manifest["format_version"], manifest["grid"]) == ("kdbench-bundle", 1, "g")
    assert set(manifest["files"]) == {m.split("/", 1)[1] for m in members} - {"manifest.json"}
    assert {m.rsplit("/", 1)[1] for m in members if "/runs/" in m} == {"summary.json", "metrics.jsonl"}
    teachers = json.loads(members["kdbench-bundle/teachers.json"])["teachers"]
    assert sorted((t["arch"], t["runs"], t["from"]) for t in teachers) == [("tA", 12, "summary"), ("tB", 11, "summary")]


def test_checkpoints_only_when_asked(tmp_path):
    src = tmp_path / "src"
    run = write_run(src, "g", variant="kd", pair="t->s", seed=0, final_top1=70.0)
    (run / "checkpoint.pt").write_bytes(b"weights")
    assert _export(src, tmp_path / "a.tar") == 0 and _export(src, tmp_path / "b.tar", "--checkpoints") == 0
    assert not any(n.endswith("checkpoint.pt") for n in _members(tmp_path / "a.tar"))
    assert _members(tmp_path / "b.tar")[f"kdbench-bundle/runs/{run.name}/checkpoint.pt"] == b"weights"


def test_export_of_a_grid_without_finished_runs_is_one_line(tmp_path, capsys):
    write_run(tmp_path, "g", variant="kd", pair="t->s", seed=0, final_top1=None, status="running", epochs_done=1)
    assert _export(tmp_path, tmp_path / "x.tar") == 2
    assert capsys.readouterr().err == (f"kdbench: error: grid 'g': no finished runs under {tmp_path / 'g' / 'runs'}/: "
                                       "nothing to export\n")
    assert not (tmp_path / "x.tar").exists()


def test_a_changed_byte_is_refused_and_nothing_is_written(bundle, tmp_path):
    _, out = bundle
    members = _members(out)
    name = next(n for n in members if n.endswith("summary.json"))
    members[name] = members[name].replace(b'"final_top1": 7', b'"final_top1": 8', 1)
    bad = _rewrite(tmp_path / "bad.tar", members)
    listed = json.loads(members["kdbench-bundle/manifest.json"])["files"][name.split("/", 1)[1]]
    found = bundles.sha256_file  # the same hash the import computes
    (tmp_path / "probe").write_bytes(members[name])
    assert _refused(bad, tmp_path / "dst") == (
        f"{bad}: {name} has SHA-256 {found(tmp_path / 'probe')[:12]}…, the manifest says {listed[:12]}…: the bundle "
        "is damaged or was altered")
    assert not (tmp_path / "dst").exists()


def test_a_file_not_in_the_manifest_is_refused(bundle, tmp_path):
    _, out = bundle
    members = _members(out)
    run = next(n for n in members if n.endswith("summary.json")).rsplit("/", 1)[0]
    members[f"{run}/notes.txt"] = b"hello"
    bad = _rewrite(tmp_path / "bad.tar", members)
    assert _refused(bad, tmp_path / "dst") == (f"{bad}: {run}/notes.txt is not in the manifest: the bundle was "
                                               "altered")
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize("kind", ["escape", "symlink"])
def test_a_path_that_escapes_or_a_link_is_refused(bundle, tmp_path, kind):
    _, out = bundle
    members = _members(out)
    extra = []
    if kind == "escape":
        members["kdbench-bundle/../../evil"] = b"x"
        name, why = "kdbench-bundle/../../evil", "'..' in the path"
    else:
        link = tarfile.TarInfo("kdbench-bundle/runs/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc"
        extra.append(link)
        name, why = "kdbench-bundle/runs/link", "symbolic link to '/etc'"
    bad = _rewrite(tmp_path / "bad.tar", members, extra)
    assert _refused(bad, tmp_path / "dst") == f"{bad}: refusing to unpack '{name}': unsafe member, {why}"
    assert not (tmp_path / "dst").exists() and not (tmp_path / "evil").exists()


def test_a_bundle_of_another_format_version_names_it(bundle, tmp_path):
    _, out = bundle
    members = _members(out)
    manifest = json.loads(members["kdbench-bundle/manifest.json"])
    members["kdbench-bundle/manifest.json"] = json.dumps({**manifest, "format_version": 2, "kdbench": "9.0"}).encode()
    bad = _rewrite(tmp_path / "v2.tar", members)
    assert _refused(bad, tmp_path / "dst") == (f"{bad}: bundle format version 2 (written by kdbench 9.0); kdbench "
                                               f"{__version__} reads bundle format version 1 only")


def test_runs_that_conflict_with_local_runs_are_named_and_nothing_is_written(bundle, tmp_path):
    _, out = bundle
    dst = tmp_path / "dst"
    bundles.import_bundle(out, dst)
    changed = sorted((dst / "g" / "runs").iterdir())[:2]
    for run in changed:
        summary = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({**summary, "final_top1": 1.0}))
    (changed[0] / "checkpoint.pt").write_bytes(b"local only")  # a file only the local run has is no conflict
    before = _tree(dst)
    assert _refused(out, dst) == (
        f"{out}: 2 run(s) conflict with local runs of the same id in {dst / 'g' / 'runs'}/ (their files differ): "
        f"{', '.join(sorted(r.name for r in changed))}; move those run folders away, or import into another "
        "--results-dir")
    assert _tree(dst) == before


def test_a_missing_bundle_and_a_tar_that_is_no_bundle(tmp_path):
    assert _refused(tmp_path / "none.tar", tmp_path / "dst") == f"{tmp_path / 'none.tar'}: no such bundle file"
    other = _rewrite(tmp_path / "other.tar", {"kdbench-bundle/readme.txt": b"hi"})
    assert _refused(other, tmp_path / "dst") == f"{other}: no kdbench-bundle/manifest.json: not a kdbench bundle"
    assert not (tmp_path / "dst").exists()


@pytest.mark.slow
def test_run_trains_nothing_after_importing_a_finished_grid(tmp_path):
    from test_runner import kdbench, write_grid

    grid = write_grid(tmp_path, seeds=(0,), methods=("vanilla", "kd"), epochs=1)
    trained = kdbench("run", grid, "--device", "cpu", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    exported = kdbench("export", grid, "--out", "tiny.tar", cwd=tmp_path)
    assert exported.returncode == 0 and "wrote tiny.tar: 4 finished runs of grid 'tiny'" in exported.stdout
    other = tmp_path / "elsewhere"
    other.mkdir()
    imported = kdbench("import", tmp_path / "tiny.tar", cwd=other)
    assert imported.returncode == 0, imported.stderr
    before = _tree(other / "results" / "tiny" / "runs")
    again = kdbench("run", grid, "--device", "cpu", cwd=other)
    assert again.returncode == 0 and "Nothing to do: all 4 runs of grid 'tiny' are finished" in again.stdout
    assert _tree(other / "results" / "tiny" / "runs") == before
    assert kdbench("report", "--grid", "tiny", cwd=other).returncode == 0
