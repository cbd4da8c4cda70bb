"""The kernel's inotify queue overflowing, for real: noticed at every log level (here
ERROR), and the tree is rescanned. (Refused watches and instances are hit in a user
namespace of their own: tests/watcher/test_inotify_limits.py.)"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
from collections.abc import Iterator
from pathlib import Path

import pytest
from watchdog.observers.api import BaseObserver

from multiwatch.watcher import inotify_observer
from multiwatch.watcher.inotify_observer import quiet_refused_watch_warnings
from multiwatch.watcher.observe import start_observer
from multiwatch.watcher.raw_event import RawEvent
from tests.watcher.test_observe_trees import events_until, kernel_watches, next_event

_INOTIFY = Path("/proc/sys/fs/inotify")

pytestmark = pytest.mark.skipif(
    not os.access(_INOTIFY / "max_queued_events", os.W_OK),
    reason="needs root to lower the inotify limits")


@contextlib.contextmanager
def lowered(limit: str, value: int) -> Iterator[None]:
    """The machine-wide inotify `limit` at `value`, restored on leaving (keep it short:
    other processes on the machine share it)."""
    path = _INOTIFY / limit
    old = path.read_text()
    path.write_text(str(value))
    try:
        yield
    finally:
        path.write_text(old)


@contextlib.contextmanager
def log_level(level: int) -> Iterator[None]:
    """watchdog's and the root logger at `level`, as with the watcher's `log_level`."""
    loggers = [logging.getLogger(), logging.getLogger("watchdog")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, old in zip(loggers, levels, strict=True):
            lg.setLevel(old)


@pytest.fixture
def errors_only() -> Iterator[None]:
    """Logging as with `log_level: ERROR`."""
    with log_level(logging.ERROR):
        yield


def test_a_real_queue_overflow_at_log_level_error_asks_for_a_rescan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, errors_only: None) -> None:
    """The kernel drops events (its queue holds 16 here): an "overflow" reaches the
    pipeline though nothing logs below ERROR, and the tree is still watched afterwards."""
    monkeypatch.setattr(inotify_observer.BatchingInotifyFD, "BATCH_PAUSE_SECONDS", 1.0)
    (tmp_path / "sub").mkdir()
    events: queue.SimpleQueue[RawEvent] = queue.SimpleQueue()
    quiet_refused_watch_warnings()  # as the watcher does
    with lowered("max_queued_events", 16):  # taken by the instance when it is created
        observer = start_observer(str(tmp_path), recursive=True, events=events,
                                  mode="inotify")
    try:
        (tmp_path / "first").write_bytes(b"x")
        next_event(events, lambda e: e.src == "first")  # read: the reader now pauses
        for index in range(100):
            (tmp_path / "sub" / f"f{index:03d}").write_bytes(b"x")

        next_event(events, lambda e: e.kind == "overflow")
        (tmp_path / "sub" / "after.txt").write_bytes(b"x")
        next_event(events, lambda e: e.src == "sub/after.txt")
    finally:
        observer.stop()
        observer.join(timeout=5)


def test_an_overflow_in_a_tree_of_more_directories_than_the_queue_holds_ends(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch, errors_only: None) -> None:
    """A queue of 16 events, 40 watched directories: the overflow's repair keeps the
    watches still right (dropping all 40 queued 40 "ignored" events, another overflow,
    and so on forever, deaf meanwhile), follows a directory renamed while events were
    lost, and drops the watch of one moved out meanwhile."""
    monkeypatch.setattr(inotify_observer.BatchingInotifyFD, "BATCH_PAUSE_SECONDS", 1.0)
    for index in range(40):
        (tmp_path / f"album{index:02d}").mkdir()
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    events: queue.SimpleQueue[RawEvent] = queue.SimpleQueue()
    quiet_refused_watch_warnings()
    with lowered("max_queued_events", 16):
        observer = start_observer(str(tmp_path), recursive=True, events=events,
                                  mode="inotify")
    try:
        before = _watches_by_inode(observer)
        assert len(before) == 41
        (tmp_path / "first").write_bytes(b"x")
        next_event(events, lambda e: e.src == "first")  # read: the reader now pauses
        for index in range(100):
            (tmp_path / "album00" / f"f{index:03d}").write_bytes(b"x")
        (tmp_path / "album01").rename(tmp_path / "renamed01")  # (lost)
        moved_out = (tmp_path / "album02").stat().st_ino
        (tmp_path / "album02").rename(elsewhere / "album02")  # (lost)

        next_event(events, lambda e: e.kind == "overflow")
        (elsewhere / "album02" / "outside.txt").write_bytes(b"x")
        (tmp_path / "renamed01" / "inside.txt").write_bytes(b"x")
        (tmp_path / "album39" / "after.txt").write_bytes(b"x")
        seen = events_until(events, lambda e: e.src == "album39/after.txt")
        assert [e.src for e in seen if e.src and e.src.endswith(".txt")] == [
            "renamed01/inside.txt", "album39/after.txt"]
        assert _watches_by_inode(observer) == {
            inode: wd for inode, wd in before.items() if inode != moved_out}
    finally:
        observer.stop()
        observer.join(timeout=5)


def _watches_by_inode(observer: BaseObserver) -> dict[int, str]:
    """{directory inode: watch descriptor} of the observer's kernel watches."""
    fields = [dict(f.split(":", 1) for f in line.split()[1:4])
              for line in kernel_watches(observer)]
    return {int(f["ino"], 16): f["wd"] for f in fields}
