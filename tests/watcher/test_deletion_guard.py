"""The mass-deletion guard in the pipeline: what a scan may announce, what it holds, and how
holds end (files back, the operator's release or recheck), on a real state database."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from multiwatch.config.deletions import ScanDeletionBound
from multiwatch.watcher.held_deletions import (
    RECHECK,
    RELEASE,
    deletion_request,
    held_count,
    held_paths,
    request_deletions,
)
from multiwatch.watcher.pipeline import Pipeline
from multiwatch.watcher.raw_event import EventKind, RawEvent
from multiwatch.watcher.state import DurableOutbox, connect
from tests.watcher.test_pipeline import drain, known_files, make_pipeline, run_until, settle_all

FILES = {f"d{i // 10}/f{i}.txt": b"x%d" % i for i in range(40)}


def _restart(tmp_path: Path, old: Pipeline, **options: Any) -> tuple[Pipeline, DurableOutbox]:
    """A new pipeline on the same state database, like a watcher after a restart."""
    old.close()
    old.store.close()
    pipeline, outbox, _ = make_pipeline(tmp_path, **options)
    return pipeline, outbox


def _started(tmp_path: Path, **options: Any) -> tuple[Pipeline, DurableOutbox, Path]:
    """A pipeline that announced FILES, then stopped (its tree may be changed meanwhile)."""
    pipeline, outbox, root = make_pipeline(tmp_path, **options)
    known_files(pipeline, outbox, root, FILES)
    return pipeline, outbox, root


def _scan(pipeline: Pipeline, outbox: DurableOutbox) -> list[dict[str, Any]]:
    pipeline.request_scan()
    settle_all(pipeline)
    return drain(outbox)


def _db(tmp_path: Path) -> sqlite3.Connection:
    return connect(str(tmp_path / "state" / "state.db"))


def test_a_tree_gone_at_start_is_held_not_announced(tmp_path: Path) -> None:
    """Every tracked file gone at the next start (an unmounted share): nothing announced,
    the count held, the files still tracked, and the holds survive another restart."""
    pipeline, _, root = _started(tmp_path)
    for entry in root.iterdir():
        shutil.rmtree(entry)
    pipeline, outbox = _restart(tmp_path, pipeline)
    assert _scan(pipeline, outbox) == []
    assert pipeline.deletions.held == len(FILES) == len(pipeline.tracked)
    pipeline, outbox = _restart(tmp_path, pipeline)
    assert pipeline.deletions.held == len(FILES)
    assert _scan(pipeline, outbox) == []
    assert held_paths(_db(tmp_path)) == sorted(FILES)


def test_a_few_deletions_found_at_start_are_announced(tmp_path: Path) -> None:
    """Fewer than the floor (9 of 40), or few of many: announced as usual, nothing held."""
    pipeline, _, root = _started(tmp_path)
    gone = sorted(FILES)[:9]
    for relative in gone:
        (root / relative).unlink()
    pipeline, outbox = _restart(tmp_path, pipeline)
    announced = _scan(pipeline, outbox)
    assert sorted(b["file_info"]["relative_path"] for b in announced) == gone
    assert {b["event_type"] for b in announced} == {"file_deleted"}
    assert pipeline.deletions.held == 0


def test_one_file_of_one_gone_is_announced(tmp_path: Path) -> None:
    """A single tracked file deleted while stopped is 100 % of the tree, but under the floor."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    known_files(pipeline, outbox, root, {"only.txt": b"1"})
    (root / "only.txt").unlink()
    pipeline, outbox = _restart(tmp_path, pipeline)
    assert [b["event_type"] for b in _scan(pipeline, outbox)] == ["file_deleted"]


def test_a_count_bound_holds_above_it(tmp_path: Path) -> None:
    """max_scan_deletions: 3 (a count only): 4 deletions found by a scan are held."""
    bound = ScanDeletionBound(count=3, percent=None)
    pipeline, _, root = _started(tmp_path, max_scan_deletions=bound)
    for relative in sorted(FILES)[:4]:
        (root / relative).unlink()
    pipeline, outbox = _restart(tmp_path, pipeline, max_scan_deletions=bound)
    assert _scan(pipeline, outbox) == []
    assert pipeline.deletions.held == 4


def test_off_announces_a_whole_tree_gone(tmp_path: Path) -> None:
    """max_scan_deletions: off is the old behaviour: every deletion a scan finds is announced."""
    pipeline, _, root = _started(tmp_path, max_scan_deletions=None)
    for entry in root.iterdir():
        shutil.rmtree(entry)
    pipeline, outbox = _restart(tmp_path, pipeline, max_scan_deletions=None)
    assert len(_scan(pipeline, outbox)) == len(FILES)


def test_files_back_are_no_longer_held_and_announce_nothing(tmp_path: Path) -> None:
    """The share mounted again (same files, same versions): a scan un-holds them, announcing
    nothing; one back with other content is announced as modified."""
    pipeline, _, root = _started(tmp_path)
    away = tmp_path / "away"
    root.rename(away)
    root.mkdir()
    pipeline, outbox = _restart(tmp_path, pipeline)
    assert _scan(pipeline, outbox) == []
    assert pipeline.deletions.held == len(FILES)
    root.rmdir()
    away.rename(root)
    (root / "d0" / "f0.txt").write_bytes(b"changed while away")
    announced = _scan(pipeline, outbox)
    assert [(b["event_type"], b["file_info"]["relative_path"]) for b in announced] == [
        ("file_modified", "d0/f0.txt")]
    assert pipeline.deletions.held == 0 == held_count(_db(tmp_path))


