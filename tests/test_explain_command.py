"""`multiwatch explain`: the instance, the filter and why, the state, what comes next."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import xxhash

from multiwatch.cli import main
from multiwatch.watcher.hashing import FileVersion, Hashed
from multiwatch.watcher.message import build_event
from multiwatch.watcher.state import StateStore, state_db_path
from tests.support.process import write_roster


def _roster(tmp_path: Path, inbox: Path, **instance: object) -> Path:
    return write_roster(tmp_path / "roster.yaml", {
        "state_dir": str(tmp_path / "state"),
        "instances": [{"id": "inbox", "directory": str(inbox), **instance},
                      {"id": "music", "directory": str(tmp_path / "music"), "optional": True}],
    })


def _explain(capsys: pytest.CaptureFixture[str], roster: Path, *args: str) -> tuple[int, str]:
    code = main(["explain", "-c", str(roster), *args])
    out, err = capsys.readouterr()
    return code, out + err


def _track(tmp_path: Path, inbox: Path, relative: str, *, waiting: bool = False) -> None:
    """Record the file as the watcher would have announced it (and maybe its event waiting)."""
    data = (inbox / relative).read_bytes()
    st = os.stat(inbox / relative)
    hashed = Hashed(FileVersion(size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino),
                    hashlib.sha256(data).hexdigest(), xxhash.xxh128_hexdigest(data),
                    ctime_ns=st.st_ctime_ns)
    events = [build_event(event_type="file_discovered", instance_id="inbox",
                          watched_directory=str(inbox), relative_path=relative,
                          hashed=hashed)] if waiting else []
    store = StateStore(state_db_path(str(tmp_path / "state"), "inbox"))
    store.commit({relative: hashed}, events)
    store.close()


def test_an_exclude_pattern_is_named_with_the_part_it_matched(
        tmp_path: Path, inbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file hidden by an exclude pattern: which pattern, which name; nothing announced."""
    roster = _roster(tmp_path, inbox, exclude=["*.part", ".*"])
    (inbox / "a.part").write_bytes(b"x")
    (inbox / ".cache").mkdir()
    (inbox / ".cache" / "b.txt").write_bytes(b"x")
    code, text = _explain(capsys, roster, str(inbox / "a.part"))
    assert code == 0
    assert "instance: inbox" in text
    assert "excluded by exclude pattern '*.part' (matches the name 'a.part')" in text
    assert "would announce: nothing" in text
    code, text = _explain(capsys, roster, str(inbox / ".cache" / "b.txt"))
    assert "excluded by exclude pattern '.*' (matches the directory '.cache')" in text


