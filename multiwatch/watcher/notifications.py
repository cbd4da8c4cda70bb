"""Notifications in: the raw events of the observer, turned into the pipeline's requests.

Runs on the pipeline's thread.  A file's event settles it (a close-after-write starts
its early hash, see early_hash.py); a move or deletion goes to the announcer; a new or
moved-in directory, or lost events, ask for a walk (reconcile.py); what could not be read
is tried again when its permissions change or its retry is due.
"""

from __future__ import annotations

import logging
import os
import queue
import time
from collections.abc import Callable

from multiwatch.config import InstanceConfig
from multiwatch.watcher.announce import Announcer
from multiwatch.watcher.early_hash import EarlyHashes
from multiwatch.watcher.filters import PathFilter
from multiwatch.watcher.raw_event import EventKind, RawEvent
from multiwatch.watcher.reconcile import Reconciler
from multiwatch.watcher.settle import SettleTable
from multiwatch.watcher.unreadable import Unreadable

log = logging.getLogger("multiwatch.watcher.pipeline")  # (the logger these lines always had)

EVENTS_PER_STEP = 5000
LOST_EVENTS_LOG_SECONDS = 60.0


class NotificationRouter:
    """Dispatches each raw notification to what it asks of the pipeline."""

    def __init__(self, instance: InstanceConfig, path_filter: PathFilter,
                 notifications: queue.SimpleQueue[RawEvent], settle: SettleTable,
                 early: EarlyHashes, announce: Announcer, reconciler: Reconciler,
                 unreadable: Unreadable, *, progress: Callable[[], None],
                 root_deleted: Callable[[], None]) -> None:
        self.instance = instance
        self.root = instance.directory
        self.filter = path_filter
        self.notifications = notifications
        self.settle = settle
        self._early = early
        self._announce = announce
        self._reconciler = reconciler
        self._unreadable = unreadable
        self._progress = progress
        self._root_deleted = root_deleted
        self.trace_skips = False  # log filtered files (DEBUG), set once per step
        self._lost_events = 0  # overflows since the last "events were lost" line
        self._lost_events_logged_at = -LOST_EVENTS_LOG_SECONDS

    def take(self, wait: float) -> None:
        """Wait up to `wait` seconds for notifications, then handle up to a step's worth."""
        try:
            event = self.notifications.get(timeout=wait) if wait > 0 else (
                self.notifications.get_nowait())
        except queue.Empty:
            return
        now = time.monotonic()
        for _ in range(EVENTS_PER_STEP):
            self._on_notification(event, now)
            try:
                event = self.notifications.get_nowait()
            except queue.Empty:
                return
        self._on_notification(event, now)

    def wants(self, relative: str) -> bool:
        subdirectory = not self.instance.recursive and "/" in relative
        if not subdirectory and self.filter.wants_file(relative):
            return True
        if self.trace_skips:  # "why wasn't my file announced?"
            why = ("in a subdirectory, and recursive is false" if subdirectory
                   else self.filter.why_unwanted(relative))
            log.debug("file skipped by a filter",
                      extra={"path": os.path.join(self.root, relative), "reason": why})
        return False

    def retry_due(self, now: float) -> None:
        """Settle again (or walk again) what could not be read, once its retry is due."""
        files, directories = self._unreadable.due(now)
        self._read_again(files, directories, now, quiet=0.0)

    def _on_notification(self, event: RawEvent, now: float) -> None:
        if event.kind == EventKind.HASHED:
            return  # only woke the wait; the pipeline collects the pool's results
        if event.kind == EventKind.OVERFLOW:
            self._lost_events += 1
            if now >= self._lost_events_logged_at + LOST_EVENTS_LOG_SECONDS:
                # At most once a minute: refused watches repeat this every few seconds.
                log.warning("filesystem events were lost; rescanning",
                            extra={"path": self.root, "times": self._lost_events})
                self._lost_events, self._lost_events_logged_at = 0, now
            self._reconciler.request()
        elif event.kind == EventKind.ATTRIB:
            if event.src is not None:
                self._on_attrib(event.src, event.is_directory, now)
        elif event.is_directory:
            self._on_directory(event, now)
        elif event.kind == EventKind.MOVED:
            self._announce.moved(event.src, event.dest, now)
        elif event.kind == EventKind.DELETED:
            if event.src:
                self._announce.deleted(event.src, now)
        elif event.src and (event.src in self.settle or self.wants(event.src)):
            # (A path already settling was wanted: most events of a burst skip the filter.)
            at_close = None
            if event.kind == EventKind.CLOSED:
                at_close = self._early.start(event.src)
            else:  # the content may change again: a hash begun now would be stale
                self._early.drop(event.src)
            grace = self.instance.close_grace_seconds
            if event.kind == EventKind.CLOSED and grace > 0:
                # The writer closed the file: wait only a short grace (an immediate reopen
                # for writing sends "modified" and restores the full quiet period).
                self._announce.set_closed_write(event.src, True)
                self._announce.settle_later(event.src, now, quiet=grace, at_close=at_close)
            else:  # created, modified (or closed without close-aware mode)
                self._announce.set_closed_write(event.src, False)
                self._announce.settle_later(event.src, now, at_close=at_close)

    def _on_directory(self, event: RawEvent, now: float) -> None:
        if event.kind == EventKind.DELETED and event.src == "":
            self._root_deleted()
        elif event.kind == EventKind.CREATED or (
                event.kind == EventKind.MOVED and event.src is None):
            # Created, or moved in from outside the tree: files written before the new
            # directory's watch existed (or moved in with it) produce no events.
            self._reconciler.request_new_directory(
                event.src if event.kind == EventKind.CREATED else event.dest)
        elif event.kind == EventKind.DELETED and event.src:
            for relative in self._announce.tracked_under(event.src):
                self._progress()  # (an lstat each)
                self._announce.deleted(relative, now)
        elif event.kind == EventKind.MOVED and event.src:
            for relative in self._announce.tracked_under(event.src):
                self._progress()  # (an lstat each)
                moved_to = f"{event.dest}/{relative[len(event.src) + 1:]}" if event.dest else None
                self._announce.moved(relative, moved_to, now)
            # What was not tracked under the old name (an excluded one: ".staging",
            # "x.tmp") arrives now, and its files send no event of their own: scan it.
            # Files already moved above compare unchanged; per-file "moved" events that
            # follow (or came first) settle to the same version and announce nothing.
            self._reconciler.request_new_directory(event.dest)

    def _on_attrib(self, relative: str, is_directory: bool, now: float) -> None:
        """Permissions, owner or times changed: what could not be read may be readable now
        (and a touched file may hide a write that sent no event, by mmap say)."""
        if is_directory:
            files, directories = self._unreadable.below(relative)
            self._read_again(files, directories, now)
        elif relative not in self.settle and (
                relative in self._unreadable.files or self.wants(relative)):
            self._announce.settle_later(relative, now)  # (an unchanged version is not read)

    def _read_again(self, files: list[str], directories: list[str], now: float,
                    quiet: float | None = None) -> None:
        for relative in files:
            if relative not in self.settle and relative not in self._early.jobs:
                self._announce.settle_later(relative, now, quiet=quiet)
        for directory in directories:
            self._reconciler.request(directory)
