"""Files that cannot be read when they settle, announced once they can be (driven step by step).

Root reads whatever the permission bits say, so a read failure is injected at the hashing
boundary here; tests/hostile/test_unreadable_later.py does the same with real permissions.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path
from typing import Any

import multiwatch.watcher.pipeline as pipeline_module
import multiwatch.watcher.retry as retry_module
from multiwatch.watcher.confined import ConfinedRoot
from multiwatch.watcher.hashing import Hashed
from multiwatch.watcher.pipeline import Pipeline
from multiwatch.watcher.raw_event import EventKind, RawEvent
from multiwatch.watcher.retry import RetrySchedule
from multiwatch.watcher.state import DurableOutbox
from tests.watcher.test_pipeline import (
    drain,
    known_files,
    make_pipeline,
    run_until,
    settle_all,
    summary,
)


class _FailingRead:
    """hash_file that raises `error` while `failures` > 0 (counting down), then reads."""

    def __init__(self, error: OSError, failures: int) -> None:
        self.error, self.failures, self.calls = error, failures, 0
        self._real = pipeline_module.hash_file

    def __call__(self, root: ConfinedRoot, *args: Any, **kwargs: Any) -> Hashed:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise self.error
        return self._real(root, *args, **kwargs)


def _first_announced(pipeline: Pipeline, outbox: DurableOutbox,
                     timeout: float = 5.0) -> list[dict[str, Any]]:
    """Step until something is announced (AssertionError after `timeout`); what it was."""
    bodies: list[dict[str, Any]] = []

    def some() -> bool:
        bodies.extend(drain(outbox))
        return bool(bodies)

    run_until(pipeline, some, timeout)
    return bodies


def _created_and_failing(tmp_path: Path, monkeypatch: Any, *, first_retry: float,
                         error: OSError, failures: int, name: str, content: bytes,
                         ) -> tuple[Pipeline, DurableOutbox, _FailingRead]:
    """A pipeline whose reads fail `failures` times with `error` (retries from
    `first_retry` s), and a file `name` just created and notified."""
    monkeypatch.setattr(retry_module, "RETRY_FIRST_SECONDS", first_retry)
    failing = _FailingRead(error, failures)
    monkeypatch.setattr(pipeline_module, "hash_file", failing)
    pipeline, outbox, root = make_pipeline(tmp_path)
    (root / name).write_bytes(content)
    pipeline.notifications.put(RawEvent(EventKind.CREATED, False, name))
    return pipeline, outbox, failing


def _warnings(caplog: Any) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_transient_io_error_is_retried_until_the_file_is_announced(
        tmp_path: Path, monkeypatch, caplog) -> None:
    """A file whose read fails twice with EIO (a network mount) is announced once it reads,
    with no event from the filesystem, and the failure is logged once, not per retry."""
    pipeline, outbox, failing = _created_and_failing(
        tmp_path, monkeypatch, first_retry=0.05, error=OSError(errno.EIO, "Input/output error"),
        failures=2, name="song.mp3", content=b"on a flaky share")
    bodies = _first_announced(pipeline, outbox)
    assert summary(bodies) == [("file_discovered", "song.mp3")]
    assert failing.calls == 3
    assert [w for w in _warnings(caplog) if "cannot read" in w] == [
        "cannot read file: Input/output error"]


def test_permanent_read_failure_is_logged_once_and_backs_off(
        tmp_path: Path, monkeypatch, caplog) -> None:
    """A file that never reads is tried again less and less often, and logged only once."""
    pipeline, outbox, failing = _created_and_failing(
        tmp_path, monkeypatch, first_retry=0.02, error=OSError(errno.ESTALE, "Stale file handle"),
        failures=10**6, name="stale.mp3", content=b"x")
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        pipeline.step(0.01)
    # 0.02 doubling: about 6 attempts in 1.5 s; a fixed 20 ms interval would be ~70.
    assert 3 <= failing.calls <= 8
    assert len([w for w in _warnings(caplog) if "cannot read" in w]) == 1
    assert drain(outbox) == []


def test_permission_change_makes_an_unreadable_file_announced_at_once(
        tmp_path: Path, monkeypatch) -> None:
    """An "attrib" notification (chmod) on a file that could not be read has it read again
    right away, long before its next retry."""
    pipeline, outbox, failing = _created_and_failing(
        tmp_path, monkeypatch, first_retry=3600.0,
        error=PermissionError(errno.EACCES, "Permission denied"), failures=1,
        name="locked.mp3", content=b"0200 at first")
    run_until(pipeline, lambda: failing.calls == 1)
    pipeline.notifications.put(RawEvent(EventKind.ATTRIB, False, "locked.mp3"))
    bodies = _first_announced(pipeline, outbox, timeout=3)
    assert summary(bodies) == [("file_discovered", "locked.mp3")]


def test_attrib_on_a_readable_known_file_announces_nothing(tmp_path: Path) -> None:
    """chmod on a file already announced is not a change of content."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    (root / "a.mp3").write_bytes(b"a")
    pipeline.notifications.put(RawEvent(EventKind.CREATED, False, "a.mp3"))
    run_until(pipeline, lambda: bool(drain(outbox)))
    pipeline.notifications.put(RawEvent(EventKind.ATTRIB, False, "a.mp3"))
    for _ in range(20):
        pipeline.step(0.01)
    assert drain(outbox) == []


