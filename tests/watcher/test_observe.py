"""Observers: inotify, polling, the fallback between them, and lost kernel events."""

from __future__ import annotations

import errno
import logging
import os
import queue
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify_c import (
    InotifyConstants,
    InotifyEvent,
    Mask,
    WatchDescriptor,
)
from watchdog.observers.polling import PollingObserverVFS

from multiwatch.watcher import inotify_observer, observe
from multiwatch.watcher.confined import ConfinedRoot
from multiwatch.watcher.filters import PathFilter
from multiwatch.watcher.inotify_observer import quiet_refused_watch_warnings
from multiwatch.watcher.observe import directory_watcher, start_observer
from multiwatch.watcher.raw_event import EventKind, RawEvent
from multiwatch.watcher.scan import scan_batches
from tests.watcher.test_observe_trees import next_event
from tests.watcher.test_pipeline import drain, known_files, make_pipeline, settle_all

_failed_observers: list[inotify_observer.DirectInotifyObserver] = []


def _watch_limit_reached(code: int) -> type[BaseObserver]:
    class NoWatchesLeft(inotify_observer.DirectInotifyObserver):
        def schedule(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
            _failed_observers.append(self)
            raise OSError(code, "inotify watch limit reached")

    return NoWatchesLeft


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EMFILE])
def test_auto_falls_back_to_polling_with_a_warning_when_inotify_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        observers: list[BaseObserver], code: int) -> None:
    """No inotify watch could be added: a warning, then polling still reports new files."""
    monkeypatch.setattr(observe, "DirectInotifyObserver", _watch_limit_reached(code))
    events: queue.SimpleQueue[RawEvent] = queue.SimpleQueue()

    with caplog.at_level(logging.WARNING, logger="multiwatch.watcher.observe"):
        observers.append(start_observer(str(tmp_path), recursive=True, events=events,
                                        polling_interval=0.1))
    (tmp_path / "late.txt").write_text("created after the fallback")

    assert isinstance(observers[0], PollingObserverVFS)
    assert any(r.levelno == logging.WARNING and "polling" in r.getMessage()
               for r in caplog.records)
    next_event(events, lambda e: e.src == "late.txt" and not e.is_directory)
    assert not _failed_observers[-1].reader.is_alive(), "the failed observer's reader was left"


def test_inotify_mode_reports_a_failed_watch_instead_of_polling(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """observer: inotify never silently degrades to polling: the watch failure is raised."""
    monkeypatch.setattr(observe, "DirectInotifyObserver", _watch_limit_reached(errno.ENOSPC))

    with pytest.raises(OSError) as raised:
        start_observer(str(tmp_path), recursive=True, events=queue.SimpleQueue(),
                       mode="inotify", polling_interval=0.1)
    assert raised.value.errno == errno.ENOSPC


def test_polling_mode_finds_new_files_without_inotify(
        tmp_path: Path, observers: list[BaseObserver]) -> None:
    """observer: polling uses no inotify at all and still reports files, also in subdirectories."""
    events: queue.SimpleQueue[RawEvent] = queue.SimpleQueue()
    observers.append(start_observer(str(tmp_path), recursive=True, events=events,
                                    mode="polling", polling_interval=0.1))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "remote.bin").write_bytes(b"from another NFS client")

    assert isinstance(observers[0], PollingObserverVFS)
    next_event(events, lambda e: e.src == "sub/remote.bin" and not e.is_directory)


def test_kernel_queue_overflow_becomes_an_overflow_notification(
        tmp_path: Path, observers: list[BaseObserver]) -> None:
    """An inotify IN_Q_OVERFLOW (events lost in the kernel) reaches the pipeline as "overflow"."""
    events: queue.SimpleQueue[RawEvent] = queue.SimpleQueue()
    quiet_refused_watch_warnings()
    lost_logger = logging.getLogger("watchdog.observers")
    try:
        observer = start_observer(str(tmp_path), recursive=True, events=events,
                                  mode="inotify", polling_interval=0.1)
        observers.append(observer)
        assert isinstance(observer, inotify_observer.DirectInotifyObserver)
        # What the kernel sends when its queue overflowed: wd -1, mask IN_Q_OVERFLOW.
        observer.reader.handle_event(
            InotifyEvent(WatchDescriptor(-1), InotifyConstants.IN_Q_OVERFLOW, 0, b""))

        next_event(events, lambda e: e.kind == "overflow")
    finally:
        lost_logger.handlers[:] = [h for h in lost_logger.handlers
                                   if type(h).__name__ != "_LostEventsListener"]


