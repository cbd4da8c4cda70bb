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

from multiwatch.watcher import inotify_observer
from multiwatch.watcher.inotify_observer import quiet_refused_watch_warnings
from multiwatch.watcher.observe import start_observer
from multiwatch.watcher.raw_event import RawEvent
from tests.watcher.test_observe_trees import next_event

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
