"""A standby's in-flight window, kept in its state database (table `in_flight`): the raw
events the active replica published last and may not have seen confirmed, re-published
by this replica if it takes over.  Written by the feed on the publisher thread
(standby_feed.py, in the very transaction that applies the same events to the warm
state, WarmState.apply); moved into the outbox at takeover in one transaction (`take`).
The standby's invariants are in standby.py's docstring.

What leaves the window:
- **A settled marker** (publisher.py `_send_settled`): the active replica publishes it
  once its outbox is drained and every event it published was confirmed, so every event
  received before it was confirmed: the window is emptied.
- **The time bound**, the fallback for an active replica that sends no marker (an older
  multiwatch): a run of events ends when nothing came for `seconds`
  (in_flight_window_seconds: a replica with an event not yet confirmed publishes again, or
  loses the lease, within that time), and a run that ended longer ago than that is empty.
  Times are wall-clock seconds, so that the bound holds across a standby's restart.
- **The size bounds**, also a fallback: the newest WINDOW_MAX_EVENTS events and
  WINDOW_MAX_BYTES (never fewer than WINDOW_KEEP_EVENTS) are kept.  The active replica
  publishes a batch only once the previous batch's confirms are settled, so the events it
  may not have seen confirmed are the last ones it published, never older ones.

An event received again (a retry, a redelivery) keeps its first place: the active replica
always publishes from the head of its outbox, so first receipts are in outbox order.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence

from multiwatch.watcher.message import Event
from multiwatch.watcher.sql import transaction

log = logging.getLogger("multiwatch.watcher.standby")  # (the logger these lines always had)

WINDOW_MAX_EVENTS = 2048  # 8 batches: an event nacked behind a held one rides a few batches
WINDOW_MAX_BYTES = 8 * 1024 * 1024
WINDOW_KEEP_EVENTS = 256  # publisher.BATCH_SIZE: never let go for the byte bound

# The active replica's settled marker goes to the broker's built-in direct exchange (it
# always exists, nothing to declare or delete; never the events exchange, whose catch-all
# consumers would see it) with this routing key; each standby binds its private queue to it.
SETTLED_EXCHANGE = "amq.direct"
SETTLED_HEADER = "multiwatch_settled"


def settled_key(instance_id: str) -> str:
    """The marker's routing key: the name of the instance's standby exchange."""
    return f"multiwatch.standby.{instance_id}"


_COLUMNS = "instance_id, event_type, routing_key, message_id, correlation_id, body, resync"
# meta: when the current run's last event came (wall-clock seconds, repr of a float).
_LAST = "in_flight_last"


class InFlightWindow:
    """The window's bounds, and the functions that keep its table (each takes the state
    database's connection; `record` runs inside the caller's transaction)."""

    def __init__(self, seconds: float, *, max_events: int = WINDOW_MAX_EVENTS,
                 max_bytes: int = WINDOW_MAX_BYTES, keep: int = WINDOW_KEEP_EVENTS) -> None:
        self.seconds = seconds
        self._max_events, self._max_bytes, self._keep = max_events, max_bytes, keep
        self.let_go = 0  # the run's oldest events let go for the bounds (this process)

    def record(self, conn: sqlite3.Connection, events: Sequence[Event], *, settled: bool,
               now: float) -> None:
        """Inside the transaction that applies them: `settled` (a marker came before
        `events`) empties the window first; a run that ended is let go; then the events
        are added (a message id already there keeps its place) and the bounds enforced."""
        if settled or self._ended(conn, now):
            self._clear(conn)
        if not events:
            return
        conn.executemany(f"INSERT OR IGNORE INTO in_flight ({_COLUMNS}) VALUES"
                         " (?, ?, ?, ?, ?, ?, ?)",
                         [(e.instance_id, e.event_type, e.routing_key, e.message_id,
                           e.correlation_id, e.body, int(e.resync)) for e in events])
        _set_last(conn, now)
        self._bound(conn)

    def adopt_outbox(self, conn: sqlite3.Connection, now: float) -> int:
        """At a standby's start: the events its outbox holds go into the window (one
        transaction), as if received now; how many.  They were recorded by a replica that
        lost the lease, or by a new active replica that took the window and stopped before
        publishing it: they may never have been confirmed (standby.py)."""
        with transaction(conn):
            if self._ended(conn, now):
                self._clear(conn)
            moved = conn.execute(f"INSERT OR IGNORE INTO in_flight ({_COLUMNS})"
                                 f" SELECT {_COLUMNS} FROM outbox ORDER BY seq").rowcount
            waiting = conn.execute("DELETE FROM outbox").rowcount
            if waiting:
                _set_last(conn, now)
                self._bound(conn)
        return int(max(moved, 0) if waiting else 0)

    def take(self, conn: sqlite3.Connection, now: float) -> int:
        """At takeover: the window's events appended to the outbox, oldest first, in one
        transaction (the outbox is empty then: they go out before anything the pipeline
        announces); the window is empty after.  How many."""
        with transaction(conn):
            moved = 0
            if not self._ended(conn, now):
                moved = conn.execute(f"INSERT INTO outbox ({_COLUMNS}) SELECT {_COLUMNS}"
                                     " FROM in_flight ORDER BY seq").rowcount
            self._clear(conn)
        return int(moved)

    def size(self, conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT count(*) FROM in_flight").fetchone()[0])

    def _ended(self, conn: sqlite3.Connection, now: float) -> bool:
        row = conn.execute("SELECT value FROM meta WHERE name = ?", (_LAST,)).fetchone()
        return row is None or now - float(row[0]) > self.seconds

    def _clear(self, conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM in_flight")
        conn.execute("DELETE FROM meta WHERE name = ?", (_LAST,))
        self.let_go = 0

    def _bound(self, conn: sqlite3.Connection) -> None:
        """Let go of the oldest rows beyond the bounds, keeping the newest."""
        count, size = conn.execute("SELECT count(*), coalesce(sum(length(body)), 0)"
                                   " FROM in_flight").fetchone()
        if count <= self._max_events and (size <= self._max_bytes or count <= self._keep):
            return
        # The newest row to let go: beyond the event bound, or where the newest rows'
        # bytes (from the newest down) pass the byte bound past the first `keep`.
        row = conn.execute(
            "SELECT seq FROM (SELECT seq, row_number() OVER newest AS n,"
            " sum(length(body)) OVER newest AS total FROM in_flight"
            " WINDOW newest AS (ORDER BY seq DESC))"
            " WHERE n > ? OR (n > ? AND total > ?) ORDER BY seq DESC LIMIT 1",
            (self._max_events, self._keep, self._max_bytes)).fetchone()
        if row is None:
            return
        let_go = conn.execute("DELETE FROM in_flight WHERE seq <= ?", (row[0],)).rowcount
        if not self.let_go:
            log.warning("the in-flight window is full; letting go of its oldest events (the "
                        "active replica had their confirms before publishing the newer ones)",
                        extra={"events": count - let_go})
        self.let_go += let_go


def _set_last(conn: sqlite3.Connection, now: float) -> None:
    conn.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT (name) DO UPDATE"
                 " SET value = excluded.value", (_LAST, repr(now)))
