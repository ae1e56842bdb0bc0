"""The checks of `kdbench doctor` of what is on disk: the data root and each dataset (with its
MD5 where an official one is known), the reference teachers (SHA-256 against the release record
and the manifest), the results folder, and the optional extras installed.

A missing dataset, teacher or extra is a failed check with its fix, never an exception.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

from kdbench import data, models
from kdbench.data import cifar100
from kdbench.data.files import md5sum
from kdbench.doctor.checks import Check, failed, installed_version, passed
from kdbench.runs.teacher_files import RELEASE_DIR, RELEASE_RECORD, read_release_record
from kdbench.teachers.command import release_checkpoints

#: What each optional extra of pyproject.toml enables (an extra not named here is still checked).
EXTRA_USES = {"slurm": "--executor slurm", "tensorboard": "options.log: [tensorboard]",
              "wandb": "options.log: [wandb]", "test": "the test suite"}
MANIFEST = "teachers.json"
_REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- data


def _md5_status(name: str, found: Path) -> tuple[bool | None, str]:
    """(True/False when the files' MD5s were compared with the official ones, None when none is known), words."""
    if name == "cifar100":
        if found.name == cifar100.ARCHIVE:
            actual = md5sum(found)
            return actual == cifar100.ARCHIVE_MD5, f"{found.name} MD5 {actual}"
        from torchvision.datasets import CIFAR100  # the official files' MD5s, as torchvision checks them

        expected = {n: m for n, m in CIFAR100.train_list + CIFAR100.test_list}
        expected[CIFAR100.meta["filename"]] = CIFAR100.meta["md5"]
    elif name == "fashion_mnist":
        from torchvision.datasets import FashionMNIST

        expected = {n: m for n, m in FashionMNIST.resources}
    else:
        return None, "no official checksum to compare"
    checked = {n: md5sum(found / n) for n in expected if (found / n).is_file()}
    if not checked:
        return None, "no official checksum for these (unpacked) files"
    bad = [n for n, m in checked.items() if m != expected[n]]
    if bad:
        return False, f"MD5 of {', '.join(bad)} differs from the official"
    return True, f"MD5 of {len(checked)} file(s) matches the official"


def data_checks(root: Path, source: str) -> Iterator[Check]:
    """The data root, and each registered dataset: on disk or not, with its MD5 where one is known."""
    where = f"{root}" + ("" if root.is_absolute() else f" = {root.absolute()}") + f" ({source})"
    if root.is_dir():
        yield passed("data root", where)
    else:
        yield failed("data root", f"{where} does not exist yet",
                     f"kdbench run creates it when it downloads a dataset; or point --data-dir or $"
                     f"{data.ENV_ROOT} at your data")
    for entry in data.presence(root):
        name = f"data {entry['name']}"
        if not entry["present"]:
            yield failed(name, f"not found at {entry['path']}", f"{entry['note']} (at {entry['path']})")
            continue
        if entry["path"] == "(generated)":
            yield passed(name, entry["note"] or "generated on the fly")
            continue
        verdict, words = _md5_status(entry["name"], Path(entry["path"]))
        where = entry["path"] + (f" ({entry['note']})" if entry["note"] else "")
        if verdict is False:
            yield failed(name, f"{where}: {words}", f"delete {entry['path']} and fetch it again (kdbench run downloads it)")
        else:
            yield passed(name, f"{where}; {words}")


# ----------------------------------------------------------------------------- teachers


def teacher_checks(root: Path) -> Iterator[Check]:
    """The reference teachers under the data root, each file's SHA-256 against the release record
    (written at the first fetch) and the manifest `teachers.json` (written by `kdbench teachers eval`)."""
    folder = root / RELEASE_DIR
    found = release_checkpoints(folder) if folder.is_dir() else []
    if not found:
        yield failed("teachers", f"no reference teachers in {folder}",
                     f"kdbench teachers fetch (or put cifar_teachers.tar in {root}); grids whose teachers are "
                     "trained (checkpoint: train) need none")
        return
    yield passed("teachers", f"{len(found)} in {folder}: {', '.join(arch for arch, _ in found)}")
    record = read_release_record(root)
    manifest = _read_manifest(folder / MANIFEST)
    by_path = {str(Path(e.get("path", "")).resolve()): e for e in manifest.get("teachers", [])} if manifest else {}
    for arch, path in found:
        sha = models.sha256_file(path)
        recorded = (record or {}).get("files", {}).get(str(path.relative_to(root)))
        entry = by_path.get(str(path.resolve()))
        name = f"teacher {arch}"
        if recorded and recorded != sha:
            yield failed(name, f"SHA-256 {sha[:16]}… differs from {recorded[:16]}… in {RELEASE_RECORD}",
                         f"delete {folder} and run kdbench teachers fetch to unpack it again")
        elif entry and entry.get("sha256") != sha:
            yield failed(name, f"SHA-256 {sha[:16]}… differs from {str(entry.get('sha256'))[:16]}… in {MANIFEST}",
                         "kdbench teachers eval measures it again")
        elif not recorded and not entry:
            yield failed(name, f"SHA-256 {sha[:16]}… is recorded nowhere",
                         "kdbench teachers fetch records the release's SHA-256s, kdbench teachers eval measures them")
        else:
            sources = [s for s, ok in ((RELEASE_RECORD, recorded), (MANIFEST, entry)) if ok]
            top1 = f"; measured top-1 {entry['top1']:.2f}" if entry and isinstance(entry.get("top1"), (int, float)) else ""
            yield passed(name, f"SHA-256 {sha[:16]}… matches {' and '.join(sources)}{top1}")
    if manifest is None:
        yield failed("teachers manifest", f"no {MANIFEST} in {folder}: the teachers' accuracy is unmeasured",
                     "kdbench teachers eval (needs CIFAR-100)")
    else:
        yield passed("teachers manifest", f"{folder / MANIFEST}: {len(manifest.get('teachers', []))} teachers measured "
                                          f"on {manifest.get('dataset', '?')} ({manifest.get('device', '?')}, "
                                          f"{manifest.get('measured_at', '?')})")


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("teachers"), list) else None