def test_overflow_notification_rescans_and_finds_what_was_missed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """After an overflow the pipeline rescans: a file created and one deleted without any
    notification are announced, and the rescan is logged."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    known_files(pipeline, outbox, root, {"old.txt": b"announced earlier"})
    (root / "old.txt").unlink()
    (root / "missed.txt").write_bytes(b"created while events were being dropped")
    settle_all(pipeline)
    assert drain(outbox) == [], "nothing is announced without a notification or a scan"

    with caplog.at_level(logging.WARNING, logger="multiwatch"):
        pipeline.notifications.put(RawEvent(EventKind.OVERFLOW, True, ""))
        settle_all(pipeline)

    assert sorted((b["event_type"], b["file_info"]["relative_path"]) for b in drain(outbox)) == [
        ("file_deleted", "old.txt"), ("file_discovered", "missed.txt")]
    assert any(r.levelno >= logging.WARNING and r.name.startswith("multiwatch")
               for r in caplog.records), "the lost events were not logged"


def _drain_until(events: queue.SimpleQueue[RawEvent], last: Callable[[RawEvent], bool],
                 timeout: float = 5.0) -> list[RawEvent]:
    """Every notification up to and including the first matching `last`, in order."""
    seen: list[RawEvent] = []
    deadline = time.monotonic() + timeout
    while not seen or not last(seen[-1]):
        seen.append(events.get(timeout=max(0.01, deadline - time.monotonic())))
    return seen


def test_renames_pair_up_and_moves_out_become_deletions_in_order(
        tmp_path: Path, observers: list[BaseObserver]) -> None:
    """inotify: a rename inside the tree is one "moved"; a file moved out is "deleted", and
    before the events of a new file of the same name."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "a.txt").write_text("a")
    events: queue.SimpleQueue[RawEvent] = queue.SimpleQueue()
    observers.append(start_observer(str(root), recursive=True, events=events))

    os.rename(root / "a.txt", root / "sub" / "b.txt")
    moved = next_event(events, lambda e: e.kind == "moved")
    assert (moved.src, moved.dest, moved.is_directory) == ("a.txt", "sub/b.txt", False)

    os.rename(root / "sub" / "b.txt", outside / "b.txt")
    (root / "sub" / "b.txt").write_text("new")
    order = [(e.kind, e.src) for e in _drain_until(events, lambda e: e.kind == "closed")
             if e.src == "sub/b.txt"]
    # (The new file's create may be passed on only as its close, read in the same batch.)
    assert order[0] == ("deleted", "sub/b.txt")
    assert order[1][0] in ("created", "closed")