def test_a_name_no_include_pattern_matches_is_explained(
        tmp_path: Path, inbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """include ["*.mp3"]: a .txt is not announced because it matches no include pattern."""
    roster = _roster(tmp_path, inbox, include=["*.mp3"])
    (inbox / "notes.txt").write_bytes(b"x")
    (inbox / "song.mp3").write_bytes(b"x")
    _code, text = _explain(capsys, roster, str(inbox / "notes.txt"))
    assert "matches no include pattern ('*.mp3')" in text
    _code, text = _explain(capsys, roster, str(inbox / "song.mp3"))
    assert "included by include pattern '*.mp3'" in text
    assert "would announce: file_discovered" in text


def test_a_path_outside_every_instance_names_the_nearest(
        tmp_path: Path, inbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A path no instance watches: exit 1, and the instance directories nearest to it."""
    roster = _roster(tmp_path, inbox)
    code, text = _explain(capsys, roster, str(tmp_path / "elsewhere" / "x.txt"))
    assert code == 1
    assert f"none: no instance watches {tmp_path / 'elsewhere' / 'x.txt'}" in text
    assert f"inbox ({inbox})" in text


def test_what_the_state_knows_and_what_would_be_announced(
        tmp_path: Path, inbox: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Tracked version, hashes, an event waiting; then modified, deleted and new files."""
    roster = _roster(tmp_path, inbox)
    (inbox / "a.txt").write_bytes(b"alpha")
    _track(tmp_path, inbox, "a.txt", waiting=True)
    _code, text = _explain(capsys, roster, str(inbox / "a.txt"))
    assert "tracked: 5 bytes" in text
    assert hashlib.sha256(b"alpha").hexdigest() in text
    assert "waiting in the outbox: file_discovered" in text
    assert "would announce: nothing (unchanged since announced)" in text

    (inbox / "a.txt").write_bytes(b"alpha, longer")
    _code, text = _explain(capsys, roster, str(inbox / "a.txt"))
    assert "would announce: file_modified" in text
    (inbox / "a.txt").unlink()
    _code, text = _explain(capsys, roster, str(inbox / "a.txt"))
    assert "does not exist" in text and "would announce: file_deleted" in text
    (inbox / "new.txt").write_bytes(b"n")
    monkeypatch.chdir(inbox)
    _code, text = _explain(capsys, roster, "new.txt")  # (relative to the current directory)
    assert "not tracked" in text and "would announce: file_discovered" in text


def test_a_touch_is_told_from_a_change_only_with_hash(
        tmp_path: Path, inbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Same size, new mtime: explain does not read the file unless --hash; then it can tell."""
    roster = _roster(tmp_path, inbox)
    (inbox / "a.txt").write_bytes(b"alpha")
    _track(tmp_path, inbox, "a.txt")
    os.utime(inbox / "a.txt", ns=(1, 1))
    _code, text = _explain(capsys, roster, str(inbox / "a.txt"))
    assert "would announce: file_modified if its content changed (--hash to check)" in text
    _code, text = _explain(capsys, roster, str(inbox / "a.txt"), "--hash")
    assert "would announce: nothing (same content; only the version changed)" in text


def test_explain_writes_nothing(tmp_path: Path, inbox: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    """Read-only: no state directory is created for an instance that never ran."""
    roster = _roster(tmp_path, inbox)
    (inbox / "a.txt").write_bytes(b"x")
    code, text = _explain(capsys, roster, str(inbox / "a.txt"))
    assert code == 0 and "no state database" in text
    assert "would announce: file_discovered" in text
    assert not (tmp_path / "state").exists()


def test_special_files_and_directories_are_named(
        tmp_path: Path, inbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A FIFO is never announced (and never opened); a symlink only with follow_symlinks."""
    roster = _roster(tmp_path, inbox)
    os.mkfifo(inbox / "pipe")
    (inbox / "target.txt").write_bytes(b"t")
    (inbox / "link.txt").symlink_to(inbox / "target.txt")
    _code, text = _explain(capsys, roster, str(inbox / "pipe"))
    assert "a FIFO" in text and "would announce: nothing" in text
    _code, text = _explain(capsys, roster, str(inbox / "link.txt"))
    assert "symbolic link" in text and "follow_symlinks" in text
    assert "would announce: nothing" in text


def test_a_tracked_file_now_excluded_is_not_announced_as_deleted(
        tmp_path: Path, inbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Filters changed after a file was announced: it stays tracked, nothing is announced."""
    (inbox / "a.log").write_bytes(b"x")
    _roster(tmp_path, inbox)
    _track(tmp_path, inbox, "a.log")
    roster = _roster(tmp_path, inbox, exclude=["*.log"])
    _code, text = _explain(capsys, roster, str(inbox / "a.log"))
    assert "tracked: 1 bytes" in text and "would announce: nothing" in text


def test_a_subdirectory_of_a_flat_instance_is_explained(
        tmp_path: Path, inbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """recursive: false: a file in a subdirectory belongs to the instance but is skipped."""
    roster = _roster(tmp_path, inbox, recursive=False)
    (inbox / "sub").mkdir()
    (inbox / "sub" / "a.txt").write_bytes(b"x")
    code, text = _explain(capsys, roster, str(inbox / "sub" / "a.txt"))
    assert code == 0 and "in a subdirectory, and recursive is false" in text
    assert "would announce: nothing" in text


def test_a_directory_is_explained_as_a_directory(
        tmp_path: Path, inbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A directory (the watched one too): the instance, whether an exclude prunes it (include
    patterns are for file names), how many files below it are tracked or waiting."""
    (inbox / "Album").mkdir()
    (inbox / "Album" / "a.mp3").write_bytes(b"a")
    (inbox / "Album" / "b.mp3").write_bytes(b"b")
    (inbox / ".cache").mkdir()
    roster = _roster(tmp_path, inbox, include=["*.mp3"])
    _track(tmp_path, inbox, "Album/a.mp3", waiting=True)
    _track(tmp_path, inbox, "Album/b.mp3")
    code, text = _explain(capsys, roster, str(inbox / "Album"))
    assert code == 0 and "no include pattern" not in text, text
    assert "filters: not excluded" in text
    assert "state: 2 tracked files below it" in text
    assert "waiting in the outbox: 1 event for files below it" in text
    assert "would announce: nothing for the directory itself" in text
    code, text = _explain(capsys, roster, str(inbox))
    assert code == 0 and "the watched directory itself" in text, text
    assert "state: 2 tracked files below it" in text
    _code, text = _explain(capsys, roster, str(inbox / ".cache"))
    assert "excluded by exclude pattern '.*'" in text and "nothing below it" in text
