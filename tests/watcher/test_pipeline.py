"""The pipeline driven step by step: notifications and scans in, announced events out."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import xxhash

from multiwatch.config import InstanceConfig
from multiwatch.watcher.outbox import OutboxGauge
from multiwatch.watcher.pipeline import Pipeline
from multiwatch.watcher.raw_event import EventKind, RawEvent
from multiwatch.watcher.state import DurableOutbox, StateStore


def make_pipeline(tmp_path: Path, **options: Any) -> tuple[Pipeline, DurableOutbox, Path]:
    root = tmp_path / "w"
    root.mkdir(exist_ok=True)
    options.setdefault("settle_seconds", 0.05)
    db_path = str(tmp_path / "state" / "state.db")
    store = StateStore(db_path)
    gauge = OutboxGauge(events=0, size=0, max_events=10**6, max_bytes=10**9)
    pipeline = Pipeline(InstanceConfig(id="t", directory=str(root), **options), store, gauge)
    return pipeline, DurableOutbox(db_path), root


def run_until(pipeline: Pipeline, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Step the pipeline until predicate() holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "pipeline did not reach the expected state in time"
        pipeline.step(0.01)


def settle_all(pipeline: Pipeline) -> None:
    """Step until every queued notification, scan and settling path has been dealt with."""
    pipeline.step(0.0)
    run_until(pipeline, lambda: pipeline.notifications.empty() and not pipeline.busy)


def drain(outbox: DurableOutbox) -> list[dict[str, Any]]:
    """Take every announced event out of the outbox (as the publisher would), bodies decoded."""
    bodies = []
    rows = outbox.peek(10**6)
    outbox.ack([seq for seq, _ in rows])
    for _, event in rows:
        body = json.loads(event.body)
        assert body["event_type"] == event.event_type
        bodies.append(body)
    return bodies


def announce(pipeline: Pipeline, outbox: DurableOutbox, *events: RawEvent) -> list[dict[str, Any]]:
    """Feed notifications, let everything settle, return what was announced."""
    for event in events:
        pipeline.notifications.put(event)
    settle_all(pipeline)
    return drain(outbox)


def known_files(pipeline: Pipeline, outbox: DurableOutbox, root: Path,
                files: dict[str, bytes]) -> None:
    """Write files and let a scan announce them, so the pipeline knows them."""
    for relative, data in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    pipeline.request_scan()
    settle_all(pipeline)
    assert sorted(b["file_info"]["relative_path"] for b in drain(outbox)) == sorted(files)


def digests(data: bytes) -> tuple[str, str]:
    return hashlib.sha256(data).hexdigest(), xxhash.xxh128(data).hexdigest()


def hashes_of(body: dict[str, Any]) -> tuple[str, str]:
    return body["file_info"]["sha256_hash"], body["file_info"]["xxh128_hash"]


def summary(bodies: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((b["event_type"], b["file_info"]["relative_path"]) for b in bodies)


# -- discovery -----------------------------------------------------------------------------


def test_file_present_before_start_is_discovered_by_scan(tmp_path: Path) -> None:
    """A file that existed before the watch started is announced once, with correct hashes."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    data = b"already here\n" * 100
    (root / "old.mp3").write_bytes(data)
    pipeline.request_scan()
    settle_all(pipeline)
    [body] = drain(outbox)
    assert body["event_type"] == "file_discovered"
    assert body["instance_id"] == "t"
    assert body["watched_directory"] == str(root)
    assert body["file_info"]["path"] == str(root / "old.mp3")
    assert body["file_info"]["size_bytes"] == str(len(data))
    assert hashes_of(body) == digests(data)


def test_rescan_does_not_reannounce_unchanged_files(tmp_path: Path) -> None:
    """A periodic or overflow rescan of an unchanged tree announces nothing new."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    known_files(pipeline, outbox, root, {"a.mp3": b"a", "sub/b.mp3": b"b"})
    pipeline.request_scan()
    settle_all(pipeline)
    assert drain(outbox) == []


def test_rescan_finds_a_change_the_watcher_missed(tmp_path: Path) -> None:
    """A content change without any notification is announced as modified by the next scan."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    known_files(pipeline, outbox, root, {"a.mp3": b"old"})
    (root / "a.mp3").write_bytes(b"new content")
    pipeline.request_scan()
    settle_all(pipeline)
    [body] = drain(outbox)
    assert body["event_type"] == "file_modified"
    assert hashes_of(body) == digests(b"new content")


