"""Big files: SHA-256 on a helper thread while a core is spare, with the same digests and the
same guarantees (cancellation, change detection, progress) as a one-thread read."""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import threading
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import xxhash

from multiwatch.watcher import hash_split, hashing
from multiwatch.watcher.hash_split import CORES, RING_BUFFERS, page_aligned, read_big, read_buffer
from multiwatch.watcher.hashing import (
    CHUNK_BYTES,
    SPLIT_MIN_BYTES,
    ChangedWhileHashing,
    HashCancelled,
)
from tests.watcher.test_hashing import hash_path

MODES = ["helper", "one-thread", "alternating"]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Force the spare-core decision: always, never, or flipping at every chunk (the caller
    takes SHA-256 back from the helper and hands it over again, over and over)."""
    flips = iter(range(1 << 30))
    decide: dict[str, Callable[[], bool]] = {
        "helper": lambda: True,
        "one-thread": lambda: False,
        "alternating": lambda: next(flips) % 2 == 0,
    }
    monkeypatch.setattr(CORES, "spare", decide[request.param])
    return str(request.param)


def helpers_alive() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "hash-sha256"]


def chunks_read(monkeypatch: pytest.MonkeyPatch, after: int,
                action: Callable[[], None]) -> list[int]:
    """Run `action` once after `after` chunks were fed to XXH128 (on the reading thread);
    returns a one-item list counting the chunks read."""
    real = xxhash.xxh128
    count = [0]

    class Hooked:
        def __init__(self) -> None:
            self._real = real()

        def update(self, data: memoryview) -> None:
            self._real.update(data)
            count[0] += 1
            if count[0] == after:
                action()

        def hexdigest(self) -> str:
            return self._real.hexdigest()

    monkeypatch.setattr(hashing, "xxhash", types.SimpleNamespace(xxh128=Hooked))
    return count


@pytest.mark.parametrize("size", [
    SPLIT_MIN_BYTES - 1, SPLIT_MIN_BYTES, SPLIT_MIN_BYTES + 1,
    (RING_BUFFERS * 3) * CHUNK_BYTES - 1, (RING_BUFFERS * 3) * CHUNK_BYTES + 1,
])
def test_big_file_digests_equal_reference_implementations(
        tmp_path: Path, mode: str, size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Around the split threshold and chunk boundaries, with or without the helper and when
    it comes and goes, sha256 and xxh128 are exactly hashlib's and xxhash's."""
    data = os.urandom(size)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    fed_by: set[str] = set()  # the threads that fed SHA-256

    class RecordingSha256:
        def __init__(self) -> None:
            self._real = hashlib.sha256()

        def update(self, chunk: memoryview) -> None:
            fed_by.add(threading.current_thread().name)
            self._real.update(chunk)

        def hexdigest(self) -> str:
            return self._real.hexdigest()

    monkeypatch.setattr(hashing, "hashlib", types.SimpleNamespace(sha256=RecordingSha256))
    hashed = hash_path(str(path))
    assert (hashed.sha256, hashed.xxh128) == (hashlib.sha256(data).hexdigest(),
                                              xxhash.xxh128(data).hexdigest())
    assert hashed.version.size == size
    helper = "hash-sha256" in fed_by
    caller = threading.current_thread().name in fed_by
    if size >= SPLIT_MIN_BYTES:
        assert (helper, caller) == {"helper": (True, False), "one-thread": (False, True),
                                    "alternating": (True, True)}[mode]
    assert helpers_alive() == []


def test_cancelled_big_hash_stops_reading_and_leaves_no_thread(
        tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A big hash cancelled after two chunks raises HashCancelled at the next one instead of
    reading the rest, and its helper thread is gone."""
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(16 * CHUNK_BYTES))
    cancelled = threading.Event()
    count = chunks_read(monkeypatch, 2, cancelled.set)
    with pytest.raises(HashCancelled):
        hash_path(str(path), cancelled=cancelled)
    assert count[0] == 2
    assert helpers_alive() == []


@pytest.mark.parametrize("how", ["appended", "renamed-over"])
def test_big_file_changed_while_hashed_raises_changed_while_hashing(
        tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """A big file appended to, or replaced by rename, while being read is reported as changed."""
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(8 * CHUNK_BYTES))
    other = tmp_path / "big.bin.part"
    other.write_bytes(os.urandom(8 * CHUNK_BYTES))

    def change() -> None:
        if how == "appended":
            with open(path, "ab") as f:
                f.write(b"more")
        else:
            os.replace(other, path)

    chunks_read(monkeypatch, 2, change)
    with pytest.raises(ChangedWhileHashing):
        hash_path(str(path))
    assert helpers_alive() == []


def test_big_hash_reports_progress(tmp_path: Path, mode: str,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The progress hook (the watcher's heartbeat) is called along the way of a big hash too."""
    monkeypatch.setattr(hashing, "PROGRESS_EVERY_BYTES", CHUNK_BYTES)
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * (6 * CHUNK_BYTES))
    calls: list[int] = []
    hash_path(str(path), lambda: calls.append(1))
    assert len(calls) == 6


def test_helper_failure_is_raised_to_the_reader_without_hanging(tmp_path: Path,
                                                               mode: str) -> None:
    """An error inside SHA-256 on the helper thread reaches the caller; nothing hangs."""
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(8 * CHUNK_BYTES))
    fed = [0]

    def failing(chunk: memoryview) -> None:
        fed[0] += 1
        if fed[0] == 3:
            raise MemoryError("sha256 failed")

    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(MemoryError):
            read_big(fd, CHUNK_BYTES, failing, lambda chunk: None, lambda n: None,
                     lambda n: None)
    finally:
        os.close(fd)
    assert helpers_alive() == []


def test_second_big_hash_on_two_cores_takes_the_helper_away(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On two cores one big hash gets a helper; with two at once neither does (two threads,
    not four); on four cores both do."""
    for cpus, expected in [(2, [True, False]), (4, [True, True])]:
        monkeypatch.setattr(hash_split.os, "sched_getaffinity", lambda pid, n=cpus: set(range(n)))
        cores = hash_split._Cores()
        spare = []
        with cores.hashing():
            spare.append(cores.spare())
            with cores.hashing():
                spare.append(cores.spare())
        assert spare == expected, cpus
        assert cores.active == 0


def test_read_buffers_start_on_a_page_boundary() -> None:
    """Read buffers are page-aligned (the kernel copies file pages into a buffer 1-31 bytes
    past a boundary several times slower), even where a bytearray would not be."""
    before = bytearray(CHUNK_BYTES)  # glibc places a first big bytearray 16 bytes into a page
    for size in [CHUNK_BYTES, RING_BUFFERS * CHUNK_BYTES]:
        view = page_aligned(size)
        assert ctypes.addressof(ctypes.c_char.from_buffer(view)) % mmap.PAGESIZE == 0
        assert len(view) == size
    del before


def test_each_thread_keeps_its_own_read_buffer() -> None:
    """A thread's next hash reuses its page-aligned buffer (no fresh page faults per file),
    and two threads hashing at once never share one."""
    def address(view: memoryview) -> int:
        return ctypes.addressof(ctypes.c_char.from_buffer(view))

    first = address(read_buffer(CHUNK_BYTES))
    assert address(read_buffer(CHUNK_BYTES)) == first
    assert first % mmap.PAGESIZE == 0
    other: list[int] = []
    worker = threading.Thread(target=lambda: other.append(address(read_buffer(CHUNK_BYTES))))
    worker.start()
    worker.join()
    assert other and other[0] != first
