"""Big files are hashed on a few worker threads, so the pipeline thread never waits for them.

hashlib and python-xxhash release the GIL while they digest a 1 MiB chunk, and so does
the read, so two workers hash two big files on two cores.  Files below `min_bytes` are
hashed inline by the pipeline (a few milliseconds each, no slot), so a burst of small
files costs no thread hand-off and a small file never queues behind a big one.

A job only computes: the pipeline thread submits it, keeps it in its own table, and
receives it back through `completed` (and the `wake` callback, which unblocks the
pipeline's wait) to decide what to announce.  The pipeline stays the only writer of
state.  Each job holds one machine-wide hash slot (`HashSlots`) while it reads.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from multiwatch.watcher.confined import ConfinedRoot
from multiwatch.watcher.hash_slots import HashSlot, HashSlots
from multiwatch.watcher.hashing import (
    ChangedWhileHashing,
    FileVersion,
    HashCancelled,
    Hashed,
    NotRegularFile,
    hash_file,
)

log = logging.getLogger(__name__)

BIG_FILE_BYTES = 4 << 20  # from this size on: hashed by the pool, under the slot cap
JOIN_SECONDS = 5.0


class HashJob:
    """One hash of root/`relative` expected at `version`; `path` names it in logs."""

    def __init__(self, relative: str, path: str, version: FileVersion,
                 root: ConfinedRoot) -> None:
        self.relative = relative
        self.path = path
        self.version = version
        self.root = root
        self.cancelled = threading.Event()
        self.result: Hashed | None = None  # set by the worker before it hands the job back
        self.error: Exception | None = None
        # Pipeline thread only:
        self.settled = False  # its settle period is over: announce as soon as it is done
        self.done = False  # received back from the pool

    def cancel(self) -> None:
        """Stop reading (or waiting for a slot) at the next chunk; the job is never handed back."""
        self.cancelled.set()


class HashPool:
    """`workers` threads hashing big files, each under one of `slots` (None: no cap).

    The workers are daemon threads, started on the first submit: a watcher that exits
    (or crashes) is never held up by a hash in progress or one waiting for a slot."""

    def __init__(self, slots: HashSlots | None, workers: int, *,
                 min_bytes: int = BIG_FILE_BYTES) -> None:
        self.slots = slots
        self.min_bytes = min_bytes
        self.completed: queue.SimpleQueue[HashJob] = queue.SimpleQueue()
        self._wake: Callable[[], None] = lambda: None
        self._workers = max(1, workers)
        self._queue: queue.SimpleQueue[HashJob | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._live: set[HashJob] = set()
        self._lock = threading.Lock()
        self._slot_trouble_logged = False

    def set_wake(self, wake: Callable[[], None]) -> None:
        """Called (from a worker) after each job is put on `completed`."""
        self._wake = wake

    def submit(self, relative: str, path: str, version: FileVersion,
               root: ConfinedRoot) -> HashJob:
        job = HashJob(relative, path, version, root)
        with self._lock:
            self._live.add(job)
        if not self._threads:
            for number in range(self._workers):
                thread = threading.Thread(target=self._work, name=f"hash-{number}", daemon=True)
                thread.start()
                self._threads.append(thread)
        self._queue.put(job)
        return job

    def shutdown(self) -> None:
        """Cancel every job (queued, waiting for a slot or reading) and join the workers."""
        with self._lock:
            for job in self._live:
                job.cancel()
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + JOIN_SECONDS
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = []

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            self._run(job)

    def _run(self, job: HashJob) -> None:
        try:
            if self._hash(job):
                self.completed.put(job)
                self._wake()
        except Exception:  # a worker must never die silently with a job the pipeline awaits
            log.exception("hash worker failed", extra={"path": job.path})
            job.error = ChangedWhileHashing(job.path)  # the pipeline settles it again
            self.completed.put(job)
            self._wake()
        finally:
            with self._lock:
                self._live.discard(job)

    def _hash(self, job: HashJob) -> bool:
        """Hash the job's file under a slot; False if it was cancelled on the way."""
        if job.cancelled.is_set():
            return False
        queued = time.monotonic()
        slot = self._take_slot(job)
        if job.cancelled.is_set():
            if slot is not None:
                slot.release()
            return False
        started = time.monotonic()
        try:  # both log lines are written while the slot is held: they bracket its use
            log.info("hashing big file", extra={
                "path": job.path, "size_bytes": job.version.size,
                "slot": slot.index if slot is not None else None,
                "slot_wait_seconds": round(started - queued, 3)})
            try:
                job.result = hash_file(job.root, job.relative, cancelled=job.cancelled,
                                       expected=job.version)
            except HashCancelled:
                log.debug("hash abandoned: the file changed again", extra={"path": job.path})
                return False
            except (OSError, NotRegularFile, ChangedWhileHashing) as exc:  # the pipeline decides
                job.error = exc
                return True
            seconds = max(time.monotonic() - started, 1e-9)
            log.info("hashed big file", extra={
                "path": job.path, "size_bytes": job.version.size, "seconds": round(seconds, 3),
                "gb_per_second": round(job.version.size / seconds / 1e9, 2)})
        finally:
            if slot is not None:
                slot.release()
        if job.result.version != job.version:
            job.error, job.result = ChangedWhileHashing(job.path), None
        return True

    def _take_slot(self, job: HashJob) -> HashSlot | None:
        if self.slots is None:
            return None
        try:
            return self.slots.acquire(job.cancelled)
        except OSError as exc:  # state_dir unwritable: hash anyway rather than hold files back
            if not self._slot_trouble_logged:
                self._slot_trouble_logged = True
                log.warning("cannot take a hash slot, hashing without the cap: %s",
                            exc.strerror or exc, extra={"path": self.slots.directory})
            return None
