"""Result bundles: `kdbench export GRID --out FILE.tar` and `kdbench import FILE.tar`.

A bundle is a tar file holding one folder, `kdbench-bundle/`:

- `runs/<run_id>/`: each finished run's `config.yaml`, `summary.json` and `metrics.jsonl`
  (and `checkpoint.pt` with `--checkpoints`);
- `grid.yaml`: the grid's effective copy (`results/<grid>/grid.yaml`), when there is one;
- `teachers.json`: each teacher's SHA-256 as the runs recorded it (their summaries, else the
  teacher record under `results/teachers/known/`);
- `manifest.json`: the bundle format and its version, the kdbench version, the grid, the runs,
  and every other file's SHA-256.

Import unpacks into a temporary folder inside the results folder with the one extractor
(`kdbench.data.files.safe_extract_tar`: regular files under `kdbench-bundle/` only, no links,
absolute paths or `..`), then checks everything before it moves anything: the format version,
that the files are exactly the manifest's with its SHA-256s, that each run is a finished run
whose config hashes to its id, and that no local run of the same id holds other files. A
refused bundle leaves nothing behind. Then each new run folder is renamed into
`results/<grid>/runs/` (each appears whole), so `report` and `compare` read the runs and
`run` skips them as done. Runs already present with identical files are left as they are.

The manifest detects damage and edits, not a forger who rewrites it as well: it is not signed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from kdbench import __version__
from kdbench.core import atomic
from kdbench.data.files import safe_extract_tar
from kdbench.errors import KdbenchError
from kdbench.models import sha256_file
from kdbench.runs import records
from kdbench.runs.locks import LockWatch
from kdbench.runs.records import Layout, RunState, now_iso
from kdbench.runs.states import run_state
from kdbench.runs.teacher_files import TeacherRef, recorded_teacher

FORMAT = "kdbench-bundle"
#: The bundle format this kdbench writes and reads; a bundle of another version is refused.
FORMAT_VERSION = 1
TOP = "kdbench-bundle"
MANIFEST = "manifest.json"
TEACHERS = "teachers.json"
#: A run's files in a bundle; `checkpoint.pt` only with `--checkpoints`.
RUN_FILES = (records.CONFIG, records.SUMMARY, records.METRICS)
#: Under `results/<grid>/`: one record per import (the bundle's manifest, teachers and what was added).
IMPORTS = "imports"
_RUN_ID = re.compile(r"^[0-9A-Za-z_-]+$")
_GRID = re.compile(r"^[A-Za-z0-9_.+-]+$")
_SHA = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class Exported:
    """What `export` wrote: the runs, the finished-but-left-out count and the bundle's size."""

    runs: list[str]
    left_out: int
    size: int
    teachers: list[dict[str, Any]] = field(default_factory=list)


def finished_runs(layout: Layout) -> tuple[list[str], int]:
    """The grid's done runs (sorted), and how many other run folders there are."""
    watch = LockWatch()
    done, others = [], 0
    for run_dir in records.run_dirs(layout):
        if run_state(layout, run_dir.name, watch)[0] == RunState.DONE:
            done.append(run_dir.name)
        else:
            others += 1
    return done, others


def teacher_table(layout: Layout, run_ids: list[str], data_root: Path) -> list[dict[str, Any]]:
    """Each distinct teacher of the runs: arch, checkpoint, SHA-256, where the hash comes from, run count."""
    table: dict[tuple[Any, ...], dict[str, Any]] = {}
    for run_id in run_ids:
        run_dir = layout.run_dir(run_id)
        summary = records.read_summary(run_dir)
        if summary is None or not summary.teacher:
            continue
        sha, source = summary.teacher_sha256, "summary"
        if not sha:
            sha, source = _recorded_sha(layout, run_dir, data_root), "teacher record"
        key = (summary.teacher, summary.teacher_checkpoint, sha)
        entry = table.setdefault(key, {"arch": summary.teacher, "checkpoint": summary.teacher_checkpoint,
                                       "sha256": sha, "from": source if sha else None, "runs": 0})
        entry["runs"] += 1
    return list(table.values())


