"""The kernel's inotify limits, hit for real: a queue overflow and refused watches are
noticed at every log level (here ERROR), and the tree is rescanned."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
from collections.abc import Iterator
from pathlib import Path

import pytest

from multiwatch.watcher import observe
from multiwatch.watcher.observe import (
    RawEvent,
    directory_watcher,
    listen_for_lost_events,
    start_observer,
)
from tests.watcher.test_observe_trees import await_condition, kernel_watches, next_event

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
    monkeypatch.setattr(observe.BatchingInotifyFD, "BATCH_PAUSE_SECONDS", 1.0)
    (tmp_path / "sub").mkdir()
    events: queue.SimpleQueue[RawEvent] = queue.SimpleQueue()
    listen_for_lost_events(events)  # as the watcher does
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


@pytest.mark.parametrize("level", [logging.ERROR, logging.INFO])
def test_refused_watches_are_said_once_rescanned_and_retried_at_any_log_level(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        level: int) -> None:
    """The kernel refuses the watches of three directories (out of watches): one line says
    so, an "overflow" makes the pipeline rescan, and once watches are available again the
    directories are watched and their new files reported."""
    monkeypatch.setattr(observe, "UNWATCHED_RESCAN_SECONDS", 0.2, raising=False)
    names = ["a", "b", "c"]
    for name in names:
        (tmp_path / name).mkdir()
    events: queue.SimpleQueue[RawEvent] = queue.SimpleQueue()
    listen_for_lost_events(events)  # as the watcher does
    observer = start_observer(str(tmp_path), recursive=True, events=events, mode="inotify",
                              polling_interval=0.1, subdirectories_later=True)
    try:
        watch = directory_watcher(observer)
        assert watch is not None
        with log_level(level), caplog.at_level(level):
            with lowered("max_user_watches", 1):
                for name in names:
                    watch(str(tmp_path / name))
            next_event(events, lambda e: e.kind == "overflow")

            said = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(said) == 1 and "not watched" in said[0].getMessage(), said
            await_condition(lambda: len(kernel_watches(observer)) == 1 + len(names),
                            "refused watches were not retried")
        next_event(events, lambda e: e.kind == "overflow")  # the rescan after the retry
        (tmp_path / "c" / "late.txt").write_bytes(b"x")
        next_event(events, lambda e: e.src == "c/late.txt")
    finally:
        observer.stop()
        observer.join(timeout=5)