def test_created_file_is_discovered(tmp_path: Path) -> None:
    """A new file reported by the watcher is announced as file_discovered with its hashes."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    (root / "new.mp3").write_bytes(b"fresh")
    [body] = announce(pipeline, outbox, RawEvent(EventKind.CREATED, False, "new.mp3"))
    assert body["event_type"] == "file_discovered"
    assert body["file_info"]["relative_path"] == "new.mp3"
    assert hashes_of(body) == digests(b"fresh")


def test_burst_of_events_for_one_file_gives_one_announcement(tmp_path: Path) -> None:
    """created + many modified + closed for one file coalesce into a single file_discovered."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    (root / "new.mp3").write_bytes(b"fresh")
    events = [RawEvent(EventKind.CREATED, False, "new.mp3")]
    events += [RawEvent(EventKind.MODIFIED, False, "new.mp3")] * 20
    events += [RawEvent(EventKind.CLOSED, False, "new.mp3")]
    assert summary(announce(pipeline, outbox, *events)) == [("file_discovered", "new.mp3")]


def test_excluded_files_are_never_announced(tmp_path: Path) -> None:
    """Dot-files, partial downloads and files in dot-directories produce no event."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    (root / ".hidden").write_bytes(b"x")
    (root / "x.mp3.part").write_bytes(b"x")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_bytes(b"x")
    pipeline.request_scan()
    assert announce(pipeline, outbox, RawEvent(EventKind.CREATED, False, ".hidden"),
                    RawEvent(EventKind.MODIFIED, False, "x.mp3.part"),
                    RawEvent(EventKind.CREATED, False, ".git/config")) == []


def test_new_directory_is_scanned_for_files_written_before_its_watch(tmp_path: Path) -> None:
    """Files already inside a newly created directory are discovered (their events were lost)."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    (root / "album" / "cd1").mkdir(parents=True)
    (root / "album" / "01.mp3").write_bytes(b"one")
    (root / "album" / "cd1" / "02.mp3").write_bytes(b"two")
    bodies = announce(pipeline, outbox, RawEvent(EventKind.CREATED, True, "album"))
    assert summary(bodies) == [("file_discovered", "album/01.mp3"),
                               ("file_discovered", "album/cd1/02.mp3")]


# -- modification --------------------------------------------------------------------------


def test_rewritten_content_is_announced_as_modified(tmp_path: Path) -> None:
    """New content in a known file gives file_modified carrying the new hashes."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    known_files(pipeline, outbox, root, {"a.txt": b"version one"})
    (root / "a.txt").write_bytes(b"version two, longer")
    [body] = announce(pipeline, outbox, RawEvent(EventKind.MODIFIED, False, "a.txt"),
                      RawEvent(EventKind.CLOSED, False, "a.txt"))
    assert body["event_type"] == "file_modified"
    assert body["file_info"]["size_bytes"] == str(len(b"version two, longer"))
    assert hashes_of(body) == digests(b"version two, longer")


def test_touch_without_content_change_announces_nothing(tmp_path: Path) -> None:
    """A new mtime with the same bytes is re-checked but not announced as a modification."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    known_files(pipeline, outbox, root, {"a.txt": b"same bytes"})
    before = os.stat(root / "a.txt").st_mtime_ns
    hashed_before = pipeline.files_hashed
    os.utime(root / "a.txt", ns=(time.time_ns(), time.time_ns()))
    assert os.stat(root / "a.txt").st_mtime_ns != before
    assert announce(pipeline, outbox, RawEvent(EventKind.MODIFIED, False, "a.txt")) == []
    assert pipeline.files_hashed == hashed_before + 1  # it was really looked at


def test_file_still_being_written_is_announced_once_when_quiet(tmp_path: Path) -> None:
    """A file whose mtime keeps advancing is held back, then announced once with final bytes."""
    pipeline, outbox, root = make_pipeline(tmp_path, settle_seconds=0.2)
    target = root / "growing.bin"
    target.write_bytes(b"start")
    pipeline.notifications.put(RawEvent(EventKind.CREATED, False, "growing.bin"))
    # A writer that triggers no further events (mmap, NFS): append before every step for
    # three settle periods; the file must not be announced while it keeps changing.
    writing_until = time.monotonic() + 3 * 0.2
    while time.monotonic() < writing_until:
        with open(target, "ab") as handle:
            handle.write(b"more data ")
        pipeline.step(0.01)
        assert not outbox.peek(1), "announced while still being written"
    assert pipeline.files_hashed == 0
    final = target.read_bytes()
    settle_all(pipeline)
    [body] = drain(outbox)
    assert body["event_type"] == "file_discovered"
    assert body["file_info"]["size_bytes"] == str(len(final))
    assert hashes_of(body) == digests(final)


