"""Big files: hashed by the pool from their close on, never holding small files back."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from multiwatch.config import InstanceConfig
from multiwatch.watcher import hash_pool as hash_pool_module
from multiwatch.watcher.confined import ConfinedRoot
from multiwatch.watcher.hash_pool import HashPool
from multiwatch.watcher.hash_slots import HashSlot, HashSlots
from multiwatch.watcher.hashing import Hashed, hash_file
from multiwatch.watcher.outbox import OutboxGauge
from multiwatch.watcher.pipeline import Pipeline
from multiwatch.watcher.raw_event import EventKind, RawEvent
from multiwatch.watcher.state import DurableOutbox, StateStore
from tests.watcher.test_pipeline import digests, drain, hashes_of, run_until, settle_all

BIG = 256 * 1024  # the pool's threshold in these tests (the real one is 4 MiB)


class Harness:
    """A pipeline with a hash pool over `slots` slots, and a record of every pool hash."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, slots: int = 2,
                 settle: float = 0.05, before_hash: Callable[[str], None] | None = None) -> None:
        self.root = tmp_path / "w"
        self.root.mkdir()
        self.slots = HashSlots(str(tmp_path / "state" / "hash-slots"), slots)
        self.hashed: list[tuple[str, str]] = []  # (name, sha256) of every completed pool hash

        def recording_hash(root: ConfinedRoot, relative: str, *args: Any,
                           **kwargs: Any) -> Hashed:
            path = os.path.join(root.path, relative)
            if before_hash is not None:
                before_hash(path)
            result = hash_file(root, relative, *args, **kwargs)
            self.hashed.append((os.path.basename(path), result.sha256))
            return result

        monkeypatch.setattr(hash_pool_module, "hash_file", recording_hash)
        db_path = str(tmp_path / "state" / "state.db")
        store = StateStore(db_path)
        gauge = OutboxGauge(events=0, size=0, max_events=10**6, max_bytes=10**9)
        self.pool = HashPool(self.slots, workers=2, min_bytes=BIG)
        self.pipeline = Pipeline(
            InstanceConfig(id="t", directory=str(self.root), settle_seconds=settle),
            store, gauge, hash_pool=self.pool)
        self.outbox = DurableOutbox(db_path)
        self.announced: list[dict[str, Any]] = []

    def write(self, name: str, data: bytes, *, append: bool = False) -> None:
        """Write (or append to) a file and deliver the notifications a writer causes."""
        with open(self.root / name, "ab" if append else "wb") as f:
            f.write(data)
        if not append:
            self.notify(EventKind.CREATED, name)
        self.notify(EventKind.MODIFIED, name)
        self.notify(EventKind.CLOSED, name)

    def notify(self, kind: EventKind, name: str) -> None:
        self.pipeline.notifications.put(RawEvent(kind, False, name))

    def take(self) -> list[dict[str, Any]]:
        self.announced += drain(self.outbox)
        return self.announced

    def names(self) -> list[str]:
        return [b["file_info"]["name"] for b in self.take()]

    def hold_every_slot(self) -> list[HashSlot]:
        held = [self.slots.try_acquire() for _ in range(self.slots.count)]
        assert all(held)
        return [slot for slot in held if slot is not None]


@pytest.fixture
def cleanup() -> Iterator[list[Harness]]:
    harnesses: list[Harness] = []
    yield harnesses
    for harness in harnesses:
        harness.pipeline.close()


def test_big_file_is_announced_with_correct_hashes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cleanup: list[Harness]) -> None:
    """A big file is hashed by the pool and announced once with its hashes."""
    h = Harness(tmp_path, monkeypatch)
    cleanup.append(h)
    data = os.urandom(3 * BIG)
    h.write("big.bin", data)
    settle_all(h.pipeline)
    [body] = h.take()
    assert body["event_type"] == "file_discovered"
    assert hashes_of(body) == digests(data)
    assert body["file_info"]["size_bytes"] == str(len(data))
    assert h.pipeline.files_hashed == 1 and h.pipeline.bytes_hashed == len(data)


def test_hash_started_at_close_is_discarded_when_the_file_is_appended_to(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cleanup: list[Harness]) -> None:
    """Hashed at close, then appended to before its settle period ended: announced once, with
    the final content's hashes (the early hash is thrown away)."""
    h = Harness(tmp_path, monkeypatch, settle=2.0)
    cleanup.append(h)
    first, more = os.urandom(2 * BIG), os.urandom(BIG)
    h.write("big.bin", first)
    # The early hash of the first version completes while the file still settles.
    run_until(h.pipeline, lambda: len(h.hashed) == 1)
    assert h.take() == []
    h.write("big.bin", more, append=True)
    settle_all(h.pipeline)
    [body] = h.take()
    assert hashes_of(body) == digests(first + more)
    assert body["file_info"]["size_bytes"] == str(len(first + more))
    assert [sha for _, sha in h.hashed] == [digests(first)[0], digests(first + more)[0]]


def test_hash_waiting_for_a_slot_is_dropped_when_the_file_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cleanup: list[Harness]) -> None:
    """A file appended to while its early hash waits for a slot is read once, in its final
    state, and announced once."""
    h = Harness(tmp_path, monkeypatch, slots=1)
    cleanup.append(h)
    [held] = h.hold_every_slot()
    first, more = os.urandom(2 * BIG), os.urandom(BIG)
    h.write("big.bin", first)
    h.pipeline.step(0.0)  # the early hash is queued: it waits for the slot
    h.write("big.bin", more, append=True)
    h.pipeline.step(0.0)
    held.release()
    settle_all(h.pipeline)
    [body] = h.take()
    assert hashes_of(body) == digests(first + more)
    assert [sha for _, sha in h.hashed] == [digests(first + more)[0]]


