"""Observer on real trees: many directories, directories moved in, out and renamed, attrib."""

from __future__ import annotations

import os
import queue
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify import InotifyWatchGroup
from watchdog.observers.inotify_c import InotifyConstants

from multiwatch.watcher import inotify_observer
from multiwatch.watcher.observe import directory_watcher, start_observer
from multiwatch.watcher.raw_event import EventKind, RawEvent


def next_event(events: queue.SimpleQueue[RawEvent], wanted: Callable[[RawEvent], bool],
               timeout: float = 5.0) -> RawEvent:
    """The first queued notification matching `wanted`; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            event = events.get(timeout=remaining)
        except queue.Empty:
            break
        if wanted(event):
            return event
    raise AssertionError("expected notification did not arrive")


def events_until(events: queue.SimpleQueue[RawEvent], last: Callable[[RawEvent], bool],
                 timeout: float = 5.0) -> list[RawEvent]:
    """Every notification up to and including the first matching `last`, in order."""
    seen: list[RawEvent] = []
    deadline = time.monotonic() + timeout
    while not seen or not last(seen[-1]):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no final notification; saw {seen[-10:]}"
        try:
            seen.append(events.get(timeout=remaining))
        except queue.Empty:
            continue
    return seen


def kernel_watches(observer: BaseObserver) -> list[str]:
    """The "inotify wd:" lines the kernel lists for the observer's inotify instance."""
    fd = observer.reader._inotify_fd  # type: ignore[attr-defined]
    with open(f"/proc/self/fdinfo/{fd}") as info:
        return [line for line in info if line.startswith("inotify wd:")]