# -- deletion ------------------------------------------------------------------------------


def test_deleted_known_file_is_announced_with_last_known_hashes(tmp_path: Path) -> None:
    """Deleting an announced file gives file_deleted carrying the hashes it was announced with."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    known_files(pipeline, outbox, root, {"a.txt": b"goodbye"})
    (root / "a.txt").unlink()
    [body] = announce(pipeline, outbox, RawEvent(EventKind.DELETED, False, "a.txt"))
    assert body["event_type"] == "file_deleted"
    assert body["file_info"]["path"] == str(root / "a.txt")
    assert body["file_info"]["size_bytes"] == str(len(b"goodbye"))
    assert hashes_of(body) == digests(b"goodbye")


def test_file_created_and_deleted_before_settling_is_never_announced(tmp_path: Path) -> None:
    """A short-lived file (created then deleted within the quiet period) produces no event."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    (root / "flash.mp3").write_bytes(b"x")
    pipeline.notifications.put(RawEvent(EventKind.CREATED, False, "flash.mp3"))
    pipeline.step(0.0)
    (root / "flash.mp3").unlink()
    assert announce(pipeline, outbox, RawEvent(EventKind.DELETED, False, "flash.mp3")) == []


def test_file_gone_by_the_time_it_settles_is_never_announced(tmp_path: Path) -> None:
    """A file whose deletion event has not arrived yet is not announced once it is gone."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    (root / "flash.mp3").write_bytes(b"x")
    pipeline.notifications.put(RawEvent(EventKind.CREATED, False, "flash.mp3"))
    pipeline.step(0.0)
    (root / "flash.mp3").unlink()
    settle_all(pipeline)
    assert drain(outbox) == []


def test_deleted_directory_announces_each_known_file_below_it(tmp_path: Path) -> None:
    """Removing a directory announces file_deleted for every known file below it, only those."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    known_files(pipeline, outbox, root, {"sub/a.mp3": b"a", "sub/deeper/b.mp3": b"b",
                                         "sub2/c.mp3": b"c", "top.mp3": b"t"})
    shutil.rmtree(root / "sub")
    bodies = announce(pipeline, outbox, RawEvent(EventKind.DELETED, True, "sub"))
    assert summary(bodies) == [("file_deleted", "sub/a.mp3"), ("file_deleted", "sub/deeper/b.mp3")]
    by_path = {b["file_info"]["relative_path"]: b for b in bodies}
    assert hashes_of(by_path["sub/a.mp3"]) == digests(b"a")
    assert hashes_of(by_path["sub/deeper/b.mp3"]) == digests(b"b")


def test_deleting_the_root_marks_it_missing(tmp_path: Path) -> None:
    """When the watched directory itself is deleted the pipeline reports root_missing."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    known_files(pipeline, outbox, root, {"a.mp3": b"a"})
    assert pipeline.root_missing is False
    shutil.rmtree(root)
    announce(pipeline, outbox, RawEvent(EventKind.DELETED, True, ""))
    assert pipeline.root_missing is True


# -- moves ---------------------------------------------------------------------------------


def test_rename_within_tree_is_one_moved_event(tmp_path: Path) -> None:
    """Renaming a known file gives a single file_moved naming old and new paths, same hashes."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    known_files(pipeline, outbox, root, {"a.txt": b"content"})
    os.rename(root / "a.txt", root / "b.txt")
    [body] = announce(pipeline, outbox, RawEvent(EventKind.MOVED, False, "a.txt", "b.txt"))
    assert body["event_type"] == "file_moved"
    info = body["file_info"]
    assert info["path"] == str(root / "b.txt")
    assert info["relative_path"] == "b.txt"
    assert info["old_path"] == str(root / "a.txt")
    assert info["old_relative_path"] == "a.txt"
    assert hashes_of(body) == digests(b"content")