def _recorded_sha(layout: Layout, run_dir: Path, data_root: Path) -> str | None:
    """The SHA-256 recorded for the run's teacher file at its first use (for summaries without one)."""
    try:
        config = yaml.safe_load((run_dir / records.CONFIG).read_text())
        ref = TeacherRef.from_config(config.get("teacher"), data_root, layout)
    except (OSError, yaml.YAMLError, AttributeError, KeyError, TypeError, ValueError):
        return None
    entry = recorded_teacher(layout, ref) if ref is not None else None
    return entry["sha256"] if entry else None


def export(layout: Layout, out: Path, *, checkpoints: bool, grid_text: str | None, data_root: Path) -> Exported:
    """Write the grid's finished runs to the bundle `out` (atomically: a temporary file renamed)."""
    run_ids, left_out = finished_runs(layout)
    if not run_ids:
        raise KdbenchError(f"grid '{layout.grid}': no finished runs under {layout.runs_dir}/: nothing to export")
    if not out.parent.is_dir():
        raise KdbenchError(f"--out: folder {out.parent} does not exist")
    teachers = teacher_table(layout, run_ids, data_root)
    names = RUN_FILES + ((records.CHECKPOINT,) if checkpoints else ())
    hashes: dict[str, str] = {}
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        with os.fdopen(fd, "wb") as stream:
            with tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as tar:
                if grid_text is not None:
                    _add(tar, records.GRID_COPY, grid_text.encode("utf-8"), hashes)
                _add(tar, TEACHERS, _json({"teachers": teachers}), hashes)
                for run_id in run_ids:
                    for name in names:
                        path = layout.run_dir(run_id) / name
                        if path.is_file():
                            _add(tar, f"runs/{run_id}/{name}", path.read_bytes(), hashes, path.stat().st_mtime)
                manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "kdbench": __version__,
                            "created_at": now_iso(), "grid": layout.grid, "checkpoints": checkpoints,
                            "runs": run_ids, "files": hashes}
                _add(tar, MANIFEST, _json(manifest), {})
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, out)
    except OSError as exc:
        raise KdbenchError(f"--out: cannot write {out}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return Exported(run_ids, left_out, out.stat().st_size, teachers)


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode("utf-8")


def _add(tar: tarfile.TarFile, name: str, data: bytes, hashes: dict[str, str], mtime: float | None = None) -> None:
    info = tarfile.TarInfo(f"{TOP}/{name}")
    info.size, info.mode, info.mtime = len(data), 0o644, int(mtime if mtime is not None else time.time())
    tar.addfile(info, io.BytesIO(data))
    hashes[name] = hashlib.sha256(data).hexdigest()


# -- import ------------------------------------------------------------------------------------


@dataclass
class Imported:
    """What `import_bundle` did: the grid, the runs added and those already there, the grid copy."""

    grid: str
    added: list[str]
    present: list[str]
    grid_copy: str  # "added", "kept" (the local one differs), "same" or "none"
    teachers: list[dict[str, Any]]


def _files(top: Path) -> Iterator[str]:
    for path in sorted(top.rglob("*")):
        if path.is_file():
            yield path.relative_to(top).as_posix()


def read_manifest(top: Path, bundle: Path) -> dict[str, Any]:
    """The bundle's manifest, checked: the format, its version and the shape of its entries."""
    try:
        manifest = json.loads((top / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KdbenchError(f"{bundle}: no {TOP}/{MANIFEST}: not a kdbench bundle") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KdbenchError(f"{bundle}: {TOP}/{MANIFEST} is not JSON ({exc}): the bundle is damaged") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise KdbenchError(f"{bundle}: {TOP}/{MANIFEST} is not a kdbench bundle manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise KdbenchError(f"{bundle}: bundle format version {version!r} (written by kdbench "
                           f"{manifest.get('kdbench', '?')}); kdbench {__version__} reads bundle format version "
                           f"{FORMAT_VERSION} only")
    files, runs, grid = manifest.get("files"), manifest.get("runs"), manifest.get("grid")
    ok = (isinstance(files, dict) and all(isinstance(k, str) and isinstance(v, str) and _SHA.match(v)
                                          for k, v in files.items())
          and isinstance(runs, list) and all(isinstance(r, str) and _RUN_ID.match(r) for r in runs)
          and isinstance(grid, str) and _GRID.match(grid) and grid not in (".", ".."))
    if not ok:
        raise KdbenchError(f"{bundle}: {TOP}/{MANIFEST} is malformed (its files, runs or grid): the bundle is damaged")
    return manifest


def check_files(top: Path, manifest: dict[str, Any], bundle: Path) -> None:
    """The files are exactly the manifest's, each with its SHA-256, in the bundle's layout."""
    listed: dict[str, str] = manifest["files"]
    found = [f for f in _files(top) if f != MANIFEST]
    for name in found:
        if name not in listed:
            raise KdbenchError(f"{bundle}: {TOP}/{name} is not in the manifest: the bundle was altered")
    missing = sorted(set(listed) - set(found))
    if missing:
        raise KdbenchError(f"{bundle}: {TOP}/{missing[0]} is in the manifest but not in the bundle "
                           f"({len(missing)} missing): the bundle is damaged")
    allowed = set(RUN_FILES) | {records.CHECKPOINT}
    for name in found:
        parts = name.split("/")
        if not (name in (TEACHERS, records.GRID_COPY) or (len(parts) == 3 and parts[0] == "runs"
                                                           and parts[1] in manifest["runs"] and parts[2] in allowed)):
            raise KdbenchError(f"{bundle}: {TOP}/{name} has no place in a bundle of grid runs "
                               f"(runs/<run id>/{{{', '.join(sorted(allowed))}}}, {TEACHERS}, {records.GRID_COPY})")
        digest = sha256_file(top / name)
        if digest != listed[name]:
            raise KdbenchError(f"{bundle}: {TOP}/{name} has SHA-256 {digest[:12]}…, the manifest says "
                               f"{listed[name][:12]}…: the bundle is damaged or was altered")
    if sorted({n.split("/")[1] for n in found if n.startswith("runs/")}) != sorted(manifest["runs"]):
        raise KdbenchError(f"{bundle}: the manifest's runs are not the bundle's run folders: the bundle is damaged")


def check_runs(top: Path, manifest: dict[str, Any], bundle: Path) -> None:
    """Each run of the bundle is a finished run whose record can be trusted."""
    staged = Layout(top.parent, top.name)
    for run_id in manifest["runs"]:
        state = run_state(staged, run_id)[0]
        if state != RunState.DONE:
            raise KdbenchError(f"{bundle}: run {run_id} is not a finished run ({state}): the bundle is damaged")


def _differs(local: Path, staged: Path, manifest_files: dict[str, str], run_id: str) -> bool:
    """True unless every bundle file of the run is in the local folder, byte for byte."""
    for path in staged.iterdir():
        mine = local / path.name
        if not mine.is_file() or sha256_file(mine) != manifest_files[f"runs/{run_id}/{path.name}"]:
            return True
    return False


def import_bundle(bundle: Path, results: Path) -> Imported:
    """Check the bundle whole, then add its runs under `results/<grid>/runs/` (see the module docstring)."""
    if not bundle.is_file():
        raise KdbenchError(f"{bundle}: no such bundle file")
    created = not results.exists()
    try:
        results.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".import.", dir=results))
    except OSError as exc:
        raise KdbenchError(f"--results-dir: cannot write to '{results}': {exc.strerror or exc}") from None
    try:
        top = safe_extract_tar(bundle, staging, TOP)
        manifest = read_manifest(top, bundle)
        check_files(top, manifest, bundle)
        check_runs(top, manifest, bundle)
        layout = Layout(results, manifest["grid"])
        added, present, conflicts = [], [], []
        for run_id in manifest["runs"]:
            local = layout.run_dir(run_id)
            if not local.exists():
                added.append(run_id)
            elif _differs(local, top / "runs" / run_id, manifest["files"], run_id):
                conflicts.append(run_id)
            else:
                present.append(run_id)
        if conflicts:
            raise KdbenchError(f"{bundle}: {len(conflicts)} run(s) conflict with local runs of the same id in "
                               f"{layout.runs_dir}/ (their files differ): {', '.join(conflicts)}; move those run "
                               "folders away, or import into another --results-dir")
        return _move_in(bundle, top, manifest, layout, added, present)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(results.iterdir()):
            results.rmdir()  # a refused bundle leaves no trace, not even the folder


def _move_in(bundle: Path, top: Path, manifest: dict[str, Any], layout: Layout, added: list[str],
             present: list[str]) -> Imported:
    """Rename the checked run folders into place, add the grid copy if there is none, record the import."""
    layout.runs_dir.mkdir(parents=True, exist_ok=True)
    for run_id in added:
        os.rename(top / "runs" / run_id, layout.run_dir(run_id))  # one folder, whole or not at all
    copy = top / records.GRID_COPY
    if not copy.is_file():
        grid_copy = "none"
    elif not layout.grid_copy.exists():
        os.replace(copy, layout.grid_copy)
        grid_copy = "added"
    else:
        grid_copy = "same" if sha256_file(layout.grid_copy) == manifest["files"][records.GRID_COPY] else "kept"
    teachers = json.loads((top / TEACHERS).read_text()).get("teachers", []) if (top / TEACHERS).is_file() else []
    digest = sha256_file(bundle)
    atomic.write_json(layout.grid_dir / IMPORTS / f"{digest[:16]}.json", {
        "bundle": bundle.name, "sha256": digest, "imported_at": now_iso(), "kdbench": __version__,
        "added": added, "already_present": present, "grid_copy": grid_copy, "teachers": teachers,
        "manifest": manifest})
    return Imported(layout.grid, added, present, grid_copy, teachers)


# -- the commands ------------------------------------------------------------------------------


def cli_export(args: argparse.Namespace) -> int:
    """`kdbench export GRID --out FILE.tar [--checkpoints]`: a grid's finished runs as one bundle."""
    from kdbench import data
    from kdbench.core.console import console
    from kdbench.launch.spec import WorkerSpec, load_grid

    results = Path(args.results_dir)
    grid_text = data_root = None
    if Path(args.grid).is_file():
        grid = load_grid(WorkerSpec(grid_path=args.grid, results_dir=str(results), overrides=tuple(args.set or ())))
        name = grid.name
        grid_text = grid.text if grid.text is not None else Path(grid.source).read_text()
        data_root = grid.data_root
    else:
        name = args.grid
    layout = Layout(results, name)
    if not layout.grid_dir.is_dir():
        raise KdbenchError(f"no results for grid '{name}' under {results}/")
    if layout.grid_copy.is_file():
        grid_text = layout.grid_copy.read_text(encoding="utf-8")  # the effective grid the runs were trained from
    out = Path(args.out)
    done = export(layout, out, checkpoints=args.checkpoints, grid_text=grid_text,
                  data_root=data.resolve_root(None, data_root))
    left = f"; {done.left_out} run folder(s) not finished, left out" if done.left_out else ""
    console().print(f"wrote {out}: {len(done.runs)} finished runs of grid '{name}' ({done.size / 1e6:.1f} MB, "
                    f"checkpoints {'included' if args.checkpoints else 'left out'}){left}", markup=False, soft_wrap=True)
    if grid_text is None:
        console().print(f"note: no {records.GRID_COPY} in {layout.grid_dir}: the bundle has no grid file",
                        markup=False, soft_wrap=True)
    return 0


def cli_import(args: argparse.Namespace) -> int:
    """`kdbench import FILE.tar [--results-dir DIR]`: add a bundle's runs to the results folder."""
    from kdbench.core.console import console

    done = import_bundle(Path(args.bundle), Path(args.results_dir))
    where = Path(args.results_dir) / done.grid / "runs"
    same = f", {len(done.present)} already there (identical)" if done.present else ""
    console().print(f"imported {len(done.added)} runs of grid '{done.grid}' into {where}/{same}; "
                    f"`kdbench report --grid {done.grid}` includes them", markup=False, soft_wrap=True)
    if done.grid_copy == "kept":
        console().print(f"note: kept the local {records.GRID_COPY} of grid '{done.grid}', which differs from the "
                        "bundle's (the report orders rows by it)", markup=False, soft_wrap=True)
    for teacher in done.teachers:
        sha = (teacher.get("sha256") or "unknown")[:16]
        console().print(f"teacher {teacher.get('arch')} ({teacher.get('checkpoint')}): SHA-256 {sha}… "
                        f"({teacher.get('runs')} runs)", markup=False, soft_wrap=True)
    return 0