def test_deletions_while_held_join_them(tmp_path: Path) -> None:
    """With deletions held, a later scan's few deletions are held too (one decision)."""
    pipeline, _, root = _started(tmp_path)
    moved = sorted(FILES)[:21]
    for relative in moved:
        (root / relative).unlink()
    pipeline, outbox = _restart(tmp_path, pipeline)
    assert _scan(pipeline, outbox) == []
    (root / "d3" / "f39.txt").unlink()
    assert _scan(pipeline, outbox) == []
    assert pipeline.deletions.held == 22


def test_release_announces_each_held_file_still_gone_once(tmp_path: Path) -> None:
    """The operator's release (a request row): every held file still gone announced once,
    one back meanwhile not; the request is marked served."""
    pipeline, _, root = _started(tmp_path)
    away = tmp_path / "away"
    root.rename(away)
    root.mkdir()
    pipeline, outbox = _restart(tmp_path, pipeline)
    assert _scan(pipeline, outbox) == []
    (root / "d0").mkdir()
    os.rename(away / "d0" / "f0.txt", root / "d0" / "f0.txt")  # back, unseen by any scan
    db = _db(tmp_path)
    request_deletions(db, RELEASE)
    run_until(pipeline, lambda: deletion_request(db) == 0)
    announced = drain(outbox)
    assert sorted(b["file_info"]["relative_path"] for b in announced) == sorted(FILES)[1:]
    assert {b["event_type"] for b in announced} == {"file_deleted"}
    assert held_count(db) == 0 == pipeline.deletions.held
    assert "d0/f0.txt" in pipeline.tracked and len(pipeline.tracked) == 1
    assert _scan(pipeline, outbox) == []


def test_an_idle_watcher_serves_a_release_without_waiting_for_its_idle_wakeup(
        tmp_path: Path) -> None:
    """While deletions are held, an idle pipeline turns for the guard's poll (the operator
    waits on the command) instead of sleeping the caller's whole budget; with nothing held
    the guard never wakes it."""
    pipeline, _, root = _started(tmp_path)
    for entry in root.iterdir():
        shutil.rmtree(entry)
    pipeline, outbox = _restart(tmp_path, pipeline)
    assert _scan(pipeline, outbox) == []
    db = _db(tmp_path)
    request_deletions(db, RELEASE)
    turns, started = 0, time.monotonic()
    while deletion_request(db) != 0 and turns < 6:
        pipeline.step(5.0)  # an idle watcher's budget: without the guard's due, 5 s a turn
        turns += 1
    assert deletion_request(db) == 0, f"release not served after {turns} idle turns"
    # Served before one idle budget went by (it took 3 of them, 15 s, before).
    assert time.monotonic() - started < 5.0
    assert len(drain(outbox)) == len(FILES)
    assert pipeline.deletions.next_due(0.0) is None  # nothing held: no wakeups of its own


def test_with_nothing_held_the_guard_reads_nothing_after_its_first_look(
        tmp_path: Path) -> None:
    """An idle watcher with no deletions held: the guard's turns cost no query (the command
    asks only while some are held); its first look still finds a request left before."""
    pipeline, _, _root = _started(tmp_path)
    statements: list[str] = []
    pipeline.store.connection.set_trace_callback(statements.append)
    now = time.monotonic()
    for turn in range(5):
        pipeline.deletions.step(now + 2.0 * turn)
    assert statements == []
    pipeline, _ = _restart(tmp_path, pipeline)
    pipeline.store.connection.set_trace_callback(statements.append)
    pipeline.deletions.step(time.monotonic())
    assert statements, "the first look reads the held count and any request"


def test_recheck_rescans_and_keeps_what_is_still_gone(tmp_path: Path) -> None:
    """A recheck request rescans: files back are un-held, those still gone stay held."""
    pipeline, _, root = _started(tmp_path)
    away = tmp_path / "away"
    root.rename(away)
    root.mkdir()
    pipeline, outbox = _restart(tmp_path, pipeline)
    assert _scan(pipeline, outbox) == []
    (root / "d1").mkdir()
    for name in os.listdir(away / "d1"):
        os.rename(away / "d1" / name, root / "d1" / name)
    db = _db(tmp_path)
    request_deletions(db, RECHECK)
    run_until(pipeline, lambda: deletion_request(db) == 0)
    assert drain(outbox) == []
    assert held_count(db) == len(FILES) - 10
    assert not any(p.startswith("d1/") for p in held_paths(db))


def test_deletions_the_kernel_reports_are_never_held(tmp_path: Path) -> None:
    """Every file deleted while running, reported one by one: all announced, nothing held."""
    pipeline, outbox, root = _started(tmp_path)
    for relative in FILES:
        (root / relative).unlink()
        pipeline.notifications.put(RawEvent(EventKind.DELETED, False, relative))
    settle_all(pipeline)
    assert len(drain(outbox)) == len(FILES)
    assert pipeline.deletions.held == 0


@pytest.mark.parametrize(("deletions", "tracked", "held"), [
    (1, 1, False), (9, 9, False), (10, 10, True), (10, 20, False), (11, 20, True),
    (1000, 100_000, False), (1001, 100_000, True), (1000, 1000, True), (5, 1000, False),
])
def test_the_default_bound(deletions: int, tracked: int, held: bool) -> None:
    """The defaults: more than 1000, or at least 10 and more than half of the tracked files."""
    assert ScanDeletionBound().exceeded(deletions, tracked) is held
