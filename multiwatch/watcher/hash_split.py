"""A big file's read, with SHA-256 on a helper thread while a core is to spare.

SHA-256 is sequential and costs most of a one-thread hash (the read and XXH128 the rest;
figures in bench/README.md).  While a core is spare, the caller reads each chunk and feeds
XXH128 while the helper digests the chunk before it, so the file takes max(read + XXH128,
SHA-256) instead of their sum: 10-15% faster than one thread.  os.readv, xxhash and hashlib
all release the GIL on chunks this size, so the two threads do run at once.

A core is spare while this process hashes at most one big file per two usable cores.  When
a second big file starts on two cores, the first one's caller takes SHA-256 back (after the
helper has finished its queue: SHA-256 sees the chunks in file order), so two files use two
threads, not four, and the watcher's own loop is not crowded out; when the other finishes,
the helper takes over again.

Buffers go round a ring: one is refilled only after SHA-256 is done with it, so at most
RING_BUFFERS chunks are allocated.
"""

from __future__ import annotations

import mmap
import os
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

RING_BUFFERS = 3  # one being read, one being digested, one spare to absorb jitter

Update = Callable[[memoryview], object]


def page_aligned(size: int) -> memoryview:
    """A zeroed buffer of `size` bytes that starts on a page boundary (anonymous mmap).

    The kernel copies page-cache pages into a destination 1-31 bytes past a page boundary
    about 4.5x slower than into an aligned one (measured: 0.45 s against 0.10 s per GiB on
    this AMD EPYC, FSRM `rep movsb`), and glibc hands out big allocations from a fresh
    mmap 16 bytes past one: a process's first 1 MiB bytearray read the first big file at
    two thirds of the speed of the later ones."""
    return memoryview(mmap.mmap(-1, size))


_kept = threading.local()


def read_buffer(size: int) -> memoryview:
    """A page-aligned buffer of `size` bytes, kept for this thread's next hash.

    A fresh mapping costs a page fault per 4 KiB on first use, about as much as hashing the
    bytes it holds (bench/README.md); a hash worker or the pipeline thread hashes one file at
    a time, so each keeps one buffer (resident only as far as it was ever filled)."""
    kept: memoryview | None = getattr(_kept, "view", None)
    if kept is None or len(kept) < size:
        kept = _kept.view = page_aligned(size)
    return kept[:size]


class _Cores:
    """Big-file hashes in progress in this process, against the cores it may run on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = 0
        self.cpus = 1

    @contextmanager
    def hashing(self) -> Iterator[None]:
        with self._lock:
            self.active += 1
            self.cpus = len(os.sched_getaffinity(0))
        try:
            yield
        finally:
            with self._lock:
                self.active -= 1

    def spare(self) -> bool:
        """Whether each hash in progress can have two cores (read under the GIL: no lock)."""
        return self.active * 2 <= self.cpus


CORES = _Cores()


class _Sha256Helper(threading.Thread):
    """Feeds `update` the chunks it receives, in order, and returns each buffer to `free`."""

    def __init__(self, update: Update, views: list[memoryview]) -> None:
        super().__init__(name="hash-sha256", daemon=True)
        self.update = update
        self.views = views
        self.full: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self.free: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.error: BaseException | None = None

    def run(self) -> None:
        while (item := self.full.get()) is not None:
            index, count = item
            if self.error is None:
                try:
                    self.update(self.views[index][:count])
                except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
                    self.error = exc
            self.free.put(index)  # always: a reader waiting for a buffer must never hang


def read_big(fd: int, chunk_bytes: int, sha256: Update, xxh128: Update,
             after_read: Callable[[int], None], after_feed: Callable[[int], None]) -> None:
    """Read `fd` to EOF in `chunk_bytes` chunks into both hashes, SHA-256 on a helper thread
    while a core is spare.

    `after_read(count)` runs on the caller's thread before a chunk is hashed; it may wait
    (read_rate_limit: the helper has no reads to pace) and raise (cancellation) to stop;
    `after_feed(count)` after it was hashed or handed on (progress).
    The helper has finished with every chunk, and exited, when this returns or raises."""
    with CORES.hashing():
        ring = read_buffer(chunk_bytes * RING_BUFFERS)
        views = [ring[i * chunk_bytes:(i + 1) * chunk_bytes] for i in range(RING_BUFFERS)]
        mine = list(range(RING_BUFFERS))  # buffers not queued for (or held by) the helper
        helper: _Sha256Helper | None = None
        try:
            while True:
                if not mine:
                    assert helper is not None  # buffers only leave `mine` for the helper
                    mine.append(helper.free.get())
                index = mine.pop()
                count = os.readv(fd, [views[index]])
                if not count:
                    break
                after_read(count)
                chunk = views[index][:count]
                xxh128(chunk)
                if CORES.spare():
                    if helper is None:
                        helper = _Sha256Helper(sha256, views)
                        helper.start()
                    helper.full.put((index, count))
                else:
                    if helper is not None:  # SHA-256 takes chunks in order: drain the helper
                        while len(mine) < RING_BUFFERS - 1:
                            mine.append(helper.free.get())
                    sha256(chunk)
                    mine.append(index)
                after_feed(count)
        finally:
            if helper is not None:
                helper.full.put(None)
                helper.join()
        if helper is not None and helper.error is not None:
            raise helper.error
