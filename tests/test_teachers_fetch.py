"""`teachers fetch`: paths, download (file:// and offline), safe unpacking, SHA-256 records."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from kdbench.teachers import command as teachers
from kdbench.data.files import safe_extract_tar
from kdbench.errors import KdbenchError


def _tar(path: Path, entries: dict[str, bytes], links: dict[str, tuple[bytes, str]] | None = None) -> Path:
    """A tar at `path` with regular files `entries` and links `{name: (type, target)}`."""
    with tarfile.open(path, "w") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
    return path


CKPT = "cifar_teachers/resnet56_vanilla/ckpt_epoch_240.pth"


def test_teacher_path(tmp_path):
    assert teachers.teacher_path(tmp_path, "resnet32x4") == tmp_path / "cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth"
    assert teachers.teacher_path(tmp_path, "resnet50").parent.name == "ResNet50_vanilla"


def test_a_good_tar_unpacks(tmp_path):
    archive = _tar(tmp_path / "good.tar", {CKPT: b"weights"})
    safe_extract_tar(archive, tmp_path / "out", "cifar_teachers")
    assert (tmp_path / "out" / CKPT).read_bytes() == b"weights"


@pytest.mark.parametrize("entries,links,why", [
    ({"../evil": b"x"}, None, "'..' in the path"),
    ({"cifar_teachers/../../evil": b"x"}, None, "'..' in the path"),
    ({"/tmp/evil": b"x"}, None, "absolute path"),
    ({"elsewhere/file": b"x"}, None, "outside the 'cifar_teachers/' folder"),
    ({}, {"cifar_teachers/link": (tarfile.SYMTYPE, "../../etc/passwd")}, "symbolic link to '../../etc/passwd'"),
    ({}, {"cifar_teachers/abs": (tarfile.SYMTYPE, "/etc/passwd")}, "symbolic link"),
    ({}, {"cifar_teachers/latest": (tarfile.SYMTYPE, "resnet56_vanilla")}, "symbolic link"),  # even inside
    ({}, {"cifar_teachers/hard": (tarfile.LNKTYPE, "../outside")}, "hard link"),
    ({}, {"cifar_teachers/fifo": (tarfile.FIFOTYPE, "")}, "not a regular file or folder"),
    ({}, {"cifar_teachers/tty": (tarfile.CHRTYPE, "")}, "not a regular file or folder"),
    ({}, {"cifar_teachers/disk": (tarfile.BLKTYPE, "")}, "not a regular file or folder"),
])
def test_unsafe_entries_are_refused(tmp_path, entries, links, why):
    archive = _tar(tmp_path / "bad.tar", {CKPT: b"w", **entries}, links)
    dest = tmp_path / "a" / "b"
    with pytest.raises(KdbenchError) as e:
        safe_extract_tar(archive, dest, "cifar_teachers")
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{archive}: refusing to unpack") and why in message
    assert not (tmp_path / "a" / "evil").exists() and not (dest / CKPT).exists()  # nothing unpacked


def test_not_a_tar(tmp_path):
    bogus = tmp_path / "cifar_teachers.tar"
    bogus.write_bytes(b"<html>rate limited</html>")
    with pytest.raises(KdbenchError, match="not a readable tar archive"):
        safe_extract_tar(bogus, tmp_path, "cifar_teachers")


def test_fetch_downloads_and_unpacks(tmp_path):
    source = _tar(tmp_path / "release.tar", {CKPT: b"weights"})
    root = tmp_path / "data"
    folder = teachers.fetch(root, url=source.as_uri())
    assert folder == root / "cifar_teachers"
    assert (root / "cifar_teachers.tar").is_file() and (folder / "resnet56_vanilla/ckpt_epoch_240.pth").is_file()
    assert not list(root.glob(".*.part"))


def test_fetch_uses_a_tar_placed_by_hand_and_unpacks_once(tmp_path, monkeypatch):
    _tar(tmp_path / "cifar_teachers.tar", {CKPT: b"weights"})
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("must not download"))
    assert teachers.fetch(tmp_path) == tmp_path / "cifar_teachers"
    monkeypatch.setattr(teachers, "safe_extract_tar", lambda *a, **k: pytest.fail("must not unpack twice"))
    assert (teachers.fetch(tmp_path) / "resnet56_vanilla/ckpt_epoch_240.pth").read_bytes() == b"weights"


def test_fetch_offline_says_where_to_put_the_file(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(KdbenchError) as e:
        teachers.fetch(tmp_path)
    message = str(e.value)
    assert "\n" not in message
    assert f"could not download {teachers.RELEASE_URL}" in message
    assert f"download it by hand to {tmp_path / 'cifar_teachers.tar'} and re-run" in message
    assert not list(tmp_path.iterdir())


def test_fetch_rejects_a_tar_without_the_teachers_folder(tmp_path):
    _tar(tmp_path / "cifar_teachers.tar", {"something/else.txt": b"x"})
    with pytest.raises(KdbenchError, match="has no 'cifar_teachers/' folder"):
        teachers.fetch(tmp_path)


def test_fetch_with_a_corrupt_tar_says_to_delete_it(tmp_path):
    (tmp_path / "cifar_teachers.tar").write_bytes(b"\0garbage" * 10)
    with pytest.raises(KdbenchError, match="not a readable tar archive .*; delete it and fetch it again"):
        teachers.fetch(tmp_path)


def test_fetch_records_sha256_at_the_first_fetch_and_verifies_them_after(tmp_path):
    archive = _tar(tmp_path / "cifar_teachers.tar", {CKPT: b"weights"})
    teachers.fetch(tmp_path)
    record = json.loads((tmp_path / "cifar_teachers.sha256.json").read_text())
    assert record["archive"]["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert record["files"] == {CKPT: hashlib.sha256(b"weights").hexdigest()}
    assert "no published SHA-256" in record["how"]
    (tmp_path / CKPT).write_bytes(b"tampered")
    with pytest.raises(KdbenchError) as e:
        teachers.fetch(tmp_path)
    assert str(e.value).startswith(f"{tmp_path / CKPT}: SHA-256 ") and "recorded at the first fetch" in str(e.value)
    _tar(tmp_path / "cifar_teachers.tar", {CKPT: b"other weights"})
    with pytest.raises(KdbenchError) as e:
        teachers.fetch(tmp_path)
    assert str(e.value).startswith(f"{archive}: SHA-256 ") and "recorded at its first fetch" in str(e.value)


def test_fetch_says_which_check_it_made(tmp_path, capsys):
    from kdbench import cli

    _tar(tmp_path / "cifar_teachers.tar", {CKPT: b"weights"})
    assert cli.main(["teachers", "fetch", "--data-dir", str(tmp_path)]) == 0
    assert "no SHA-256 of the release is published: recorded" in capsys.readouterr().out
    assert cli.main(["teachers", "fetch", "--data-dir", str(tmp_path)]) == 0
    assert "verified the archive and each checkpoint against" in capsys.readouterr().out