def test_renamed_file_is_tracked_under_its_new_name(tmp_path: Path) -> None:
    """After a rename, deleting the file announces the new path, not the old one."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    known_files(pipeline, outbox, root, {"a.txt": b"content"})
    os.rename(root / "a.txt", root / "b.txt")
    announce(pipeline, outbox, RawEvent(EventKind.MOVED, False, "a.txt", "b.txt"))
    (root / "b.txt").unlink()
    events = announce(pipeline, outbox, RawEvent(EventKind.DELETED, False, "b.txt"),
                      RawEvent(EventKind.DELETED, False, "a.txt"))
    assert summary(events) == [("file_deleted", "b.txt")]


def test_rename_from_excluded_name_is_a_discovery(tmp_path: Path) -> None:
    """A download finished by renaming x.mp3.part to x.mp3 is file_discovered, not moved."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    (root / "x.mp3.part").write_bytes(b"downloaded")
    assert announce(pipeline, outbox, RawEvent(EventKind.CREATED, False, "x.mp3.part")) == []
    os.rename(root / "x.mp3.part", root / "x.mp3")
    [body] = announce(pipeline, outbox, RawEvent(EventKind.MOVED, False, "x.mp3.part", "x.mp3"))
    assert body["event_type"] == "file_discovered"
    assert body["file_info"]["relative_path"] == "x.mp3"
    assert "old_path" not in body["file_info"]
    assert hashes_of(body) == digests(b"downloaded")


def test_rename_to_excluded_name_is_a_deletion(tmp_path: Path) -> None:
    """Renaming a known file to an excluded name (e.g. into a dot-directory) is file_deleted."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    known_files(pipeline, outbox, root, {"a.mp3": b"bye"})
    (root / ".trash").mkdir()
    os.rename(root / "a.mp3", root / ".trash" / "a.mp3")
    [body] = announce(pipeline, outbox, RawEvent(EventKind.MOVED, False, "a.mp3", ".trash/a.mp3"))
    assert body["event_type"] == "file_deleted"
    assert body["file_info"]["relative_path"] == "a.mp3"
    assert hashes_of(body) == digests(b"bye")


def test_moved_directory_announces_each_known_file_moved(tmp_path: Path) -> None:
    """Renaming a directory gives file_moved for every known file below it, with old paths."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    known_files(pipeline, outbox, root, {"sub/a.mp3": b"a", "sub/deeper/b.mp3": b"b",
                                         "top.mp3": b"t"})
    os.rename(root / "sub", root / "renamed")
    bodies = announce(pipeline, outbox, RawEvent(EventKind.MOVED, True, "sub", "renamed"))
    assert summary(bodies) == [("file_moved", "renamed/a.mp3"),
                               ("file_moved", "renamed/deeper/b.mp3")]
    old = {b["file_info"]["relative_path"]: b["file_info"]["old_relative_path"] for b in bodies}
    assert old == {"renamed/a.mp3": "sub/a.mp3", "renamed/deeper/b.mp3": "sub/deeper/b.mp3"}
    assert all(b["file_info"]["old_path"] == str(root / old[b["file_info"]["relative_path"]])
               for b in bodies)


def test_moved_directory_followed_by_per_file_moves_announces_once(tmp_path: Path) -> None:
    """watchdog also reports each file of a moved directory: that must not add events."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    known_files(pipeline, outbox, root, {"sub/a.mp3": b"a"})
    os.rename(root / "sub", root / "renamed")
    bodies = announce(pipeline, outbox, RawEvent(EventKind.MOVED, True, "sub", "renamed"),
                      RawEvent(EventKind.MOVED, False, "sub/a.mp3", "renamed/a.mp3"))
    assert summary(bodies) == [("file_moved", "renamed/a.mp3")]


# -- regressions: defects found while writing these tests --------------------------------


def test_non_recursive_instance_ignores_files_in_new_subdirectories(tmp_path: Path) -> None:
    """With recursive off, a directory created or moved into the root announces nothing."""
    pipeline, outbox, root = make_pipeline(tmp_path, recursive=False)
    (root / "album").mkdir()
    (root / "album" / "01.mp3").write_bytes(b"one")
    assert announce(pipeline, outbox, RawEvent(EventKind.CREATED, False, "album/01.mp3")) == []
    assert announce(pipeline, outbox, RawEvent(EventKind.CREATED, True, "album")) == []


def test_file_moved_back_and_forth_gets_distinct_message_ids(tmp_path: Path) -> None:
    """Renaming a→b, b→a, a→b gives three moves a consumer will not drop as duplicates."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    known_files(pipeline, outbox, root, {"a.txt": b"content"})
    ids = []
    for src, dest in [("a.txt", "b.txt"), ("b.txt", "a.txt"), ("a.txt", "b.txt")]:
        os.rename(root / src, root / dest)
        pipeline.notifications.put(RawEvent(EventKind.MOVED, False, src, dest))
        settle_all(pipeline)
        [(seq, event)] = outbox.peek(10)
        assert event.event_type == "file_moved"
        outbox.ack([seq])
        ids.append(event.message_id)
    assert len(set(ids)) == 3


