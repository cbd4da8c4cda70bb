"""Real trees against a real broker: directories renamed into place, a tree of thousands of
directories under a short hang timeout, a file readable only after it settled."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.consumer import Received, collect
from tests.support.hostile import HostileMultiwatch, is_log, roster
from tests.support.process import LogLine, Multiwatch, write_roster

QUEUE = "file_events"


def _roster(tmp_path: Path, broker_url: str, music: Path, **supervisor: object) -> Path:
    return write_roster(tmp_path / "roster.yaml", {
        "state_dir": str(tmp_path / "state"),
        "broker": {"url": broker_url},
        "defaults": {"settle_seconds": 0.3},
        "supervisor": {"stop_timeout_seconds": 5, **supervisor},
        "instances": [{"id": "music", "directory": str(music)}],
    })


def _paths(messages: list[Received]) -> Counter[str]:
    return Counter(m.body["file_info"]["relative_path"] for m in messages)


def _arrived(broker_url: str, expected: set[str], timeout: float) -> list[Received]:
    """Everything consumed until every expected relative path has arrived (or timeout)."""
    received: list[Received] = []

    def enough(new: list[Received]) -> bool:
        return expected <= set(_paths([*received, *new]))

    received.extend(collect(broker_url, QUEUE, timeout=timeout, until=enough))
    return received


@pytest.fixture
def music(tmp_path: Path) -> Path:
    music = tmp_path / "music"
    music.mkdir()
    return music


@pytest.fixture
def watcher(tmp_path: Path, broker_url: str, music: Path) -> Iterator[Multiwatch]:
    """A running supervisor over `music`, stopped (by its process group) after the test."""
    mw = Multiwatch(["-c", str(_roster(tmp_path, broker_url, music))])
    try:
        mw.wait_watching("music")
        yield mw
    finally:
        mw.cleanup()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _seen_by_watcher(broker_url: str, music: Path, name: str) -> list[Received]:
    """Write a marker file and wait for it: every event before it has been taken in."""
    _write(music / name, name.encode())
    return _arrived(broker_url, {name}, timeout=30)


def test_every_rename_into_place_is_announced_exactly_once(
        watcher: Multiwatch, broker_url: str, music: Path, tmp_path: Path) -> None:
    """A staging directory renamed into place (.staging → Album), a nested one, a tree moved
    in from outside the watched directory and a `*.tmp` directory renamed: each file below
    is announced exactly once, under its new path."""
    _write(music / ".staging" / "song.mp3", b"staged song")
    _write(music / ".nested" / "cd1" / "01.mp3", b"one")
    _write(music / ".nested" / "cd1" / "deep" / "02.mp3", b"two")
    _write(music / ".nested" / "cover.jpg", b"cover")
    _write(music / "incoming.tmp" / "a.flac", b"lossless")
    _write(tmp_path / "outside" / "x" / "y.mp3", b"from elsewhere")
    got = _seen_by_watcher(broker_url, music, "marker-before.txt")
    assert set(_paths(got)) == {"marker-before.txt"}  # nothing staged was announced

    os.rename(music / ".staging", music / "Album")
    os.rename(music / ".nested", music / "Nested")
    os.rename(tmp_path / "outside", music / "Moved")
    os.rename(music / "incoming.tmp", music / "incoming")
    expected = {"Album/song.mp3", "Nested/cd1/01.mp3", "Nested/cd1/deep/02.mp3",
                "Nested/cover.jpg", "Moved/x/y.mp3", "incoming/a.flac"}
    got = _arrived(broker_url, expected, timeout=30)
    got += _seen_by_watcher(broker_url, music, "marker-after.txt")  # room for duplicates
    counts = _paths(got)
    assert {path: counts[path] for path in expected} == dict.fromkeys(expected, 1), counts
    assert set(counts) == expected | {"marker-after.txt"}
    assert {m.body["event_type"] for m in got} == {"file_discovered"}


def _stopped_heartbeating(line: LogLine) -> bool:
    return line.get("message") in ("child stopped heartbeating; terminating it",
                                   "child exited; restarting after backoff")


def test_tree_of_6600_directories_is_announced_without_a_hang_kill(
        tmp_path: Path, broker_url: str, music: Path) -> None:
    """6,600 album directories with one file each, hang_timeout_seconds 6: the watcher is
    never killed as hung, and all 6,600 files arrive."""
    for i in range(6600):
        _write(music / f"artist{i // 100:02d}" / f"album{i % 100:02d}" / "t.mp3", b"%d" % i)
    started = time.monotonic()
    mw = Multiwatch(["-c", str(_roster(tmp_path, broker_url, music,
                                       hang_timeout_seconds=6))])
    try:
        first = mw.wait_watching("music")
        got = collect(broker_url, QUEUE, timeout=50, until=lambda ms: len(ms) >= 6600)
        complete = mw.wait_for_log(lambda x: is_log(x, "startup scan complete", "music"),
                                   timeout=10)
        elapsed = time.monotonic() - started
        lines = list(mw.lines)
    finally:
        mw.cleanup()
    print(f"RENAMES: 6,600 directories announced in {elapsed:.1f} s; startup scan "
          f"{complete.get('elapsed_seconds')} s")
    assert not [line for line in lines if _stopped_heartbeating(line)]
    assert [line["pid"] for line in lines if is_log(line, "watching", "music")] == [first["pid"]]
    assert len(got) == 6600 and len(_paths(got)) == 6600


needs_setpriv = pytest.mark.skipif(shutil.which("setpriv") is None and os.geteuid() == 0,
                                   reason="needs util-linux setpriv to drop root's DAC override")


@needs_setpriv
def test_file_unreadable_when_it_settles_is_announced_once_made_readable(
        tmp_path: Path, broker_url: str, music: Path) -> None:
    """A file created mode 0200 (the watcher, without root's override, cannot read it) is
    warned about; chmod 644 after it settled gets it announced, with its content's hash."""
    path = roster(tmp_path, [{"id": "music", "directory": str(music)}],
                  broker={"url": broker_url})
    mw = HostileMultiwatch(["-c", str(path)], unprivileged=True)
    try:
        mw.wait_watching("music")
        locked = music / "locked.mp3"
        fd = os.open(locked, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o200)
        os.write(fd, b"readable later")
        os.close(fd)
        mw.wait_for_log(lambda x: x.get("path") == str(locked) and x.get("level") == "WARNING")
        locked.chmod(0o644)
        got = _arrived(broker_url, {"locked.mp3"}, timeout=20)
    finally:
        mw.cleanup()
    [body] = [m.body for m in got if m.body["file_info"]["relative_path"] == "locked.mp3"]
    assert body["event_type"] == "file_discovered"
    assert body["file_info"]["sha256_hash"] == hashlib.sha256(b"readable later").hexdigest()


def test_tree_of_30000_empty_directories_never_silences_the_heartbeat(
        tmp_path: Path, broker_url: str, music: Path) -> None:
    """30,000 directories without files (albums still to be filled) and hang_timeout_seconds
    3: the walk heartbeats throughout, nobody is killed as hung, and the one file at the
    end of the tree is announced."""
    for i in range(30_000):
        (music / f"artist{i // 100:03d}" / f"album{i % 100:02d}").mkdir(parents=True)
    _write(music / "artist299" / "album99" / "last.mp3", b"the only file")
    mw = Multiwatch(["-c", str(_roster(tmp_path, broker_url, music, hang_timeout_seconds=3))])
    try:
        first = mw.wait_watching("music")
        got = _arrived(broker_url, {"artist299/album99/last.mp3"}, timeout=50)
        mw.wait_for_log(lambda x: is_log(x, "startup scan complete", "music"), timeout=10)
        lines = list(mw.lines)
    finally:
        mw.cleanup()
    assert not [line for line in lines if _stopped_heartbeating(line)]
    assert [line["pid"] for line in lines if is_log(line, "watching", "music")] == [first["pid"]]
    assert set(_paths(got)) == {"artist299/album99/last.mp3"}
