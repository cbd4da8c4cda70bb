"""Directories renamed into place, and walks over trees of many directories, driven step by step."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from watchdog.observers.api import BaseObserver

import multiwatch.watcher.pipeline as pipeline_module
import multiwatch.watcher.reconcile as reconcile_module
from multiwatch.watcher.observe import directory_watcher
from multiwatch.watcher.path_index import PathIndex
from multiwatch.watcher.raw_event import EventKind, RawEvent
from multiwatch.watcher.settle import SettleTable
from multiwatch.watcher.watching import observe
from tests.watcher.test_pipeline import (
    announce,
    drain,
    known_files,
    make_pipeline,
    run_until,
    settle_all,
    summary,
)


def _stage(root: Path, staging: str, files: dict[str, bytes]) -> None:
    for relative, data in files.items():
        path = root / staging / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_directory_renamed_from_a_hidden_name_announces_its_files(tmp_path: Path) -> None:
    """mkdir .staging; write song.mp3; mv .staging Album: Album/song.mp3 is discovered once."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    _stage(root, ".staging", {"song.mp3": b"tune"})
    assert announce(pipeline, outbox, RawEvent(EventKind.CREATED, True, ".staging"),
                    RawEvent(EventKind.CREATED, False, ".staging/song.mp3")) == []
    os.rename(root / ".staging", root / "Album")
    bodies = announce(pipeline, outbox, RawEvent(EventKind.MOVED, True, ".staging", "Album"))
    assert summary(bodies) == [("file_discovered", "Album/song.mp3")]


def test_staged_nested_directory_announces_every_file_below(tmp_path: Path) -> None:
    """A staged tree with subdirectories, renamed into place, has every file discovered."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    files = {"cd1/01.mp3": b"one", "cd1/deep/02.mp3": b"two", "cover.jpg": b"img"}
    _stage(root, ".staging", files)
    os.rename(root / ".staging", root / "Album")
    bodies = announce(pipeline, outbox, RawEvent(EventKind.MOVED, True, ".staging", "Album"))
    assert sorted(summary(bodies)) == sorted(("file_discovered", f"Album/{p}") for p in files)


@pytest.mark.parametrize("per_file_first", [False, True])
def test_staged_directory_announced_once_whatever_the_event_order(
        tmp_path: Path, per_file_first: bool) -> None:
    """The per-file moves watchdog adds for a moved directory, after its move or before it
    and after, do not duplicate what the directory's scan announces."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    files = {"cd1/01.mp3": b"one", "cd1/deep/02.mp3": b"two", "cover.jpg": b"img"}
    _stage(root, ".staging", files)
    os.rename(root / ".staging", root / "Album")
    per_file = [RawEvent(EventKind.MOVED, False, f".staging/{p}", f"Album/{p}") for p in files]
    directory = [RawEvent(EventKind.MOVED, True, ".staging", "Album")]
    events = [*per_file, *directory, *per_file] if per_file_first else [*directory, *per_file]
    bodies = announce(pipeline, outbox, *events)
    assert sorted(summary(bodies)) == sorted(("file_discovered", f"Album/{p}") for p in files)


def test_directory_excluded_by_glob_renamed_into_place_is_announced(tmp_path: Path) -> None:
    """With exclude ["*.tmp"], incoming.tmp/a.flac renamed to incoming/ is discovered."""
    pipeline, outbox, root = make_pipeline(tmp_path, exclude=("*.tmp",))
    _stage(root, "incoming.tmp", {"a.flac": b"lossless", "sub/b.flac": b"more"})
    os.rename(root / "incoming.tmp", root / "incoming")
    bodies = announce(pipeline, outbox, RawEvent(EventKind.MOVED, True, "incoming.tmp", "incoming"))
    assert sorted(summary(bodies)) == [("file_discovered", "incoming/a.flac"),
                                       ("file_discovered", "incoming/sub/b.flac")]


@pytest.mark.parametrize("event", [RawEvent(EventKind.CREATED, True, "Album"),
                                   RawEvent(EventKind.MOVED, True, None, "Album")])
def test_directory_moved_in_from_outside_announces_its_files(
        tmp_path: Path, event: RawEvent) -> None:
    """A tree moved in from outside the watched root (reported as created, or as a move with
    no source) has each of its files discovered."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    _stage(tmp_path, "outside", {"x.mp3": b"x", "inner/y.mp3": b"y"})
    os.rename(tmp_path / "outside", root / "Album")
    bodies = announce(pipeline, outbox, event)
    assert sorted(summary(bodies)) == [("file_discovered", "Album/inner/y.mp3"),
                                       ("file_discovered", "Album/x.mp3")]


def test_renamed_directory_with_known_and_new_files_moves_one_and_discovers_other(
        tmp_path: Path) -> None:
    """A directory renamed from a wanted name to another: known files are moved (not
    rediscovered), a file added meanwhile without an event is discovered."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    known_files(pipeline, outbox, root, {"a/old.mp3": b"old"})
    (root / "a" / "quiet.mp3").write_bytes(b"no event for me")
    os.rename(root / "a", root / "b")
    bodies = announce(pipeline, outbox, RawEvent(EventKind.MOVED, True, "a", "b"))
    assert sorted(summary(bodies)) == [("file_discovered", "b/quiet.mp3"),
                                       ("file_moved", "b/old.mp3")]


