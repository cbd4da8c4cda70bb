"""The commit buffer: one step's file states and events, recorded in one transaction.

Runs on the pipeline's thread.  If the state database cannot be written (disk full, I/O
error), everything stays pending in memory, the pipeline holds settled work back, and the
commit is retried with backoff; nothing is announced (or logged as announced) before it is
stored.
"""

from __future__ import annotations

import logging
import sqlite3
import time

from multiwatch.logs import lines_written_together
from multiwatch.status_view import LastEvent
from multiwatch.watcher.hashing import Hashed
from multiwatch.watcher.message import Event
from multiwatch.watcher.outbox import OutboxGauge
from multiwatch.watcher.state import StateStore
from multiwatch.watcher.tracked_files import TrackedFiles

log = logging.getLogger("multiwatch.watcher.pipeline")  # (the logger these lines always had)

STORE_RETRY_MAX_SECONDS = 10.0


class CommitBuffer:
    """What the current step changed: `tracked` at once, the state database on commit()."""

    def __init__(self, store: StateStore, gauge: OutboxGauge, tracked: TrackedFiles) -> None:
        self.store = store
        self.gauge = gauge
        self.tracked = tracked
        self.files: dict[str, Hashed | None] = {}  # path → its new state (None: untracked)
        self.events: list[Event] = []
        self._event_logs: list[dict[str, object]] = []  # logged once stored
        self.failures = 0  # commits failed in a row
        self._retry_at = 0.0
        self.last_event: LastEvent | None = None  # the latest stored, for /status

    @property
    def empty(self) -> bool:
        """Nothing pending and the database taking writes."""
        return not (self.files or self.events or self.failures)

    def track(self, relative: str, hashed: Hashed) -> None:
        self.tracked[relative] = hashed
        self.files[relative] = hashed

    def untrack(self, relative: str) -> Hashed | None:
        announced = self.tracked.pop(relative, None)
        if announced is not None:
            self.files[relative] = None
        return announced

    def add_event(self, event: Event, log_fields: dict[str, object]) -> None:
        """An event to store with this step's states; `log_fields` are logged once it is."""
        self.events.append(event)
        self._event_logs.append(log_fields)

    def commit(self) -> None:
        """Record the pending file states and events in one transaction (or retry later)."""
        if not self.files and not self.events:
            return
        now = time.monotonic()
        if now < self._retry_at:
            return
        try:
            self.store.commit(self.files, self.events)
        except sqlite3.Error as exc:
            self.failures += 1
            delay = min(STORE_RETRY_MAX_SECONDS, 0.5 * 2 ** min(self.failures, 6))
            self._retry_at = now + delay
            if self.failures == 1:
                log.error("cannot record state, holding %d events until it can: %s",
                          len(self.events), exc, extra={"path": self.store.path})
            return
        if self.failures:
            log.info("state database writable again", extra={"path": self.store.path})
        self.failures, self._retry_at = 0, 0.0
        self.tracked.stored(self.files.keys())
        self.gauge.added(len(self.events), sum(len(e.body) for e in self.events))
        with lines_written_together():
            for event, fields in zip(self.events, self._event_logs, strict=True):
                log.info(event.event_type.replace("_", " "), extra=fields)
        if self._event_logs:
            last = self._event_logs[-1]
            self.last_event = {"event_type": str(last["event_type"]), "path": str(last["path"]),
                               "at": time.time()}
        self.files = {}
        self.events = []
        self._event_logs = []