# ----------------------------------------------------------------------------- results, extras


def results_check(results: Path) -> Iterator[Check]:
    """The results folder can be written (or created); nothing is left behind."""
    target = results if results.is_dir() else next((p for p in results.absolute().parents if p.is_dir()), None)
    try:
        if target is None:
            raise OSError(f"no existing folder above {results}")
        if results.exists() and not results.is_dir():
            raise OSError("it is a file, not a folder")
        with tempfile.TemporaryDirectory(prefix=".kdbench-doctor-", dir=target):
            pass
    except OSError as exc:
        yield failed("results", f"{results} can't be written: {exc.strerror or exc}",
                     "give --results-dir a folder you can write to")
        return
    yield passed("results", f"{results} is writable" if results.is_dir() else f"{results} can be created in {target}")


def extras() -> dict[str, list[str]]:
    """kdbench's optional extras and their requirements: from pyproject.toml in a checkout,
    else from the installed package's metadata."""
    pyproject = _REPO / "pyproject.toml"
    try:
        import tomllib

        project = tomllib.loads(pyproject.read_text()).get("project", {})
        if project.get("name") == "kdbench":
            return {k: list(v) for k, v in project.get("optional-dependencies", {}).items()}
    except (ImportError, OSError, ValueError):
        pass
    try:
        dist = importlib.metadata.distribution("kdbench")
    except importlib.metadata.PackageNotFoundError:
        return {}
    out: dict[str, list[str]] = {e: [] for e in dist.metadata.get_all("Provides-Extra") or []}
    for requirement in dist.requires or []:
        spec, _, marker = requirement.partition(";")
        match = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
        if match and match.group(1) in out:
            out[match.group(1)].append(spec.strip())
    return out


def _requirement_ok(requirement: str) -> tuple[bool, str]:
    """(installed and recent enough, `name version` or what is missing)."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
    version = installed_version(name)
    if version is None:
        return False, f"{name} missing"
    try:
        from packaging.requirements import Requirement

        if not Requirement(requirement).specifier.contains(version, prereleases=True):
            return False, f"{name} {version} (needs {requirement})"
    except Exception:  # noqa: BLE001 -- no packaging, or an unparsable requirement: being installed is enough
        pass
    return True, f"{name} {version}"


def extra_checks() -> Iterator[Check]:
    """Each optional extra: are its packages installed (and recent enough)?"""
    checkout = (_REPO / "pyproject.toml").is_file()
    for extra, requirements in sorted(extras().items()):
        states = [_requirement_ok(r) for r in requirements]
        use = f" (for {EXTRA_USES[extra]})" if extra in EXTRA_USES else ""
        words = ", ".join(w for _, w in states) or "no packages"
        if all(ok for ok, _ in states):
            yield passed(f"extra {extra}", f"{words}{use}")
        else:
            install = f'pip install -e "{_REPO}[{extra}]"' if checkout else f'pip install "kdbench[{extra}]"'
            yield failed(f"extra {extra}", f"{words}{use}", install)
