"""What a path's changes announce, and the facts kept about each path until then.

Runs on the pipeline's thread.  A path noticed (by a notification or a scan) gets one
record — when it was first noticed, its stat at the close that ended its writes, whether
its last event was a close-after-write — dropped once the path is announced or forgotten.
Announcing tracks the new state in `tracked` and queues the event in the commit buffer.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter
from collections.abc import Callable

from multiwatch.config import InstanceConfig
from multiwatch.watcher.commit_buffer import CommitBuffer
from multiwatch.watcher.early_hash import EarlyHashes, Resolved
from multiwatch.watcher.hashing import FileVersion, Hashed
from multiwatch.watcher.message import (
    FILE_DELETED,
    FILE_DISCOVERED,
    FILE_MODIFIED,
    FILE_MOVED,
    build_event,
)
from multiwatch.watcher.outbox import OutboxGauge
from multiwatch.watcher.settle import SettleTable
from multiwatch.watcher.tracked_files import TrackedFiles
from multiwatch.watcher.unreadable import Unreadable
from multiwatch.watcher.unusual_activity import UnusualActivity


@dataclasses.dataclass(slots=True)
class PathRecord:
    """One noticed path's facts until it is announced or forgotten."""

    noticed_at: float | None = None  # first notification of this change (for latency)
    at_close: Resolved | None = None  # its stat when last closed after a write
    closed_write: bool = False  # its last event was a close-after-write (close-aware)

    def empty(self) -> bool:
        return self.noticed_at is None and self.at_close is None and not self.closed_write


