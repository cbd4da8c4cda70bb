"""A scan's small new files are hashed as the version the scan saw (the pipeline as the
watcher runs it, with a hash pool), and announced files' hashes are read back from the
state database once committed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from multiwatch.config import InstanceConfig
from multiwatch.watcher import tracked_files
from multiwatch.watcher.hash_pool import HashPool
from multiwatch.watcher.outbox import OutboxGauge
from multiwatch.watcher.pipeline import Pipeline
from multiwatch.watcher.raw_event import EventKind, RawEvent
from multiwatch.watcher.state import DurableOutbox, StateStore
from tests.watcher.test_pipeline import digests, drain, hashes_of, settle_all, summary


def make_pooled(tmp_path: Path) -> tuple[Pipeline, DurableOutbox, Path]:
    root = tmp_path / "w"
    root.mkdir(exist_ok=True)
    db_path = str(tmp_path / "state" / "state.db")
    gauge = OutboxGauge(events=0, size=0, max_events=10**6, max_bytes=10**9)
    pipeline = Pipeline(InstanceConfig(id="t", directory=str(root), settle_seconds=0.05),
                        StateStore(db_path), gauge, hash_pool=HashPool(None, 2))
    return pipeline, DurableOutbox(db_path), root


def test_files_a_scan_finds_are_announced_with_their_hashes(tmp_path: Path) -> None:
    """A first start announces each file present, once, with the hashes of its content."""
    pipeline, outbox, root = make_pooled(tmp_path)
    files = {f"d{i % 3}/f{i}.bin": os.urandom(100 + i) for i in range(30)}
    for relative, data in files.items():
        (root / relative).parent.mkdir(exist_ok=True)
        (root / relative).write_bytes(data)
    pipeline.request_scan()
    settle_all(pipeline)
    bodies = drain(outbox)
    assert sorted(b["file_info"]["relative_path"] for b in bodies) == sorted(files)
    for body in bodies:
        assert body["event_type"] == "file_discovered"
        assert hashes_of(body) == digests(files[body["file_info"]["relative_path"]])


def test_a_file_rewritten_after_the_scan_saw_it_is_announced_with_its_new_content(
        tmp_path: Path) -> None:
    """A file changed between the scan and its hash, with no event (mmap, NFS), is announced
    once, with the content it has at the end, never with the scan's version."""
    pipeline, outbox, root = make_pooled(tmp_path)
    (root / "a.bin").write_bytes(b"as the scan saw it")
    pipeline.request_scan()
    pipeline.step(0.0)  # the walk: the file waits for its quiet period as the scan saw it
    (root / "a.bin").write_bytes(b"rewritten after the scan, and longer")
    settle_all(pipeline)
    [body] = drain(outbox)
    assert body["event_type"] == "file_discovered"
    assert hashes_of(body) == digests(b"rewritten after the scan, and longer")


def test_a_file_gone_after_the_scan_saw_it_is_never_announced(tmp_path: Path) -> None:
    """A file the scan saw but deleted before its quiet period ended announces nothing."""
    pipeline, outbox, root = make_pooled(tmp_path)
    (root / "a.bin").write_bytes(b"short-lived")
    pipeline.request_scan()
    pipeline.step(0.0)
    (root / "a.bin").unlink()
    settle_all(pipeline)
    assert drain(outbox) == []


@pytest.mark.parametrize("keep", [tracked_files.KEEP_HASHES, 1])
def test_later_events_of_files_announced_earlier_carry_the_recorded_hashes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep: int) -> None:
    """Kept in memory or read back from the state database once committed, an announced
    file's hashes are those its deletion, rename and modification carry."""
    monkeypatch.setattr(tracked_files, "KEEP_HASHES", keep)
    pipeline, outbox, root = make_pooled(tmp_path)
    files = {"gone.bin": b"to be deleted", "old.bin": b"to be renamed", "mod.bin": b"v1"}
    for relative, data in files.items():
        (root / relative).write_bytes(data)
    pipeline.request_scan()
    settle_all(pipeline)
    assert len(drain(outbox)) == 3
    for relative in files:  # later commits push the three out of memory (keep 1)
        (root / "other").mkdir(exist_ok=True)
        (root / "other" / relative).write_bytes(b"x")
        pipeline.notifications.put(RawEvent(EventKind.CLOSED, False, f"other/{relative}"))
        settle_all(pipeline)
    assert len(drain(outbox)) == 3
    (root / "gone.bin").unlink()
    os.rename(root / "old.bin", root / "new.bin")
    (root / "mod.bin").write_bytes(b"version two")
    for event in (RawEvent(EventKind.DELETED, False, "gone.bin"),
                  RawEvent(EventKind.MOVED, False, "old.bin", "new.bin"),
                  RawEvent(EventKind.CLOSED, False, "mod.bin")):
        pipeline.notifications.put(event)
    settle_all(pipeline)
    bodies = drain(outbox)
    assert summary(bodies) == [("file_deleted", "gone.bin"), ("file_modified", "mod.bin"),
                               ("file_moved", "new.bin")]
    by_type = {b["event_type"]: b for b in bodies}
    assert hashes_of(by_type["file_deleted"]) == digests(b"to be deleted")
    assert hashes_of(by_type["file_moved"]) == digests(b"to be renamed")
    assert hashes_of(by_type["file_modified"]) == digests(b"version two")