def test_file_renamed_from_a_tmp_name_is_announced(tmp_path: Path) -> None:
    """x.tmp renamed to x (x.tmp excluded by glob) is discovered under its new name."""
    pipeline, outbox, root = make_pipeline(tmp_path, exclude=("*.tmp",))
    (root / "x.tmp").write_bytes(b"payload")
    os.rename(root / "x.tmp", root / "x")
    bodies = announce(pipeline, outbox, RawEvent(EventKind.MOVED, False, "x.tmp", "x"))
    assert summary(bodies) == [("file_discovered", "x")]


# -- the walk's budget per step -----------------------------------------------------------


def _steps_to_walk(pipeline: pipeline_module.Pipeline) -> int:
    pipeline.request_scan()
    steps = 0
    deadline = time.monotonic() + 60
    while pipeline._reconciler.scans:
        assert time.monotonic() < deadline, "the walk did not end"
        pipeline.step(0.0)
        steps += 1
    return steps


def test_walk_over_many_empty_directories_is_spread_over_many_steps(tmp_path: Path) -> None:
    """4,000 directories without files are not walked in one step (the loop could not
    heartbeat): each step opens a bounded number of directories."""
    pipeline, _, root = make_pipeline(tmp_path)
    for i in range(4000):
        (root / f"artist{i // 20}" / f"album{i % 20}").mkdir(parents=True)
    per_step = pipeline_module.SCAN_ENTRIES_PER_STEP // reconcile_module.DIRECTORY_COST
    assert _steps_to_walk(pipeline) >= 4200 // per_step


def test_walk_over_many_one_file_directories_is_bounded_per_step(tmp_path: Path) -> None:
    """A tree of 3,000 directories with one file each takes several steps, and every file
    is still discovered once."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    for i in range(3000):
        (root / f"d{i // 30}" / f"e{i % 30}").mkdir(parents=True)
        (root / f"d{i // 30}" / f"e{i % 30}" / "t.mp3").write_bytes(b"%d" % i)
    assert _steps_to_walk(pipeline) >= 3000 * 11 // pipeline_module.SCAN_ENTRIES_PER_STEP
    settle_all(pipeline)
    assert len(drain(outbox)) == 3000


def test_each_walk_step_ends_within_its_time_budget(tmp_path: Path) -> None:
    """On a slow disk (each directory taking 20 ms to watch) a walk is cut into steps of
    about SCAN_SECONDS_PER_STEP, so heartbeats keep flowing between them: no step watches
    more directories than fit in its time budget (a loaded machine fits fewer, never more)."""
    pipeline, _, root = make_pipeline(tmp_path)
    for i in range(60):
        (root / f"d{i}").mkdir()
    watched = [0]

    def slow_watch(_path: str) -> None:
        time.sleep(0.02)
        watched[0] += 1

    pipeline.request_scan(watch=slow_watch)
    per_step = []
    deadline = time.monotonic() + 60
    while pipeline._reconciler.scans:
        assert time.monotonic() < deadline
        before = watched[0]
        pipeline.step(0.0)
        per_step.append(watched[0] - before)
    assert sum(per_step) == 60
    assert max(per_step) <= pipeline_module.SCAN_SECONDS_PER_STEP / 0.02 + 2, per_step


# -- subtree lookups ----------------------------------------------------------------------


def test_path_index_finds_a_subtree_and_forgets_emptied_directories() -> None:
    """The paths below a directory are those with its prefix; removing them all leaves no
    trace of their directories."""
    index = PathIndex(["a/x", "a/b/y", "ab/z", "top"])
    assert sorted(index.under("a")) == ["a/b/y", "a/x"]
    assert sorted(index.under("")) == ["a/b/y", "a/x", "ab/z", "top"]
    for path in ("a/x", "a/b/y"):
        index.discard(path)
    assert index.under("a") == [] and sorted(index.under("")) == ["ab/z", "top"]
    assert index._subdirectories == {"": {"ab"}}


def test_settle_table_under_follows_touches_and_discards() -> None:
    """Waiting paths below a directory stay right as paths come, go and fall due."""
    table = SettleTable(0.0)
    table.touch("a/1", 0.0)
    assert table.under("a") == ["a/1"]
    table.touch("a/b/2", 0.0)
    table.touch("c/3", 0.0)
    table.discard("a/1")
    assert table.under("a") == ["a/b/2"]
    table.pop_due(1.0, 10)
    assert table.under("a") == [] and table.under("c") == []


def test_looking_up_many_directories_stays_linear(tmp_path: Path) -> None:
    """Finding what is tracked or settling below each of 2,000 directories (as 2,000 renames
    or deletions do), with 10,000 files tracked and 22,000 settling, takes well under a
    second: each lookup costs its own subtree, not every path known."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    known_files(pipeline, outbox, root,
                {f"d{d}/f{i}.mp3": b"%d %d" % (d, i) for d in range(2000) for i in range(5)})
    for d in range(2000):
        pipeline.settle.touch(f"d{d}/new.mp3", time.monotonic(), quiet=3600)
    for i in range(20_000):  # a copy in progress elsewhere
        pipeline.settle.touch(f"elsewhere/{i}.mp3", time.monotonic(), quiet=3600)
    started = time.monotonic()
    found = [pipeline._announce.tracked_under(f"d{d}") for d in range(2000)]
    elapsed = time.monotonic() - started
    assert all(len(paths) == 6 for paths in found)
    assert elapsed < 0.8, f"{elapsed:.2f} s"


