"""A standby replica (roster `ha`): it keeps a state database of its own warm from the active
replica's events, so that taking over announces only what the active one had not announced.

Who runs what, in a replica's watcher child:

- the main thread (wired by watcher/main.py): `warm_slot` picks the standby's database at
  start, `stand_by` reports heartbeats until the publisher thread holds the lease, and
  `takeover_db` picks the database the new active replica goes on from;
- the publisher thread (watcher/publisher.py `_stand_by`, `_hold_lease`): `StandbyFeed`
  consumes the instance's events on the very connection it stands by on, and applies them
  to that database (`WarmState`) before acknowledging them.

Invariants:
- Two live watchers never share a state database: a standby holds its database's watcher
  lock (run_lock.replica_slot) from its start to its exit, as an active replica does.
- A standby's database holds only what the active replica announced: what its outbox held
  when the standby started goes into its in-flight window (warm_slot says why), and while
  standing by the feed never writes to the outbox.  So at takeover the reconcile against
  the disk finds exactly what the active one had not announced (its unsent events
  included) and hashes nothing else.
- What the active replica published but may not have seen confirmed reached this
  standby's queue and was applied, so the reconcile would never announce it again: the
  feed keeps the raw events of the in-flight window (standby_window.py, a table of the
  same database, written in the transaction that applies them) until the active replica's
  settled marker says they were confirmed, and at takeover moves them to the outbox (same
  bytes, same message ids: consumers deduplicate) before the pipeline announces anything.
  Events the active replica had published are repeated only from that window: none after
  a quiet moment of an active replica that sends the marker.
- Applying is idempotent (a version is set, a path forgotten or renamed): a delivery is
  acknowledged only after its change is committed, and one applied twice changes nothing.

The feed's queue: a headers exchange `multiwatch.standby.<instance_id>` (not durable,
auto-deleted) is bound to the events exchange for every routing key, and the standby's
private queue (exclusive, auto-deleted, `multiwatch.standby.<instance_id>.<random>`) to it
on the header `instance_id` (and to `amq.direct`, key `multiwatch.standby.<instance_id>`,
for the settled marker: standby_window.py).  The broker filters, so a standby receives its
own instance's events only (filtering in the client would send every standby of a fleet
every instance's events), and an instance's events are routed to its own standby only.
The cost: while a standby is warm, an event whose routing key no consumer binds still
reaches the standby's queue, so the active replica does not hold it as unroutable
(README, Replicas).
With the embedded spool there is no feed: replicas share the state_dir, and the new active
replica goes on from the instance's own state.db.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from multiwatch.replica_slots import slot_db_path
from multiwatch.status_view import Heartbeat
from multiwatch.watcher.spec import Report
from multiwatch.watcher.standby_feed import StandbyFeed
from multiwatch.watcher.state import StateStore, state_db_path

log = logging.getLogger(__name__)

# A cold takeover waits this long for the previous holder's state database (its process
# is exiting) before taking a slot of its own.
PREVIOUS_HOLDER_EXIT_SECONDS = 2.0
SLOT_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class WarmSlot:
    """The state database a standby keeps warm, and the watcher lock that makes it its own
    (held until the process exits, like watcher.lock)."""

    slot: int
    fd: int
    path: str


replica_db_path = slot_db_path  # slot 0: the instance's own state.db; n: state.<n>.db


def warm_slot(state_dir: str, instance_id: str, *, embedded: bool) -> WarmSlot | None:
    """The database this standby keeps warm: the first free slot (None with the embedded
    spool, or when every slot is held: it then stands by cold, as a new replica would).

    What its outbox holds goes into its in-flight window when the feed first opens the
    database (WarmState): events that a replica that has since lost the lease recorded and
    did not see confirmed, or that a new active replica took from its window and stopped
    before publishing.  Such an event either reached the current active replica's feed,
    which re-announced it from its own window at its takeover, or did not, and then that
    replica's reconcile finds the file's state on disk; but that replica may fail before
    publishing it, so it is kept, as received now: the active replica's settled marker
    (its re-announcements confirmed) or the window's time bound lets go of it.  Left in
    the outbox, it would go out at this replica's next takeover after the announcements
    made since, stale and out of order (a file's discovery after its deletion)."""
    from multiwatch.supervisor.run_lock import replica_slot

    if embedded:
        return None
    taken = replica_slot(state_dir, instance_id)
    if taken is None:
        log.warning("every state database of this instance is held by other watchers; "
                    "standing by without warm state (a takeover announces every file again)")
        return None
    slot, fd = taken
    path = replica_db_path(state_dir, instance_id, slot)
    store = StateStore(path)
    try:
        tracked = store.tracked_count()
    finally:
        store.close()
    log.info("standing by with a state database of its own", extra={
        "slot": slot, "path": path, "files_tracked": tracked})
    return WarmSlot(slot, fd, path)


def takeover_db(state_dir: str, instance_id: str, warm: WarmSlot | None,
                hold_instance: Callable[[], bool]) -> str | None:
    """The state database of a replica that now holds the lease: its warm one; else (cold)
    the first free slot (run_lock.replica_slot; its descriptor is kept, never closed); with
    every slot held, the instance's own once free, as a lone watcher waits (None: stopped)."""
    from multiwatch.supervisor.run_lock import replica_slot, take_slot

    if warm is not None:
        if warm.slot != 0:
            fd = take_slot(state_dir, instance_id, 0)
            if fd is None:
                log.warning("the instance's state database is still held by the replica that "
                            "was active before (frozen, or cut off from the broker); going on "
                            "from this replica's own, kept warm", extra={"slot": warm.slot})
            else:  # the previous active replica exited: its unsent events are files this
                os.close(fd)  # warm state lacks, which the reconcile finds on disk
        return warm.path
    # The lease is free once the previous holder is gone, a moment before its process has
    # let go of its state database: give it that moment before taking another slot.
    deadline = time.monotonic() + PREVIOUS_HOLDER_EXIT_SECONDS
    while (fd := take_slot(state_dir, instance_id, 0)) is None and time.monotonic() < deadline:
        time.sleep(SLOT_POLL_SECONDS)
    taken = (0, fd) if fd is not None else replica_slot(state_dir, instance_id)
    if taken is None:
        return state_db_path(state_dir, instance_id) if hold_instance() else None
    slot, _fd = taken
    if slot:
        log.warning("the instance's state database is still held by the replica that was "
                    "active before (frozen, or cut off from the broker); using one of this "
                    "replica's own", extra={"slot": slot})
    return replica_db_path(state_dir, instance_id, slot)


class _Parent(Protocol):
    def send(self, kind: Report, payload: Any) -> bool: ...
    def alive(self) -> bool: ...


class _Stop(Protocol):
    requested: bool

    def wait(self, timeout: float) -> bool: ...


class _Beat(Protocol):
    idle_seconds: float

    def due(self) -> float: ...
    def maybe_send(self) -> None: ...


class _Publisher(Protocol):
    """What the main thread reads of watcher/publisher.py's Publisher."""

    role: Any
    stats: Any
    feed: StandbyFeed | None

    def failure(self, now: float) -> str: ...


def stand_by(parent: _Parent, stop: _Stop, publisher: _Publisher, heartbeat: _Beat,
             exit_publisher_failed: int) -> int | None:
    """A replica without the lease: reporting its role (and warmth), until the publisher
    thread holds the lease (None) or the watcher must end (its exit status).  Nothing is
    watched or hashed meanwhile; the thread's own wait is Publisher._stand_by."""
    parent.send(Report.READY, {"pid": os.getpid()})
    while not stop.requested and parent.alive():
        if publisher.role.promoted.is_set():
            return None
        if problem := publisher.failure(time.monotonic()):
            log.error("the publisher stopped working; exiting so the watcher is restarted",
                      extra={"reason": problem})
            parent.send(Report.EXITING, {"reason": problem})
            return exit_publisher_failed
        heartbeat.maybe_send()
        # The publisher nudges `stop` when the role changes; its failure is seen within a
        # heartbeat.
        stop.wait(max(0.0, min(heartbeat.due() - time.monotonic(), heartbeat.idle_seconds)))
    return 0


def standby_snapshot(publisher: _Publisher, errors: int) -> Heartbeat:
    """A standby's heartbeat: its role, broker link and, when it keeps a database warm,
    whether it has caught up and how far behind it is."""
    stats = publisher.stats
    beat: Heartbeat = {"role": publisher.role.role.value, "broker_connected": stats.connected,
                       "publish_failures": stats.failures, "last_error": stats.last_error,
                       "problem": stats.problem, "errors": errors, "observer": "none"}
    feed = publisher.feed
    if feed is not None:
        beat["standby_warm"] = feed.stats.warm
        beat["standby_lag_events"] = feed.stats.lag_events
        beat["files_tracked"] = feed.stats.tracked
    return beat