def test_rescan_announces_deletions_the_watcher_missed(tmp_path: Path) -> None:
    """A known file deleted while no notification arrived (observer restart) is file_deleted."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    known_files(pipeline, outbox, root, {"a.mp3": b"a", "b.mp3": b"b"})
    (root / "a.mp3").unlink()
    pipeline.request_scan()
    settle_all(pipeline)
    assert summary(drain(outbox)) == [("file_deleted", "a.mp3")]


def test_startup_scan_logs_progress_and_a_summary(tmp_path: Path, monkeypatch, caplog) -> None:
    """A long startup scan reports files scanned, bytes hashed and rate, then a summary."""
    import multiwatch.watcher.startup_progress as startup_progress_module

    monkeypatch.setattr(startup_progress_module, "PROGRESS_EVERY_SECONDS", 0.0)
    pipeline, outbox, root = make_pipeline(tmp_path)
    for i in range(50):
        (root / f"f{i}.bin").write_bytes(b"x" * 1000)
    caplog.set_level("INFO", logger="multiwatch.watcher.pipeline")
    pipeline.request_scan()
    settle_all(pipeline)

    progress = [r for r in caplog.records if r.getMessage() == "startup scan progress"]
    [summary_line] = [r for r in caplog.records if r.getMessage() == "startup scan complete"]
    assert progress, "no progress line during the scan"
    assert summary_line.files_scanned == 50
    assert summary_line.bytes_hashed == 50_000
    assert hasattr(summary_line, "hash_rate_mb_s")
    assert len(drain(outbox)) == 50


# -- durable state: restart reconcile and the outbox bound ----------------------------------


def test_restart_announces_exactly_what_changed_while_stopped(tmp_path: Path) -> None:
    """A new pipeline over the same state: 3 discovered, 2 modified, 1 deleted, nothing else."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    originals = {f"keep{i}.mp3": b"keep %d" % i for i in range(4)}
    originals |= {"change1.mp3": b"v1", "change2.mp3": b"v1", "remove.mp3": b"bye"}
    known_files(pipeline, outbox, root, originals)
    pipeline.store.close()

    for i in range(3):
        (root / f"new{i}.mp3").write_bytes(b"new %d" % i)
    (root / "change1.mp3").write_bytes(b"version 2")
    (root / "change2.mp3").write_bytes(b"version 2, longer")
    (root / "remove.mp3").unlink()

    restarted, outbox, _ = make_pipeline(tmp_path)
    restarted.request_scan()
    settle_all(restarted)
    assert summary(drain(outbox)) == sorted([
        ("file_discovered", "new0.mp3"), ("file_discovered", "new1.mp3"),
        ("file_discovered", "new2.mp3"), ("file_modified", "change1.mp3"),
        ("file_modified", "change2.mp3"), ("file_deleted", "remove.mp3"),
    ])
    assert restarted.files_hashed == 5  # the four untouched files were not read