def test_two_big_files_are_hashed_at_the_same_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cleanup: list[Harness]) -> None:
    """Two big files closed together are read concurrently, each on its own worker."""
    both_reading = threading.Barrier(2)
    overlapped: list[str] = []

    def meet(path: str) -> None:  # each hash waits here until the other one has begun
        both_reading.wait(timeout=10)
        overlapped.append(os.path.basename(path))

    h = Harness(tmp_path, monkeypatch, before_hash=meet)
    cleanup.append(h)
    one, two = os.urandom(2 * BIG), os.urandom(3 * BIG)
    h.write("one.bin", one)
    h.write("two.bin", two)
    run_until(h.pipeline, lambda: len(h.take()) == 2, timeout=20)
    assert sorted(overlapped) == ["one.bin", "two.bin"]
    by_name = {b["file_info"]["name"]: hashes_of(b) for b in h.take()}
    assert by_name == {"one.bin": digests(one), "two.bin": digests(two)}


def test_small_file_is_not_held_back_by_a_big_file_being_hashed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cleanup: list[Harness]) -> None:
    """While a big file waits for (or takes) its hash, a small file closed after it is
    announced on its own schedule; the big one follows once hashed."""
    h = Harness(tmp_path, monkeypatch, slots=1)
    cleanup.append(h)
    [held] = h.hold_every_slot()  # the big file's hash cannot start
    big, small = os.urandom(4 * BIG), b"small\n"
    h.write("big.bin", big)
    h.write("small.txt", small)
    started = time.monotonic()
    run_until(h.pipeline, lambda: h.names() == ["small.txt"])
    assert time.monotonic() - started < 2.0
    assert h.pipeline.files_waiting == 1  # the big file, settled, waiting for its hash
    assert h.pipeline.busy
    held.release()
    settle_all(h.pipeline)
    assert h.names() == ["small.txt", "big.bin"]
    assert hashes_of(h.take()[1]) == digests(big)


def test_big_file_found_by_the_startup_scan_goes_through_the_pool(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cleanup: list[Harness]) -> None:
    """A big file already on disk at start is hashed by the pool and announced."""
    h = Harness(tmp_path, monkeypatch)
    cleanup.append(h)
    data = os.urandom(2 * BIG)
    (h.root / "old.bin").write_bytes(data)
    h.pipeline.request_scan()
    settle_all(h.pipeline)
    [body] = h.take()
    assert hashes_of(body) == digests(data)
    assert [name for name, _ in h.hashed] == ["old.bin"]


def test_stopping_abandons_waiting_hashes_without_announcing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopping while a big file waits for a slot returns promptly and records nothing, so
    the next start's scan announces the file."""
    h = Harness(tmp_path, monkeypatch, slots=1)
    [held] = h.hold_every_slot()
    h.write("big.bin", os.urandom(2 * BIG))
    run_until(h.pipeline, lambda: h.pipeline.files_waiting == 1 and len(h.pipeline.settle) == 0)
    started = time.monotonic()
    h.pipeline.close()
    assert time.monotonic() - started < 2.0
    held.release()
    assert h.take() == [] and h.hashed == []
    assert "big.bin" not in h.pipeline.tracked


def test_big_file_renamed_into_place_is_hashed_while_it_settles(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cleanup: list[Harness]) -> None:
    """A big file written under an excluded name and renamed into place is hashed from the
    rename on, before its settle period ends, and announced once under its final name."""
    h = Harness(tmp_path, monkeypatch, settle=2.0)
    cleanup.append(h)
    data = os.urandom(2 * BIG)
    (h.root / "movie.mkv.part").write_bytes(data)
    for kind in (EventKind.CREATED, EventKind.MODIFIED, EventKind.CLOSED):
        h.notify(kind, "movie.mkv.part")
    os.rename(h.root / "movie.mkv.part", h.root / "movie.mkv")
    h.pipeline.notifications.put(RawEvent(EventKind.MOVED, False, "movie.mkv.part", "movie.mkv"))
    run_until(h.pipeline, lambda: len(h.hashed) == 1)
    assert h.take() == []  # hashed, still settling
    settle_all(h.pipeline)
    [body] = h.take()
    assert body["file_info"]["name"] == "movie.mkv"
    assert hashes_of(body) == digests(data)
    assert [name for name, _ in h.hashed] == ["movie.mkv"]


def test_small_file_changed_without_events_after_its_close_settles_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cleanup: list[Harness]) -> None:
    """The stat taken at a small file's close stands in for a fresh one only while the file
    keeps that version: changed since without a notification (an mmap writer), it gets
    another quiet period and is announced once, with the final content."""
    h = Harness(tmp_path, monkeypatch, settle=0.2)
    cleanup.append(h)
    h.write("small.txt", b"as closed")
    h.pipeline.step(0.0)  # the close is taken in: its stat is kept for the settle
    (h.root / "small.txt").write_bytes(b"changed after the close, with no event")
    settled_once = False
    real = hash_file

    def first_hash(root: ConfinedRoot, *args: Any, **kwargs: Any) -> Hashed:
        nonlocal settled_once
        settled_once = True
        return real(root, *args, **kwargs)

    monkeypatch.setattr("multiwatch.watcher.pipeline.hash_file", first_hash)
    run_until(h.pipeline, lambda: settled_once)
    assert h.take() == [], "announced at the end of the first quiet period despite the change"

    settle_all(h.pipeline)
    [body] = h.take()
    assert hashes_of(body) == digests(b"changed after the close, with no event")