def test_retry_schedule_doubles_to_its_cap_and_forgets() -> None:
    """Backoff: first, doubled each failure, capped; a forgotten key is never due."""
    schedule = RetrySchedule(first=1.0, cap=4.0)
    assert schedule.failed("a", 0.0) is True
    assert schedule.pop_due(0.5) == [] and schedule.pop_due(1.0) == ["a"]
    assert schedule.failed("a", 1.0) is False  # due at 3
    assert schedule.next_due() == 3.0
    schedule.failed("a", 3.0)  # 4: doubled to the cap
    schedule.failed("a", 7.0)  # 4 again
    assert schedule.next_due() == 11.0
    schedule.forget("a")
    assert schedule.next_due() is None and "a" not in schedule


def test_stat_failing_for_a_while_is_not_a_deletion(tmp_path: Path, monkeypatch) -> None:
    """A known file whose lstat fails with ESTALE twice (a network mount recovering) is not
    announced as deleted: it is tried again, and its new content announced as modified."""
    monkeypatch.setattr(retry_module, "RETRY_FIRST_SECONDS", 0.05)
    pipeline, outbox, root = make_pipeline(tmp_path)
    known_files(pipeline, outbox, root, {"a.mp3": b"first"})
    (root / "a.mp3").write_bytes(b"second version")
    real_stat, failures = ConfinedRoot.stat, [2]

    def flaky_stat(self: ConfinedRoot, relative: str) -> os.stat_result:
        if relative == "a.mp3" and failures[0] > 0:
            failures[0] -= 1
            raise OSError(errno.ESTALE, "Stale file handle")
        return real_stat(self, relative)

    monkeypatch.setattr(ConfinedRoot, "stat", flaky_stat)  # (the lstat below the root)
    pipeline.notifications.put(RawEvent(EventKind.MODIFIED, False, "a.mp3"))
    bodies = _first_announced(pipeline, outbox)
    assert summary(bodies) == [("file_modified", "a.mp3")]
    assert failures == [0]


def test_attrib_on_a_file_changed_without_events_announces_the_change(tmp_path: Path) -> None:
    """A file rewritten by a writer that sends no event (mmap) and then touched: the touch's
    "attrib" gets the new content announced as modified."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    known_files(pipeline, outbox, root, {"m.bin": b"before"})
    (root / "m.bin").write_bytes(b"after, with no event")
    pipeline.notifications.put(RawEvent(EventKind.ATTRIB, False, "m.bin"))
    assert summary(_first_announced(pipeline, outbox)) == [("file_modified", "m.bin")]


def _stat_failing(monkeypatch: Any, paths: set[str], failures: int) -> list[int]:
    """ConfinedRoot.stat (the lstat below the root) fails with ESTALE for `paths`, the
    first `failures` times in all; the count left, in a list."""
    real_stat, left = ConfinedRoot.stat, [failures]

    def flaky_stat(self: ConfinedRoot, relative: str) -> os.stat_result:
        if relative in paths and left[0] > 0:
            left[0] -= 1
            raise OSError(errno.ESTALE, "Stale file handle")
        return real_stat(self, relative)

    monkeypatch.setattr(ConfinedRoot, "stat", flaky_stat)
    return left


def test_deletion_notified_while_the_lookup_fails_is_not_announced(
        tmp_path: Path, monkeypatch, caplog) -> None:
    """A polling observer reports a file its walk could not stat (ESTALE on a network
    mount) as deleted: the file is still there, so nothing is announced, and once it can
    be looked up again its new content is announced as modified."""
    monkeypatch.setattr(retry_module, "RETRY_FIRST_SECONDS", 0.05)
    pipeline, outbox, root = make_pipeline(tmp_path)
    known_files(pipeline, outbox, root, {"a.mp3": b"first"})
    (root / "a.mp3").write_bytes(b"second version")
    left = _stat_failing(monkeypatch, {"a.mp3"}, failures=2)
    pipeline.notifications.put(RawEvent(EventKind.DELETED, False, "a.mp3"))
    assert summary(_first_announced(pipeline, outbox)) == [("file_modified", "a.mp3")]
    assert left == [0]
    assert [w for w in _warnings(caplog) if "cannot read" in w] == [
        "cannot read file: Stale file handle"]


def test_directory_deletion_notified_while_lookups_fail_announces_only_what_is_gone(
        tmp_path: Path, monkeypatch) -> None:
    """A directory a polling walk could not list or stat is reported deleted with its
    files: only the file really gone is announced deleted; the others stay tracked."""
    monkeypatch.setattr(retry_module, "RETRY_FIRST_SECONDS", 0.05)
    pipeline, outbox, root = make_pipeline(tmp_path)
    known_files(pipeline, outbox, root, {"album/a.mp3": b"a", "album/b.mp3": b"b",
                                         "album/gone.mp3": b"g"})
    (root / "album" / "gone.mp3").unlink()
    _stat_failing(monkeypatch, {"album/a.mp3", "album/b.mp3"}, failures=2)
    pipeline.notifications.put(RawEvent(EventKind.DELETED, True, "album"))
    assert summary(_first_announced(pipeline, outbox)) == [("file_deleted", "album/gone.mp3")]
    settle_all(pipeline)
    run_until(pipeline, lambda: not pipeline._unreadable.files)
    assert drain(outbox) == []
    assert set(pipeline.tracked.paths_under("album")) == {"album/a.mp3", "album/b.mp3"}