def test_full_outbox_holds_settled_files_until_there_is_room(tmp_path: Path) -> None:
    """With the outbox at its bound nothing more is announced; once drained, the rest is."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    pipeline.gauge.max_events = 2
    for i in range(5):
        (root / f"f{i}.bin").write_bytes(b"%d" % i)
    pipeline.request_scan()
    run_until(pipeline, lambda: pipeline.gauge.full and _held_back(pipeline))
    pipeline.step(0.0)
    first = drain(outbox)
    assert len(first) == 2
    got = {b["file_info"]["relative_path"] for b in first}
    while len(got) < 5:  # the publisher confirms, the pipeline refills up to the bound
        pipeline.gauge.removed(pipeline.gauge.depth, 0)
        run_until(pipeline, lambda: pipeline.gauge.depth > 0)
        batch = drain(outbox)
        assert len(batch) <= 2
        got |= {b["file_info"]["relative_path"] for b in batch}
    assert got == {f"f{i}.bin" for i in range(5)}


def _held_back(pipeline: Pipeline) -> bool:
    due = pipeline.settle.next_due()
    return due is not None and due <= time.monotonic()


def test_follow_symlinks_announces_links_inside_the_tree_only(tmp_path: Path) -> None:
    """With follow_symlinks a link to a file in the tree is announced with the target's
    hashes; links leading outside the root (to a file or a directory) announce nothing."""
    pipeline, outbox, root = make_pipeline(tmp_path, follow_symlinks=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"not yours")
    (root / "real.mp3").write_bytes(b"music")
    (root / "alias.mp3").symlink_to(root / "real.mp3")
    (root / "escape.txt").symlink_to(outside / "secret.txt")
    (root / "escape-dir").symlink_to(outside)
    pipeline.request_scan()
    settle_all(pipeline)
    bodies = drain(outbox)
    assert summary(bodies) == [("file_discovered", "alias.mp3"), ("file_discovered", "real.mp3")]
    alias = next(b for b in bodies if b["file_info"]["relative_path"] == "alias.mp3")
    assert hashes_of(alias) == digests(b"music")

    (root / "late-escape.txt").symlink_to(outside / "secret.txt")
    assert announce(pipeline, outbox, RawEvent(EventKind.CREATED, False, "late-escape.txt")) == []


def test_symlinks_are_not_followed_by_default(tmp_path: Path) -> None:
    """Without follow_symlinks even a link to a file inside the tree is not announced."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    (root / "real.mp3").write_bytes(b"music")
    (root / "alias.mp3").symlink_to(root / "real.mp3")
    pipeline.request_scan()
    settle_all(pipeline)
    assert summary(drain(outbox)) == [("file_discovered", "real.mp3")]


def test_close_aware_mode_announces_soon_after_close(tmp_path: Path) -> None:
    """With close_grace_seconds a close-after-write ends the quiet period early: a file
    with settle_seconds 5 is announced within a second of its close."""
    pipeline, outbox, root = make_pipeline(tmp_path, settle_seconds=5.0, close_grace_seconds=0.02)
    (root / "song.mp3").write_bytes(b"complete")
    for kind in (EventKind.CREATED, EventKind.MODIFIED, EventKind.CLOSED):
        pipeline.notifications.put(RawEvent(kind, False, "song.mp3"))
    started = time.monotonic()
    run_until(pipeline, lambda: pipeline.gauge.depth == 1, timeout=2)
    assert time.monotonic() - started < 1.0
    assert summary(drain(outbox)) == [("file_discovered", "song.mp3")]


def test_close_aware_mode_waits_the_full_settle_after_a_reopen(tmp_path: Path) -> None:
    """A write after the close (an immediate reopen) restores the full quiet period."""
    pipeline, _, root = make_pipeline(tmp_path, settle_seconds=5.0, close_grace_seconds=0.02)
    (root / "song.mp3").write_bytes(b"part")
    pipeline.notifications.put(RawEvent(EventKind.CLOSED, False, "song.mp3"))
    pipeline.notifications.put(RawEvent(EventKind.MODIFIED, False, "song.mp3"))
    pipeline.step(0.0)
    due = pipeline.settle.next_due()
    assert due is not None and due - time.monotonic() > 4.0


def test_without_close_aware_mode_a_close_waits_the_full_settle(tmp_path: Path) -> None:
    """By default a close event is just another event: the full settle_seconds applies."""
    pipeline, _, root = make_pipeline(tmp_path, settle_seconds=5.0)
    (root / "song.mp3").write_bytes(b"complete")
    pipeline.notifications.put(RawEvent(EventKind.CLOSED, False, "song.mp3"))
    pipeline.step(0.0)
    due = pipeline.settle.next_due()
    assert due is not None and due - time.monotonic() > 4.0