class Announcer:
    """Settles, moves and deletes paths, and announces what changed."""

    def __init__(self, instance: InstanceConfig, tracked: TrackedFiles, settle: SettleTable,
                 early: EarlyHashes, buffer: CommitBuffer, unreadable: Unreadable,
                 gauge: OutboxGauge, unusual_activity: UnusualActivity, *,
                 wants: Callable[[str], bool], mount_lost: Callable[[str], bool],
                 resolve: Callable[[str], Resolved | None]) -> None:
        self.instance = instance
        self.root = instance.directory
        self.tracked = tracked
        self.settle = settle
        self._early = early
        self._buffer = buffer
        self._unreadable = unreadable
        self._gauge = gauge
        self.counts: Counter[str] = Counter()
        self.unusual_activity = unusual_activity
        self._wants = wants
        self._mount_lost = mount_lost
        self._resolve = resolve
        self.records: dict[str, PathRecord] = {}

    # -- the per-path record -------------------------------------------------------------

    def _record_of(self, relative: str) -> PathRecord:
        record = self.records.get(relative)
        if record is None:
            record = self.records[relative] = PathRecord()
        return record

    def _tidy(self, relative: str, record: PathRecord) -> None:
        if record.empty():
            del self.records[relative]

    def forget_noticed(self, relative: str) -> float | None:
        record = self.records.get(relative)
        if record is None or record.noticed_at is None:
            return None
        noticed_at, record.noticed_at = record.noticed_at, None
        self._tidy(relative, record)
        return noticed_at

    def take_at_close(self, relative: str) -> Resolved | None:
        record = self.records.get(relative)
        if record is None or record.at_close is None:
            return None
        at_close, record.at_close = record.at_close, None
        self._tidy(relative, record)
        return at_close

    def set_closed_write(self, relative: str, closed: bool) -> None:
        if closed:
            self._record_of(relative).closed_write = True
        else:
            record = self.records.get(relative)
            if record is not None and record.closed_write:
                record.closed_write = False
                self._tidy(relative, record)

    def take_closed_write(self, relative: str) -> bool:
        """Whether the last event was a close-after-write (forgotten once asked)."""
        record = self.records.get(relative)
        if record is None or not record.closed_write:
            return False
        self.set_closed_write(relative, False)
        return True

    # -- what changes announce -----------------------------------------------------------

    def settle_later(self, relative: str, now: float, seen: FileVersion | None = None,
                     quiet: float | None = None, at_close: Resolved | None = None) -> None:
        """Start or restart a path's quiet period.  `at_close` is its stat taken when a
        writer closed it (or renamed it into place); any other notification or scan
        finding forgets that stat."""
        self.settle.touch(relative, now, seen=seen, quiet=quiet)
        record = self._record_of(relative)
        if record.noticed_at is None:
            record.noticed_at = now
        record.at_close = at_close
        self._tidy(relative, record)

    def deleted(self, relative: str, now: float) -> None:
        """A notified deletion: announced, unless the path cannot be looked up now (EIO,
        ESTALE, a directory that cannot be searched).  A polling observer reports what its
        walk could not stat as deleted, though it may well be there: such a path settles
        instead, and its lookup is retried (unreadable.py) until it says."""
        try:
            self._resolve(relative)
        except OSError:
            self.settle_later(relative, now)
            return
        self.gone(relative)

    def gone(self, relative: str) -> None:
        if self._mount_lost(relative):  # a file vanished with its mount is not deleted
            return
        self._unreadable.readable(relative)
        self.settle.discard(relative)
        self._early.drop(relative)
        self.records.pop(relative, None)
        announced = self._buffer.untrack(relative)
        if announced is not None:
            self._emit(FILE_DELETED, relative, announced)

    def tracked_under(self, relative_dir: str) -> list[str]:
        prefix = relative_dir + "/"
        return sorted(set(self.tracked.paths_under(relative_dir)) |
                      set(self.settle.under(relative_dir)) |
                      {p for p in self._early.jobs if p.startswith(prefix)})

    def moved(self, src: str | None, dest: str | None, now: float) -> None:
        announced = self._buffer.untrack(src) if src else None
        if src:
            self._unreadable.readable(src)
            self.settle.discard(src)
            self.take_at_close(src)
            self._early.drop(src)
            self.forget_noticed(src)  # (a close-after-write mark stays with the old name)
        if dest:
            self._early.drop(dest)
        if not (dest and self._wants(dest)):
            if announced is not None:
                self._emit(FILE_DELETED, src or "", announced)
            return
        if announced is not None:
            try:
                resolved = self._resolve(dest)
            except OSError:
                resolved = None
            st = resolved[1] if resolved is not None else None
            # A rename keeps inode, size and mtime; anything else means other content.
            if st is not None and FileVersion.of(st) == announced.version:
                self.settle.discard(dest)
                self.take_at_close(dest)
                renamed = dataclasses.replace(announced, ctime_ns=st.st_ctime_ns)
                self._buffer.track(dest, renamed)
                self._emit(FILE_MOVED, dest, renamed, old_relative_path=src, before=announced)
                return
        if announced is not None:
            # What arrived at dest is not what we announced: the old path is gone.
            self._emit(FILE_DELETED, src or "", announced)
        # Renamed into place (x.part -> x): usually complete already.
        self.settle_later(dest, now, at_close=self._early.start(dest))

    def hashed(self, relative: str, hashed: Hashed) -> None:
        """Track a freshly hashed version and announce it if its content is new."""
        self._unreadable.readable(relative)
        announced = self.tracked.get(relative)
        self._buffer.track(relative, hashed)
        if announced is None:
            self._emit(FILE_DISCOVERED, relative, hashed)
        elif announced.sha256 != hashed.sha256:
            self._emit(FILE_MODIFIED, relative, hashed, before=announced)

    def _emit(self, event_type: str, relative: str, hashed: Hashed,
              old_relative_path: str | None = None, before: Hashed | None = None) -> None:
        """Record one event; `before` is the version it replaces or renames (a deletion's
        is `hashed` itself): its ctime tells unusual activity whether the file is old."""
        event = build_event(
            event_type=event_type,
            instance_id=self.instance.id,
            watched_directory=self.root,
            relative_path=relative,
            hashed=hashed,
            old_relative_path=old_relative_path,
        )
        noticed_at = self.forget_noticed(relative)
        self._gauge.noticed_at[event.message_id] = (
            noticed_at if noticed_at is not None else time.monotonic())
        self.counts[event_type] += 1
        self.unusual_activity.record(event_type, (before or hashed).ctime_ns)
        self._buffer.add_event(event, {
            "path": os.path.join(self.root, relative),
            "event_type": event_type,
            "size_bytes": hashed.version.size,
            "message_id": event.message_id,
        })