def test_walk_over_a_directory_of_unwanted_files_is_spread_over_steps(tmp_path: Path) -> None:
    """20,000 files excluded by a path pattern (each still needs an lstat to be judged) are
    walked over several steps, not one, and none is announced."""
    pipeline, outbox, root = make_pipeline(tmp_path, exclude=("cache/*",))
    (root / "cache").mkdir()
    for i in range(20_000):
        (root / "cache" / f"{i}.bin").write_bytes(b"")
    assert _steps_to_walk(pipeline) >= 20_000 // pipeline_module.SCAN_ENTRIES_PER_STEP
    settle_all(pipeline)
    assert drain(outbox) == []


def test_tree_copied_in_is_walked_once_not_once_per_directory(
        tmp_path: Path, monkeypatch) -> None:
    """A tree of 200 directories arriving at once (an event for each) is walked by one scan
    of its top directory, and every file in it is discovered once."""
    walks: list[str] = []
    real = reconcile_module.scan_batches

    def counted(root: str, start: str, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        walks.append(start)
        return real(root, start, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(reconcile_module, "scan_batches", counted)
    pipeline, outbox, root = make_pipeline(tmp_path)
    directories = [f"Library/a{i // 20}/b{i % 20}" for i in range(200)]
    for relative in directories:
        _write_file(root / relative / "t.mp3", relative.encode())
    events = [RawEvent(EventKind.CREATED, True, "Library")]
    events += [RawEvent(EventKind.CREATED, True, d) for d in sorted({d.rpartition("/")[0]
                                                             for d in directories})]
    events += [RawEvent(EventKind.CREATED, True, d) for d in directories]
    bodies = announce(pipeline, outbox, *events)
    assert walks == ["Library"]
    assert sorted(summary(bodies)) == sorted(("file_discovered", f"{d}/t.mp3")
                                             for d in directories)


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_moving_a_big_directory_keeps_reporting_progress(tmp_path: Path) -> None:
    """Moving a directory of 3,000 announced files (an lstat each, in one step) calls the
    progress callback throughout, so the watcher's heartbeat is not silenced."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    known_files(pipeline, outbox, root, {f"big/{i}.mp3": b"%d" % i for i in range(3000)})
    calls: list[float] = []
    pipeline._progress = lambda: calls.append(time.monotonic())
    os.rename(root / "big", root / "moved")
    pipeline.notifications.put(RawEvent(EventKind.MOVED, True, "big", "moved"))
    pipeline.step(0.0)
    assert len(calls) >= 3000
    settle_all(pipeline)
    assert len([b for b in drain(outbox) if b["event_type"] == "file_moved"]) == 3000


# -- watches of directories renamed before their events were read ---------------------------


def test_directory_created_just_before_its_parent_was_renamed_is_watched(
        tmp_path: Path, observers: list[BaseObserver]) -> None:
    """mkdir a/sub; mv a b, both before the inotify reader got to the mkdir (watchdog then
    tries to watch a/sub, which no longer exists): the walk of b watches b/sub, so a file
    written there later is announced."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    (root / "a").mkdir()
    observer = observe(pipeline.instance, pipeline)
    observers.append(observer)
    pipeline.request_scan(watch=directory_watcher(observer))
    settle_all(pipeline)
    [group] = [emitter._inotify for emitter in observer.emitters]  # type: ignore[attr-defined]
    with group._lock:  # the reader waits in the mkdir's event until the rename is done
        (root / "a" / "sub").mkdir()
        os.rename(root / "a", root / "b")
    run_until(pipeline, lambda: _watched(observer, root / "b"), timeout=10)
    settle_all(pipeline)

    (root / "b" / "sub" / "late.mp3").write_bytes(b"written after the rename")
    run_until(pipeline, lambda: bool(outbox.peek(10)), timeout=10)
    assert summary(drain(outbox)) == [("file_discovered", "b/sub/late.mp3")]


def _watched(observer: BaseObserver, directory: Path) -> bool:
    """The watch group knows `directory` under its new name (the rename has been read)."""
    [group] = [emitter._inotify for emitter in observer.emitters]  # type: ignore[attr-defined]
    with group._lock:
        return group._find_node_by_path(os.fsencode(directory)) is not None
