"""The pipeline of one watcher: observe → settle → hash → state/outbox → publish.

Runs on the child's main thread, one step at a time (no locking; the loop heartbeats
between steps).  Each `step`:

1. observe: raw notifications become settle, move, delete or walk requests
   (notifications.py); walks compare the tree with what was announced (reconcile.py);
2. settle: a path is handled once it has been quiet for its settle period (settle.py);
   its facts until then are one record per path (announce.PathRecord);
3. hash: a small file here, a big one by the `HashPool`, started early at a
   close-after-write (early_hash.py); each outcome becomes an action in `_on_hash_outcome`;
4. state/outbox: `tracked` (path → hashes of the announced version, loaded at start) decides
   discovered, modified, unchanged, moved or deleted (announce.py); one transaction per
   step records the new file states with the events they caused (commit_buffer.py);
5. publish: the publisher thread sends what the outbox holds (publisher.py).
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import time
from collections.abc import Callable

from multiwatch.config import InstanceConfig
from multiwatch.status_view import LastEvent
from multiwatch.watcher.announce import Announcer
from multiwatch.watcher.commit_buffer import CommitBuffer
from multiwatch.watcher.confined import ConfinedRoot
from multiwatch.watcher.deletion_guard import DeletionGuard
from multiwatch.watcher.early_hash import EarlyHashes, Resolved
from multiwatch.watcher.filters import PathFilter
from multiwatch.watcher.hash_pool import HashJob, HashPool
from multiwatch.watcher.hashing import (
    ChangedWhileHashing,
    FileVersion,
    Hashed,
    NotRegularFile,
    hash_file,
    stat_regular,
)
from multiwatch.watcher.notifications import NotificationRouter
from multiwatch.watcher.outbox import OutboxGauge
from multiwatch.watcher.raw_event import EventKind, RawEvent
from multiwatch.watcher.reconcile import ReconcileActions, Reconciler
from multiwatch.watcher.settle import SettleTable
from multiwatch.watcher.startup_progress import StartupProgress
from multiwatch.watcher.state import StateStore
from multiwatch.watcher.unreadable import Unreadable
from multiwatch.watcher.unusual_activity import UnusualActivity

log = logging.getLogger(__name__)

SCAN_ENTRIES_PER_STEP = 5000
SCAN_SECONDS_PER_STEP = 0.5
HASHES_PER_STEP = 200
CLOSE_LOCK_WAIT_SECONDS = 1.0


class Pipeline:
    """Turns raw notifications and scan results into announced events for one instance."""

    def __init__(self, instance: InstanceConfig, store: StateStore, gauge: OutboxGauge, *,
                 progress: Callable[[], None] | None = None,
                 hash_pool: HashPool | None = None) -> None:
        self.instance = instance
        self.root = instance.directory
        self.filter = PathFilter(instance.include, instance.exclude)
        self.settle = SettleTable(instance.settle_seconds)
        self.notifications: queue.SimpleQueue[RawEvent] = queue.SimpleQueue()
        self.store = store
        # Called during long work (a hash, a directory of 100,000 files moved or deleted,
        # the deletions a rescan finds), so heartbeats keep flowing.
        self._progress = progress or _nothing
        self.gauge = gauge
        self.tracked = store.load_tracked()
        self._buffer = CommitBuffer(store, gauge, self.tracked)  # this step's states, events
        self._paused_by_full_outbox = False
        self.unusual_activity = UnusualActivity(instance.unusual_activity,
                                                lambda: len(self.tracked))
        self.bytes_hashed = 0
        self.files_hashed = 0
        self.root_missing = False
        self.mount_lost: Callable[[str], bool] = lambda _path: False  # by main (mount.py)
        self._startup = StartupProgress()
        # Every open, stat and listing below the root goes through its descriptor (confined.py).
        self._confined = ConfinedRoot(self.root, follow_symlinks=instance.follow_symlinks)
        self._unreadable = Unreadable(self._confined)  # warned about once, tried again
        # Big files being hashed by the pool (or hashed, waiting for their settle period).
        self.hash_pool = hash_pool
        self._early = EarlyHashes(hash_pool, self._confined, self.tracked, self._resolve)
        if hash_pool is not None:
            hash_pool.set_wake(lambda: self.notifications.put(_WAKE))
        # One record per noticed path, and what its changes announce.
        self._announce = Announcer(
            instance, self.tracked, self.settle, self._early, self._buffer, self._unreadable,
            gauge, self.unusual_activity, wants=lambda relative: self._router.wants(relative),
            mount_lost=lambda relative: self.mount_lost(relative), resolve=self._resolve)
        self.counts = self._announce.counts  # events announced, by type
        self.deletions = DeletionGuard(store, instance, gauge, is_gone=self._really_gone,
                                       is_tracked=self.tracked.__contains__,
                                       announce=self._announce.gone, rescan=self.request_scan)
        self._reconciler = Reconciler(instance, self._confined, self.filter, self.tracked,
                                      self.settle, self._unreadable, self.deletions,
                                      self._startup, ReconcileActions(
            settle_later=self._announce.settle_later,
            gone=self._announce.gone, is_gone=self._really_gone,
            save_fingerprints=self._save_fingerprints, progress=lambda: self._progress()))
        self._router = NotificationRouter(
            instance, self.filter, self.notifications, self.settle, self._early, self._announce,
            self._reconciler, self._unreadable, progress=lambda: self._progress(),
            root_deleted=lambda: setattr(self, "root_missing", True))

    def request_scan(self, relative_dir: str = "", *,
                     watch: Callable[[str], object] | None = None) -> None:
        """Reconcile (part of) the tree with what was announced: new or changed files are
        settled like notified ones; announced files no longer on disk are deleted.

        `watch`: the walk also adds the observer's watches, each directory's before it is
        listed (see observe.directory_watcher)."""
        self._reconciler.request(relative_dir, watch=watch)

    def watch_directories(self, watch: Callable[[str], object] | None) -> None:
        """Every walk from now on calls `watch` on each directory before listing it (the
        running observer's observe.directory_watcher; None: a polling one needs none)."""
        self._reconciler.watch = watch

    def step(self, max_wait: float) -> None:
        """One turn: wait briefly for notifications, then scan, then handle settled paths."""
        now = time.monotonic()
        # A full outbox (or an unwritable state database) holds settled work back: nothing
        # is due until the publisher drains (or the commit succeeds).
        held_back = self.gauge.full or self._buffer.failures
        wait = 0.0 if self._reconciler.scans else max_wait
        for due in (() if held_back else (self.settle.next_due(), self._unreadable.next_due(),
                                          self.deletions.next_due(now))):
            if due is not None:
                wait = min(wait, max(0.0, due - now))
        self._router.trace_skips = log.isEnabledFor(logging.DEBUG)  # once per turn, not per path
        self.deletions.step(now)  # a release in progress, the operator's requests
        self._router.take(wait)
        self._collect_hashes()
        if not held_back:
            self._router.retry_due(time.monotonic())
        self._reconciler.walk_some(SCAN_ENTRIES_PER_STEP, SCAN_SECONDS_PER_STEP)
        self._handle_settled()
        self._buffer.commit()
        self._startup.report(self)
        self._confined.release()  # between steps the watched mount is not pinned

    def _handle_settled(self) -> None:
        if self._buffer.failures:
            return  # the state database is not taking writes: do not pile up more work
        if self.gauge.full:
            if not self._paused_by_full_outbox:
                self._paused_by_full_outbox = True
                log.warning("outbox full; holding settled files until the broker catches up",
                            extra={"outbox_depth": self.gauge.depth,
                                   "outbox_bytes": self.gauge.size})
            return
        if self._paused_by_full_outbox:
            self._paused_by_full_outbox = False
            log.info("outbox has room again; reconciling by scan",
                     extra={"outbox_depth": self.gauge.depth})
            self.request_scan()
        now = time.monotonic()
        room = self.gauge.max_events - self.gauge.depth - len(self._buffer.events)
        for relative, seen in self.settle.pop_due(now, min(HASHES_PER_STEP, room)):
            self._conclude_settled(relative, seen, now)
            if relative not in self.settle and relative not in self._early.jobs:  # done with it
                self._announce.forget_noticed(relative)
            self._progress()

    def _conclude_settled(self, relative: str, seen: FileVersion | None, now: float) -> None:
        """A path's settle period is over: hash it if it is new, then drop any early hash
        nobody will use."""
        if self.mount_lost(relative):  # not of this tree: its return's reconcile settles it
            return
        self._hash_if_new(relative, seen, now)
        job = self._early.jobs.get(relative)
        if job is not None and not job.settled and relative not in self.settle:
            self._early.drop(relative)  # an early hash nobody will use (unchanged, gone...)

    def _hash_if_new(self, relative: str, seen: FileVersion | None, now: float) -> None:
        """Stat a settled path; settle it again if it is still being written, hash (and
        announce) its version if that is not the one announced."""
        resolved = self._early.trusted_stat_at_close(
            relative, self._announce.take_at_close(relative))
        if resolved is None and self._hash_as_seen(relative, seen, now):
            return
        if resolved is None:
            try:
                resolved = self._resolve(relative)
            except OSError as exc:  # permissions, EIO/ESTALE: not gone, tried again
                self._unreadable.cannot_read(relative, exc, time.monotonic())
                return
            if resolved is None:
                self._announce.gone(relative)
                return
        readable_path, st = resolved
        version = FileVersion.of(st)
        written_ago_ns = time.time_ns() - st.st_mtime_ns
        closed_after_write = self._announce.take_closed_write(relative)
        if (not closed_after_write and version != seen
                and written_ago_ns < self.settle.settle_seconds * 1e9):
            # Still being written by someone who does not trigger events (mmap, NFS).
            self.settle.touch(relative, now, seen=version)
            return
        if self.tracked.version_of(relative) == version:  # the version announced
            self._unreadable.readable(relative)
            return
        job = self._early.for_settled(relative, readable_path, version)
        if job is not None:
            if job.done:  # hashed while it settled: announce it now
                self._finish_pool_hash(job, now)
            return
        try:
            # Only the version that settled is read (whatever took its place since is
            # settled again).
            hashed = hash_file(self._confined, relative, self._progress, expected=version)
        except (ChangedWhileHashing, NotRegularFile, OSError) as exc:
            self._on_hash_outcome(relative, now, None, exc)
            return
        self._on_hash_outcome(relative, now, hashed, None)

    def _hash_as_seen(self, relative: str, seen: FileVersion | None, now: float) -> bool:
        """A small new file a scan saw (a first start's every file): hash it as the version
        the scan's lstat saw, with no second stat.  hash_file checks that the file it opens
        has that very version; if not (written since, without events, or the version was
        an older scan's), False: the caller stats afresh and decides as for any path.
        True when this was the path's outcome."""
        pool = self.hash_pool
        if (seen is None or pool is None or seen.size >= pool.min_bytes
                or self.instance.follow_symlinks or relative in self.tracked):
            return False
        hashed: Hashed | None = None
        error: Exception | None = None
        try:
            hashed = hash_file(self._confined, relative, self._progress, expected=seen)
        except ChangedWhileHashing:
            return False
        except (NotRegularFile, OSError) as exc:
            error = exc
        self._announce.take_closed_write(relative)  # (the version is the one seen)
        self._on_hash_outcome(relative, now, hashed, error)
        return True

    def _collect_hashes(self) -> None:
        """Take the pool's finished hashes back; announce those whose settle period is over."""
        now = time.monotonic()
        for job in self._early.completed():
            if job.settled:
                self._finish_pool_hash(job, now)
            self._progress()

    def _finish_pool_hash(self, job: HashJob, now: float) -> None:
        """Record what a settled file's pool hash found."""
        relative = job.relative
        del self._early.jobs[relative]
        self._on_hash_outcome(relative, now, job.result, job.error)
        if relative not in self.settle:
            self._announce.forget_noticed(relative)

    def _on_hash_outcome(self, relative: str, now: float, hashed: Hashed | None,
                         error: Exception | None) -> None:
        """The one place a hash's outcome (inline or the pool's) becomes an action."""
        if isinstance(error, ChangedWhileHashing):
            self.settle.touch(relative, now)  # settled again, then read again
        elif isinstance(error, (FileNotFoundError, NotADirectoryError, NotRegularFile)):
            self._announce.gone(relative)
        elif isinstance(error, OSError):
            self._unreadable.cannot_read(relative, error, time.monotonic())
        elif hashed is not None:
            self.files_hashed += 1
            self.bytes_hashed += hashed.version.size
            self._announce.hashed(relative, hashed)

    def _resolve(self, relative: str) -> Resolved | None:
        """The file to read for a relative path and its stat; None if absent or not a
        regular file.  Symlinks count only with follow_symlinks, and only inside the root;
        the path is resolved below the root's descriptor (confined.py), never by name."""
        st = stat_regular(self._confined, relative)
        return (os.path.join(self.root, relative), st) if st is not None else None

    def _really_gone(self, relative: str) -> bool:
        try:  # (a file whose mount went away is not gone: mount.py)
            return self._resolve(relative) is None and not self.mount_lost(relative)
        except OSError:
            return False  # unreadable (or a mount failing for a while) is not deleted

    @property
    def last_event(self) -> LastEvent | None:
        """The latest event stored (type, path, wall-clock time), for /status."""
        return self._buffer.last_event

    @property
    def startup(self) -> StartupProgress:
        """The startup scan's progress (its `on_complete` hook: watcher/main.py)."""
        return self._startup

    @property
    def busy(self) -> bool:
        """True while a scan, settling paths or hashes remain (used for startup progress)."""
        return bool(self._reconciler.scans) or len(self.settle) > 0 or bool(self._early.jobs)

    @property
    def files_waiting(self) -> int:
        """Files noticed but not yet announced (settling, or settled and being hashed)."""
        return len(self.settle) + sum(1 for job in self._early.jobs.values() if job.settled)

    def close(self) -> None:
        """Abandon hashes in progress: their files are not recorded, so the next start's
        scan settles and announces them."""
        self._early.shutdown()
        if self._buffer.empty:
            # Only a speed-up for the next start: not worth more than a moment of the stop.
            self.store.limit_lock_wait(CLOSE_LOCK_WAIT_SECONDS)
            self._save_fingerprints(changed_too=True)  # the table is what memory says

    def _save_fingerprints(self, *, changed_too: bool = False) -> None:
        try:
            self.tracked.save_fingerprints(changed_too=changed_too)
        except sqlite3.Error as exc:  # they only spare the next scan some reading
            log.debug("cannot save directory fingerprints: %s", exc)


_WAKE = RawEvent(EventKind.HASHED, False, None)  # put on the notification queue by the pool


def _nothing() -> None:
    """The progress callback of a pipeline that reports to nobody."""