def await_condition(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Poll `check` until it holds; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def reader_alive(observer: BaseObserver) -> bool:
    return observer.reader.is_alive() and all(  # type: ignore[attr-defined]
        e.is_alive() for e in observer.emitters)


def test_watching_20000_directories_resolves_each_path_a_bounded_number_of_times(
        tmp_path: Path, observers: list[BaseObserver], monkeypatch: pytest.MonkeyPatch) -> None:
    """A library of 20,000 album directories is watched by a walk whose cost per directory
    does not grow with the tree (no path map rebuilt per watch), and all are watched."""
    artists, albums = 100, 200
    for artist in range(artists):
        for album in range(albums):
            os.makedirs(tmp_path / f"artist{artist:03d}" / f"album{album:03d}")
    directories = [str(tmp_path / f"artist{a:03d}") for a in range(artists)]
    directories += [str(tmp_path / f"artist{a:03d}" / f"album{b:03d}")
                    for a in range(artists) for b in range(albums)]
    bound = 3 * len(directories)  # generous: linear, whatever the constant
    resolved = 0
    original = InotifyWatchGroup._resolve_path

    def counted(self: InotifyWatchGroup, wd: int) -> bytes | None:
        nonlocal resolved
        resolved += 1
        if resolved > bound:
            raise AssertionError(f"more than {bound} path resolutions: quadratic")
        return original(self, wd)  # type: ignore[arg-type]

    monkeypatch.setattr(InotifyWatchGroup, "_resolve_path", counted)
    events: queue.SimpleQueue[RawEvent] = queue.SimpleQueue()
    observer = start_observer(str(tmp_path), recursive=True, events=events, mode="inotify",
                              subdirectories_later=True)
    observers.append(observer)
    watch = directory_watcher(observer)
    assert watch is not None

    for directory in directories:
        watch(directory)
    for directory in directories[:1000]:  # a second walk adds nothing
        watch(directory)

    assert len(kernel_watches(observer)) == len(directories) + 1
    (tmp_path / "artist099" / "album199" / "last.flac").write_bytes(b"x")
    next_event(events, lambda e: e.src == "artist099/album199/last.flac")


def test_directories_moved_out_lose_their_watches_and_their_files_are_not_announced(
        tmp_path: Path, observers: list[BaseObserver]) -> None:
    """50 directories (with subdirectories) moved out of the tree: each is reported deleted,
    the kernel drops all their watches, and a file written there later is not reported."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    for index in range(50):
        (root / f"d{index:02d}" / "inner").mkdir(parents=True)
    outside.mkdir()
    events: queue.SimpleQueue[RawEvent] = queue.SimpleQueue()
    observer = start_observer(str(root), recursive=True, events=events, mode="inotify")
    observers.append(observer)
    assert len(kernel_watches(observer)) == 101

    for index in range(50):
        os.rename(root / f"d{index:02d}", outside / f"d{index:02d}")
    deleted: set[str | None] = set()
    while len(deleted) < 50:
        event = next_event(events, lambda e: e.kind == "deleted" and e.is_directory)
        deleted.add(event.src)
    assert deleted == {f"d{index:02d}" for index in range(50)}
    await_condition(lambda: len(kernel_watches(observer)) == 1,
                    f"moved-out watches kept: {len(kernel_watches(observer)) - 1}")

    (outside / "d07" / "inner" / "elsewhere.txt").write_text("not in the tree any more")
    (root / "sentinel.txt").write_text("in the tree")
    seen = events_until(events, lambda e: e.src == "sentinel.txt")
    assert not [e for e in seen if e.src and "elsewhere" in e.src], seen


def test_recreating_the_path_of_a_directory_moved_out_is_ordinary(
        tmp_path: Path, observers: list[BaseObserver]) -> None:
    """mv root/incoming elsewhere; mkdir root/incoming: the new directory's files are
    reported and the observer's threads live on."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "incoming").mkdir(parents=True)
    outside.mkdir()
    events: queue.SimpleQueue[RawEvent] = queue.SimpleQueue()
    observer = start_observer(str(root), recursive=True, events=events, mode="inotify")
    observers.append(observer)

    os.rename(root / "incoming", outside / "incoming")
    (root / "incoming").mkdir()
    (root / "incoming" / "new.mp3").write_bytes(b"arrived after the swap")

    # (Written before the new directory's watch was added: watchdog reports it "created".)
    next_event(events, lambda e: e.src == "incoming/new.mp3")
    assert reader_alive(observer), "an observer thread died"
    (outside / "incoming" / "old-place.mp3").write_bytes(b"outside")
    (root / "incoming" / "second.mp3").write_bytes(b"still watched")
    seen = events_until(events, lambda e: e.src == "incoming/second.mp3" and e.kind == "closed")
    assert not [e for e in seen if e.src and "old-place" in e.src], seen


def test_a_directory_moved_in_from_outside_is_one_created_directory_then_watched(
        tmp_path: Path, observers: list[BaseObserver]) -> None:
    """A finished album moved in from outside arrives as a created directory (the pipeline
    scans it), and files written later in its nested directories are reported."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    (outside / "Album" / "CD1").mkdir(parents=True)
    (outside / "Album" / "CD1" / "01.flac").write_bytes(b"track")
    events: queue.SimpleQueue[RawEvent] = queue.SimpleQueue()
    observers.append(start_observer(str(root), recursive=True, events=events, mode="inotify"))

    os.rename(outside / "Album", root / "Album")
    created = next_event(events, lambda e: e.src == "Album")
    assert (created.kind, created.is_directory) == ("created", True)
    (root / "Album" / "CD1" / "02.flac").write_bytes(b"later")
    next_event(events, lambda e: e.src == "Album/CD1/02.flac" and e.kind == "closed")


def test_a_directory_renamed_from_an_excluded_name_is_one_move_and_stays_watched(
        tmp_path: Path, observers: list[BaseObserver]) -> None:
    """mv root/.staging root/Album arrives as one directory move (source, destination), and
    later files in its nested directories are reported under the new name."""
    root = tmp_path / "root"
    (root / ".staging" / "CD1").mkdir(parents=True)
    (root / ".staging" / "CD1" / "01.flac").write_bytes(b"staged")
    events: queue.SimpleQueue[RawEvent] = queue.SimpleQueue()
    observers.append(start_observer(str(root), recursive=True, events=events, mode="inotify"))

    os.rename(root / ".staging", root / "Album")
    moved = next_event(events, lambda e: e.is_directory and e.kind != "attrib")
    assert moved == RawEvent(EventKind.MOVED, True, ".staging", "Album")
    (root / "Album" / "CD1" / "02.flac").write_bytes(b"later")
    late = next_event(events, lambda e: e.kind == "closed")
    assert late.src == "Album/CD1/02.flac"


def test_mode_changes_arrive_as_attrib_for_files_and_directories(
        tmp_path: Path, observers: list[BaseObserver]) -> None:
    """chmod of a file or a directory (e.g. made readable later) arrives as "attrib"."""
    (tmp_path / "locked.mp3").write_bytes(b"x")
    (tmp_path / "dir").mkdir()
    events: queue.SimpleQueue[RawEvent] = queue.SimpleQueue()
    observer = start_observer(str(tmp_path), recursive=True, events=events, mode="inotify")
    observers.append(observer)
    mask = int(kernel_watches(observer)[0].split("mask:")[1].split()[0], 16)
    assert mask & InotifyConstants.IN_ATTRIB

    os.chmod(tmp_path / "locked.mp3", stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP)
    attrib = RawEvent(EventKind.ATTRIB, False, "locked.mp3")
    assert next_event(events, lambda e: e.kind == "attrib") == attrib
    os.chmod(tmp_path / "dir", 0o755)
    attrib = RawEvent(EventKind.ATTRIB, True, "dir")
    assert next_event(events, lambda e: e.kind == "attrib") == attrib


def test_a_failure_while_handling_an_event_asks_for_a_rescan_and_the_thread_lives_on(
        tmp_path: Path, observers: list[BaseObserver], monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected error on the emitter thread (what it was handling may be lost) becomes
    an "overflow" (the pipeline rescans), and later files are still reported."""
    original = inotify_observer.DirectInotifyEmitter.build_and_queue_event
    failures = [RuntimeError("watchdog broke")]

    def fails_once(self: inotify_observer.DirectInotifyEmitter, *args: object,
                   **kwargs: object) -> None:
        if failures:
            raise failures.pop()
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(inotify_observer.DirectInotifyEmitter, "build_and_queue_event", fails_once)
    events: queue.SimpleQueue[RawEvent] = queue.SimpleQueue()
    observer = start_observer(str(tmp_path), recursive=True, events=events, mode="inotify")
    observers.append(observer)

    (tmp_path / "lost.txt").write_bytes(b"x")
    next_event(events, lambda e: e.kind == "overflow")
    (tmp_path / "after.txt").write_bytes(b"x")
    next_event(events, lambda e: e.src == "after.txt")
    assert reader_alive(observer)