def test_restart_announces_moves_and_deletions_with_the_recorded_hashes(tmp_path: Path) -> None:
    """After a restart, a renamed or deleted file is announced with the hashes recorded
    before the stop (the restart loads only versions; hashes are read when needed)."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    known_files(pipeline, outbox, root, {"a.mp3": b"alpha", "b.mp3": b"beta", "c.mp3": b"gamma"})
    pipeline.store.close()

    restarted, outbox, _ = make_pipeline(tmp_path)
    restarted.request_scan()
    settle_all(restarted)
    assert drain(outbox) == [] and restarted.files_hashed == 0
    os.rename(root / "a.mp3", root / "moved.mp3")
    (root / "b.mp3").unlink()
    bodies = announce(restarted, outbox, RawEvent(EventKind.MOVED, False, "a.mp3", "moved.mp3"),
                      RawEvent(EventKind.DELETED, False, "b.mp3"))
    by_type = {b["event_type"]: b for b in bodies}
    assert sorted(by_type) == ["file_deleted", "file_moved"]
    assert by_type["file_moved"]["file_info"]["relative_path"] == "moved.mp3"
    assert hashes_of(by_type["file_moved"]) == digests(b"alpha")
    assert hashes_of(by_type["file_deleted"]) == digests(b"beta")
    assert restarted.files_hashed == 0


def test_restart_scan_over_many_directories_announces_nothing_unchanged(
        tmp_path: Path, monkeypatch) -> None:
    """A restart scan handed over in small batches across directories still meets every
    file once: nothing unchanged is announced or hashed, a deletion in the middle is found."""
    import multiwatch.watcher.pipeline as pipeline_module
    import multiwatch.watcher.scan as scan_module

    monkeypatch.setattr(pipeline_module, "SCAN_ENTRIES_PER_STEP", 7)
    monkeypatch.setattr(scan_module, "BATCH_ENTRIES", 3)
    pipeline, outbox, root = make_pipeline(tmp_path)
    files = {f"d{d}/f{i}.bin": b"%d-%d" % (d, i) for d in range(5) for i in range(8)}
    known_files(pipeline, outbox, root, files)
    pipeline.store.close()
    (root / "d2" / "f5.bin").unlink()

    restarted, outbox, _ = make_pipeline(tmp_path)
    restarted.request_scan()
    settle_all(restarted)
    assert summary(drain(outbox)) == [("file_deleted", "d2/f5.bin")]
    assert restarted.files_hashed == 0
    assert len(restarted.tracked) == len(files) - 1


# -- restarts over fingerprinted directories ----------------------------------------------


def _stopped_cleanly_then_restarted(tmp_path: Path, pipeline: Pipeline
                                    ) -> tuple[Pipeline, DurableOutbox]:
    """Stop as the watcher does (the stop fingerprints the directories changed while
    running), then start over the same state."""
    pipeline.close()
    pipeline.store.close()
    restarted, outbox, _ = make_pipeline(tmp_path)
    return restarted, outbox


def _swap(first: Path, second: Path) -> None:
    parked = first.with_name("parked")
    first.rename(parked)
    second.rename(first)
    parked.rename(second)


@pytest.mark.parametrize(("change", "expected"), [
    ("nothing", []),
    ("delete a file", [("file_deleted", "d1/b.bin")]),
    ("delete a directory", [("file_deleted", "d2/a.bin"), ("file_deleted", "d2/b.bin")]),
    ("add a file", [("file_discovered", "d1/new.bin")]),
    ("rewrite a file, same size", [("file_modified", "d1/a.bin")]),
    ("swap two files' names", [("file_modified", "d1/a.bin"), ("file_modified", "d1/b.bin")]),
    ("delete a file at the root", [("file_deleted", "top.bin")]),
])
def test_restart_after_a_clean_stop_announces_exactly_what_changed_meanwhile(
        tmp_path: Path, change: str, expected: list[tuple[str, str]]) -> None:
    """A clean stop fingerprints each directory; a restart skips the rows of directories
    whose listing still has its fingerprint, and still finds every change made while
    multiwatch was stopped, in those directories or in ones gone entirely."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    files = {"top.bin": b"top", **{f"d{d}/{n}.bin": b"%d-%s" % (d, n.encode())
                                   for d in range(3) for n in ("a", "b")}}
    known_files(pipeline, outbox, root, files)
    restarted, outbox = _stopped_cleanly_then_restarted(tmp_path, pipeline)
    d1 = root / "d1"
    if change == "delete a file":
        (d1 / "b.bin").unlink()
    elif change == "delete a directory":
        shutil.rmtree(root / "d2")
    elif change == "add a file":
        (d1 / "new.bin").write_bytes(b"new")
    elif change == "rewrite a file, same size":
        (d1 / "a.bin").write_bytes(b"1-x")
        os.utime(d1 / "a.bin", ns=(1, time.time_ns() + 10**9))
    elif change == "swap two files' names":
        _swap(d1 / "a.bin", d1 / "b.bin")
    elif change == "delete a file at the root":
        (root / "top.bin").unlink()
    restarted.request_scan()
    settle_all(restarted)
    assert summary(drain(outbox)) == expected
    assert restarted.files_hashed == sum(kind != "file_deleted" for kind, _ in expected)