def test_a_move_out_alone_is_announced_deleted_after_the_pairing_window(
        tmp_path: Path, observers: list[BaseObserver]) -> None:
    """A file moved out of the tree with nothing after it still becomes "deleted"."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "gone.txt").write_text("x")
    events: queue.SimpleQueue[RawEvent] = queue.SimpleQueue()
    observers.append(start_observer(str(root), recursive=True, events=events))

    os.rename(root / "gone.txt", outside / "gone.txt")
    deleted = next_event(events, lambda e: e.kind == "deleted")
    assert (deleted.src, deleted.is_directory) == ("gone.txt", False)


def test_events_arriving_together_are_read_together_and_a_lone_one_at_once(
        tmp_path: Path, observers: list[BaseObserver], monkeypatch: pytest.MonkeyPatch) -> None:
    """The inotify reader pauses after each read that found events, so a burst is taken
    in a few reads instead of one wakeup per event; a lone event still arrives at once."""
    pause = 1.0
    monkeypatch.setattr(inotify_observer.BatchingInotifyFD, "BATCH_PAUSE_SECONDS", pause)
    reads: list[int] = []
    original = inotify_observer.BatchingInotifyFD.read_events

    def counted(self: inotify_observer.BatchingInotifyFD, **kwargs: int) -> list[InotifyEvent]:
        found = original(self, **kwargs)
        reads.append(len(found))
        return found

    monkeypatch.setattr(inotify_observer.BatchingInotifyFD, "read_events", counted)
    events: queue.SimpleQueue[RawEvent] = queue.SimpleQueue()
    observers.append(start_observer(str(tmp_path), recursive=True, events=events,
                                    mode="inotify"))

    started = time.monotonic()
    os.mkdir(tmp_path / "first")
    next_event(events, lambda e: e.src == "first")
    assert time.monotonic() - started < pause, "a lone event waited for the pause"
    for index in range(100):  # all made while the reader pauses after "first"
        (tmp_path / f"f{index:03d}").write_bytes(b"x")
    closed = {e.src for e in _drain_until(events, lambda e: e.src == "f099" and e.kind == "closed")
              if e.kind == "closed"}

    assert closed == {f"f{index:03d}" for index in range(100)}
    assert len([count for count in reads if count]) <= 3, reads


def _inotify(wd: int, mask: int, name: bytes, cookie: int = 0) -> InotifyEvent:
    return InotifyEvent(WatchDescriptor(wd), Mask(mask), cookie, name)


def test_only_the_last_content_event_of_a_file_in_a_read_is_passed_on() -> None:
    """create, modify, close of one file read together → the close alone; order kept."""
    c = InotifyConstants
    events = [_inotify(1, c.IN_CREATE, b"a"), _inotify(1, c.IN_CREATE, b"b"),
              _inotify(1, c.IN_MODIFY, b"a"), _inotify(2, c.IN_MODIFY, b"a"),
              _inotify(1, c.IN_CLOSE_WRITE, b"a"), _inotify(1, c.IN_MODIFY, b"b")]

    kept = inotify_observer.latest_content_events(events)

    assert [(e.wd, e.mask, e.name) for e in kept] == [
        (2, c.IN_MODIFY, b"a"), (1, c.IN_CLOSE_WRITE, b"a"), (1, c.IN_MODIFY, b"b")]


def test_content_events_around_a_deletion_or_move_of_the_name_are_all_kept() -> None:
    """Nothing is merged across another event for the same name, nor for directories."""
    c = InotifyConstants
    events = [_inotify(1, c.IN_CREATE, b"f"), _inotify(1, c.IN_CLOSE_WRITE, b"f"),
              _inotify(1, c.IN_MOVED_FROM, b"f", cookie=7), _inotify(1, c.IN_CREATE, b"f"),
              _inotify(1, c.IN_DELETE, b"f"), _inotify(1, c.IN_CREATE, b"f"),
              _inotify(1, c.IN_CREATE | c.IN_ISDIR, b"d"),
              _inotify(1, c.IN_CREATE | c.IN_ISDIR, b"d")]

    kept = inotify_observer.latest_content_events(events)

    assert [(e.mask, e.name) for e in kept] == [
        (c.IN_CLOSE_WRITE, b"f"), (c.IN_MOVED_FROM, b"f"), (c.IN_CREATE, b"f"),
        (c.IN_DELETE, b"f"), (c.IN_CREATE, b"f"),
        (c.IN_CREATE | c.IN_ISDIR, b"d"), (c.IN_CREATE | c.IN_ISDIR, b"d")]


def test_subdirectories_later_leaves_their_watches_to_the_walk(
        tmp_path: Path, observers: list[BaseObserver]) -> None:
    """observer started with subdirectories_later: the root is watched at once, an existing
    subdirectory once a walk handed it to directory_watcher, a new one as soon as it appears."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    events: queue.SimpleQueue[RawEvent] = queue.SimpleQueue()
    observers.append(start_observer(str(tmp_path), recursive=True, events=events,
                                    mode="inotify", subdirectories_later=True))
    (tmp_path / "a" / "b" / "early.txt").write_text("before the walk")
    (tmp_path / "top.txt").write_text("in the root")
    # One inotify queue keeps the order: had a/b been watched, early.txt came first.
    before = _drain_until(events, lambda e: e.src == "top.txt")
    assert not any(e.src == "a/b/early.txt" for e in before)

    watch = directory_watcher(observers[0])
    assert watch is not None
    everything = PathFilter(include=("*",), exclude=())
    root = ConfinedRoot(str(tmp_path))
    found = {p for batch in scan_batches(root, "", everything, recursive=True, watch=watch)
             for p in batch}
    assert "a/b/early.txt" in found  # the walk itself reports what came before its watch
    (tmp_path / "a" / "b" / "late.txt").write_text("after the walk")
    next_event(events, lambda e: e.src == "a/b/late.txt")
    (tmp_path / "new" / "inner").mkdir(parents=True)
    (tmp_path / "new" / "inner" / "file.txt").write_text("in a directory made later")
    next_event(events, lambda e: e.src == "new/inner/file.txt")


def test_only_an_inotify_observer_started_so_needs_a_directory_watcher(
        tmp_path: Path, observers: list[BaseObserver]) -> None:
    """directory_watcher is None for a polling observer and for a fully watching one."""
    events: queue.SimpleQueue[RawEvent] = queue.SimpleQueue()
    observers.append(start_observer(str(tmp_path), recursive=True, events=events,
                                    mode="polling", subdirectories_later=True))
    observers.append(start_observer(str(tmp_path), recursive=True, events=events))
    assert [directory_watcher(o) for o in observers] == [None, None]