def test_restart_reads_no_rows_of_directories_whose_fingerprint_holds(tmp_path: Path) -> None:
    """After a clean stop, a restart over an unchanged tree reads none of the tracked
    files' rows; a directory changed meanwhile is the only one read, and the next start
    reads none again (its scan fingerprinted it)."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    known_files(pipeline, outbox, root, {f"d{d}/f{n}.bin": b"%d%d" % (d, n)
                                         for d in range(4) for n in range(3)})
    restarted, outbox = _stopped_cleanly_then_restarted(tmp_path, pipeline)
    restarted.request_scan()
    settle_all(restarted)
    assert drain(outbox) == [] and restarted.tracked.directories_read() == set()

    (root / "d3" / "f9.bin").write_bytes(b"new")
    restarted, outbox = _stopped_cleanly_then_restarted(tmp_path, restarted)
    restarted.request_scan()
    settle_all(restarted)
    assert summary(drain(outbox)) == [("file_discovered", "d3/f9.bin")]
    assert restarted.tracked.directories_read() == {"d3"}

    restarted, outbox = _stopped_cleanly_then_restarted(tmp_path, restarted)
    restarted.request_scan()
    settle_all(restarted)
    assert drain(outbox) == [] and restarted.tracked.directories_read() == set()


def test_restart_with_directories_too_big_to_fingerprint_finds_each_change(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory listed in more batches than are held for its fingerprint is compared
    file by file: a deleted and a changed file in it are still announced, nothing else."""
    import multiwatch.watcher.reconcile as reconcile_module
    import multiwatch.watcher.scan as scan_module

    monkeypatch.setattr(scan_module, "BATCH_ENTRIES", 3)
    monkeypatch.setattr(reconcile_module, "FINGERPRINT_MAX_FILES", 5)
    pipeline, outbox, root = make_pipeline(tmp_path)
    known_files(pipeline, outbox, root, {f"big/f{n:02d}.bin": b"%02d" % n for n in range(20)})
    restarted, outbox = _stopped_cleanly_then_restarted(tmp_path, pipeline)
    (root / "big" / "f07.bin").unlink()
    (root / "big" / "f13.bin").write_bytes(b"changed")
    restarted.request_scan()
    settle_all(restarted)
    assert summary(drain(outbox)) == [("file_deleted", "big/f07.bin"),
                                      ("file_modified", "big/f13.bin")]


def test_closing_does_not_wait_long_for_a_state_database_locked_by_another_writer(
        tmp_path: Path) -> None:
    """A stop while another process holds the state database's write lock is not held up
    for sqlite's 30 s busy timeout: the fingerprints (a speed-up only) are skipped."""
    pipeline, _outbox, root = make_pipeline(tmp_path)
    (root / "a").mkdir()
    (root / "a" / "f.txt").write_bytes(b"x")
    pipeline.request_scan()
    settle_all(pipeline)
    pipeline._buffer.commit()
    (root / "a" / "g.txt").write_bytes(b"y")  # a change, so close() has fingerprints to save
    pipeline.request_scan("a")
    settle_all(pipeline)
    other = sqlite3.connect(str(tmp_path / "state" / "state.db"), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock for the whole close()
    try:
        began = time.monotonic()
        pipeline.close()
        took = time.monotonic() - began
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert took < 10, f"close() waited {took:.1f}s for the lock"


def test_repeated_lost_events_rescan_each_time_but_log_once_a_minute(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Overflows that repeat (refused watches report one every few seconds) each rescan and
    find a file written meanwhile, but say so in one warning, not one per overflow."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    caplog.set_level("WARNING", logger="multiwatch.watcher.pipeline")
    for name in ("a.txt", "b.txt", "c.txt"):
        (root / name).write_bytes(name.encode())  # written with nobody watching
        pipeline.notifications.put(RawEvent(EventKind.OVERFLOW, True, ""))
        settle_all(pipeline)
    pipeline._buffer.commit()
    assert sorted(b["file_info"]["relative_path"] for b in drain(outbox)) == [
        "a.txt", "b.txt", "c.txt"]
    said = [r.getMessage() for r in caplog.records]
    assert said.count("filesystem events were lost; rescanning") == 1
