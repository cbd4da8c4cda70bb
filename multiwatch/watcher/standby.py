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
- A standby's database holds only what the active replica announced: its outbox is emptied
  when the standby starts (warm_slot says why that loses nothing), and while standing by
  the feed never writes to the outbox.  So at takeover the reconcile against the disk
  finds exactly what the active one had not announced (its unsent events included) and
  hashes nothing else.
- What the active replica published but may not have seen confirmed reached this
  standby's queue and was applied, so the reconcile would never announce it again: the
  feed keeps the raw events of the in-flight window (InFlightWindow) and, at takeover,
  appends them to the outbox (same bytes, same message ids: consumers deduplicate) before
  the pipeline announces anything.  Events the active replica had published are repeated
  only from that window.
- Applying is idempotent (a version is set, a path forgotten or renamed): a delivery is
  acknowledged only after its change is committed, and one applied twice changes nothing.

The feed's queue: a headers exchange `multiwatch.standby.<instance_id>` (not durable,
auto-deleted) is bound to the events exchange for every routing key, and the standby's
private queue (exclusive, auto-deleted, `multiwatch.standby.<instance_id>.<random>`) to it
on the header `instance_id`.  The broker filters, so a standby receives its own instance's
events only (filtering in the client would send every standby of a fleet every instance's
events), and an instance's events are routed to its own standby only.  The cost: while a
standby is warm, an event whose routing key no consumer binds still reaches the standby's
queue, so the active replica does not hold it as unroutable (README, Replicas).
With the embedded spool there is no feed: replicas share the state_dir, and the new active
replica goes on from the instance's own state.db.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import amqp
from kombu import Connection

from multiwatch.config import BrokerConfig
from multiwatch.status_view import Heartbeat
from multiwatch.watcher.hashing import FileVersion, Hashed
from multiwatch.watcher.message import (
    FILE_DELETED,
    FILE_MOVED,
    RESYNC_HEADER,
    ROUTING_KEYS,
    Event,
)
from multiwatch.watcher.spec import Report
from multiwatch.watcher.state import StateStore, state_db_path

log = logging.getLogger(__name__)

STANDBY_PREFIX = "multiwatch.standby."
# Deliveries the broker may send before the first is acknowledged (one commit's worth).
PREFETCH = 2000
# A batch of changes is committed when it reaches this size or this age.
APPLY_BATCH = 1000
APPLY_EVERY_SECONDS = 0.2
# An idle read returns at least this often, so a stop request is seen at once.
STOP_POLL_SECONDS = 0.25
# At takeover, the events still in the standby's queue are applied for at most this long
# (the previous active replica is gone: the queue only empties).
FINISH_SECONDS = 5.0
# A cold takeover waits this long for the previous holder's state database (its process
# is exiting) before taking a slot of its own.
PREVIOUS_HOLDER_EXIT_SECONDS = 2.0
SLOT_POLL_SECONDS = 0.05
# Replies the feed waits for when declaring its queue (channel, exchange, queue, two
# binds, qos, consume), each bounded by the connection's read timeout.
DECLARE_READS = 7


# -------------------------------------------------------------------- one event → one change


@dataclass(frozen=True)
class Change:
    """What one announced event does to the tracked files."""

    relative_path: str
    hashed: Hashed | None  # the announced version; None: the path is forgotten
    old_relative_path: str | None = None  # a rename: this path is forgotten first


def change_of(body: bytes | str, instance_id: str) -> Change | None:
    """The change an event body describes, or None if it is not a usable event of this
    instance (another instance's, not JSON, or without the version fields an older
    multiwatch did not send: that file is then found by the takeover's reconcile).
    py-amqp hands a body over decoded (str) when its content_encoding says utf-8."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("instance_id") != instance_id:
        return None
    event_type = doc.get("event_type")
    info = doc.get("file_info")
    if event_type not in ROUTING_KEYS or not isinstance(info, dict):
        return None
    relative = info.get("relative_path")
    if not _inside(relative):
        return None
    assert isinstance(relative, str)
    if event_type == FILE_DELETED:
        return Change(relative, None)
    try:
        hashed = Hashed(version=FileVersion(size=int(info["size_bytes"]),
                                            mtime_ns=int(info["mtime_ns"]),
                                            inode=int(info["inode"])),
                        sha256=str(info["sha256_hash"]), xxh128=str(info["xxh128_hash"]),
                        ctime_ns=int(info["ctime_ns"]))
    except (KeyError, TypeError, ValueError):
        return None
    old = info.get("old_relative_path") if event_type == FILE_MOVED else None
    if old is not None and not _inside(old):
        return None
    return Change(relative, hashed, old)


def _inside(relative: object) -> bool:
    """A path below the watched directory, as the pipeline records them."""
    return (isinstance(relative, str) and bool(relative) and "\0" not in relative
            and not relative.startswith("/")
            and not any(part in ("", ".", "..") for part in relative.split("/")))


class WarmState:
    """The standby's state database, written by the publisher thread (its own connection)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._store: StateStore | None = None

    def apply(self, changes: Sequence[Change]) -> None:
        """Commit the changes in one transaction, in order (the last one per path wins)."""
        files: dict[str, Hashed | None] = {}
        for change in changes:
            if change.old_relative_path is not None:
                files[change.old_relative_path] = None
            files[change.relative_path] = change.hashed
        if files:
            self._open().commit(files, [])

    def tracked(self) -> int:
        return self._open().tracked_count()

    def reannounce(self, events: Sequence[Event]) -> None:
        """Append the in-flight window to the outbox, in one transaction (at takeover: the
        outbox is empty, so they go out before anything the pipeline announces)."""
        if events:
            self._open().commit({}, events)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def _open(self) -> StateStore:
        if self._store is None:
            self._store = StateStore(self.path)
        return self._store


# -------------------------------------------------------------------- the in-flight window

# The in-flight window's bounds.  Its length in time (in_flight_window_seconds) follows
# from the broker settings; its size is bounded in events and bytes, keeping the newest:
# the active replica publishes a batch (publisher.BATCH_SIZE events, from the head of its
# outbox) only once the previous batch's confirms are settled, so the events it may not
# have seen confirmed are the last ones it published, never older ones.  Dropping the
# oldest could only repeat fewer confirmed events; dropping the newest could lose files.
WINDOW_MAX_EVENTS = 2048  # 8 batches: an event nacked behind a held one rides a few batches
WINDOW_MAX_BYTES = 8 * 1024 * 1024
WINDOW_KEEP_EVENTS = 256  # publisher.BATCH_SIZE: never let go for the byte bound
# A peer that stops answering is dropped by the broker after 2 to 3 missed heartbeats.
WINDOW_HEARTBEATS = 3
WINDOW_SLACK_SECONDS = 5.0  # the standby's own stalls (a commit, a lease try)


def in_flight_window_seconds(broker: BrokerConfig, lease_retry_seconds: float) -> float:
    """How long after the active replica's last publish one of its events may still be
    unconfirmed when the lease passes: it waits for a confirm up to confirm_timeout (then
    resets the connection, which frees the lease), retries a held event at least every
    reconnect_max; a connection gone silent (frozen, cut off) frees the lease once the
    broker has missed WINDOW_HEARTBEATS heartbeats; the standby tries the lease every
    lease_retry.  Without heartbeats a silent connection is dropped only by TCP: no bound
    in time (the window is bounded by its size alone)."""
    if broker.heartbeat_seconds <= 0:
        return float("inf")
    return (broker.confirm_timeout_seconds + broker.reconnect_max_seconds
            + WINDOW_HEARTBEATS * broker.heartbeat_seconds + lease_retry_seconds
            + WINDOW_SLACK_SECONDS)


def event_of(message: amqp.Message, instance_id: str) -> Event | None:
    """The outbox row an event delivered to the standby was published from (the publisher
    sends nothing else: watcher/amqp_io.py publish_frames), or None if it is not one of
    this instance's events."""
    properties = message.properties
    headers = properties.get("application_headers") or {}
    event_type = headers.get("event_type")
    message_id = properties.get("message_id")
    routing_key = message.delivery_info.get("routing_key")
    if (headers.get("instance_id") != instance_id or event_type not in ROUTING_KEYS
            or not isinstance(message_id, str) or not message_id
            or routing_key != ROUTING_KEYS[event_type]):
        return None
    body = message.body
    return Event(instance_id=instance_id, event_type=str(event_type),
                 routing_key=str(routing_key), message_id=message_id,
                 correlation_id=str(properties.get("correlation_id") or ""),
                 body=body.encode("utf-8") if isinstance(body, str) else bytes(body),
                 resync=bool(headers.get(RESYNC_HEADER, False)))


class InFlightWindow:
    """The raw events the active replica published last (the publisher thread's feed).

    A run of events ends when nothing came for `seconds`: a replica with an event not yet
    confirmed publishes again within that time (a batch after a reset, a held event's
    retry), so what came before such a quiet spell was confirmed.  At takeover the window
    is the current run, unless it ended more than `seconds` ago (then it is empty).  An
    event received again (a retry, a redelivery) keeps its first place: the active replica
    always publishes from the head of its outbox, so first receipts are in outbox order."""

    def __init__(self, seconds: float, *, max_events: int = WINDOW_MAX_EVENTS,
                 max_bytes: int = WINDOW_MAX_BYTES, keep: int = WINDOW_KEEP_EVENTS) -> None:
        self.seconds = seconds
        self._max_events, self._max_bytes, self._keep = max_events, max_bytes, keep
        self._events: OrderedDict[str, Event] = OrderedDict()
        self._bytes = 0
        self._last = -float("inf")
        self.let_go = 0  # the run's oldest events let go for the bounds

    def __len__(self) -> int:
        return len(self._events)

    def add(self, event: Event, now: float) -> None:
        if now - self._last > self.seconds:
            self._clear()
        self._last = now
        if event.message_id in self._events:
            return
        self._events[event.message_id] = event
        self._bytes += len(event.body)
        while len(self._events) > self._max_events or (
                self._bytes > self._max_bytes and len(self._events) > self._keep):
            _id, oldest = self._events.popitem(last=False)
            self._bytes -= len(oldest.body)
            if not self.let_go:
                log.warning("the in-flight window is full; letting go of its oldest events "
                            "(the active replica had their confirms before publishing the "
                            "newer ones)", extra={"events": len(self._events),
                                                  "bytes": self._bytes})
            self.let_go += 1

    def take(self, now: float) -> list[Event]:
        """The window's events, oldest first, at takeover; the window is empty after."""
        events = list(self._events.values()) if now - self._last <= self.seconds else []
        self._clear()
        return events

    def _clear(self) -> None:
        self._events.clear()
        self._bytes = 0
        self.let_go = 0


# -------------------------------------------------------------------- the publisher thread


@dataclass
class FeedStats:
    """Written by the publisher thread, read by the main thread's heartbeat (plain values)."""

    warm: bool = False  # consuming, and the queue was found drained once since declared
    lag_events: int = 0  # waiting in the queue or received and not applied, last measured
    applied: int = 0  # events applied since the watcher started
    tracked: int = 0  # files in the standby's database, last measured


class StandbyFeed:
    """Consumes the instance's events on the standby's connection and applies them.

    Only the publisher thread calls it: `serve` while standing by (instead of a plain wait
    between two tries of the lease), `finish` once the lease is taken."""

    def __init__(self, *, instance_id: str, exchange: str, db_path: str,
                 expect: Callable[[float, str], None], reply_seconds: float,
                 window_seconds: float) -> None:
        self._instance_id = instance_id
        self._events_exchange = exchange
        self._exchange = f"{STANDBY_PREFIX}{instance_id}"
        self._expect = expect  # Publisher.progress.expect: the deadline of each wait
        self._reply_seconds = reply_seconds
        self.state = WarmState(db_path)
        self.stats = FeedStats()
        self.window = InFlightWindow(window_seconds)
        self._connection: Connection | None = None  # the one the queue was declared on
        self._channel: amqp.Channel | None = None
        self._queue = ""
        self._consumer_tag = ""
        self._pending: list[tuple[int, Change | None]] = []
        self._first_pending_at = 0.0

    def serve(self, connection: Connection, until: float, service_every: float,
              stopping: Callable[[], bool]) -> None:
        """Consume and apply until time.monotonic() `until` or a stop request, servicing the
        connection's heartbeats.  Declares the queue on a connection it has not seen."""
        if self._connection is not connection:
            self._declare(connection)
        next_service = 0.0
        try:
            while not stopping():
                now = time.monotonic()
                if now >= until:
                    break
                if now >= next_service:
                    connection.heartbeat_check()
                    next_service = now + service_every
                wait = min(until, next_service, now + STOP_POLL_SECONDS) - now
                if self._pending:
                    wait = min(wait, self._first_pending_at + APPLY_EVERY_SECONDS - now)
                idle = not self._read(connection, max(wait, 0.0))
                if self._pending and (idle or len(self._pending) >= APPLY_BATCH or
                                      time.monotonic() >= self._first_pending_at
                                      + APPLY_EVERY_SECONDS):
                    self._apply()
                elif idle and not self._pending and wait > 0:
                    self._caught_up()
            self._apply()
            self._measure()
        except Exception:
            with contextlib.suppress(Exception):
                self._apply(ack=False)  # what was received is true: keep it
            self._forget_connection()
            raise

    def finish(self, connection: Connection) -> None:
        """The lease is held: apply what is still queued (the previous active replica's
        last events), bounded by FINISH_SECONDS, delete the queue, append the in-flight
        window to the outbox (last: if deleting fails, the window is kept for the next
        takeover) and close the database for the pipeline to open."""
        if self._connection is connection and self._channel is not None:
            deadline = time.monotonic() + FINISH_SECONDS
            while time.monotonic() < deadline:
                if not self._read(connection, min(APPLY_EVERY_SECONDS,
                                                  deadline - time.monotonic())):
                    self._apply()
                    if self._measure() == 0:
                        break
                elif len(self._pending) >= APPLY_BATCH:
                    self._apply()
            self._apply()
            self._expect(2 * self._reply_seconds, "deleting the standby's queue")
            # Its own events must not pile up in a queue nobody reads; the exchange goes
            # with its last queue (auto-delete).  Cancelled first: a queue deleted under
            # its consumer is a Basic.Cancel from the broker, which py-amqp raises.
            self._channel.basic_cancel(self._consumer_tag)
            self._channel.queue_delete(self._queue)
            log.info("standby caught up before taking over", extra={
                "files_tracked": self.stats.tracked, "events_applied": self.stats.applied})
        let_go = self.window.let_go
        window = self.window.take(time.monotonic())
        self._expect(30.0, "re-announcing the in-flight window")  # sqlite's busy timeout
        self.state.reannounce(window)
        log.info("re-announcing the previous active replica's in-flight window (events it "
                 "may not have seen confirmed; same message ids)", extra={
                     "events": len(window), "window_seconds": self.window.seconds,
                     "let_go": let_go})
        self._forget_connection()
        self.state.close()

    def _declare(self, connection: Connection) -> None:
        self._forget_connection()
        self._expect(DECLARE_READS * self._reply_seconds, "declaring the standby's queue")
        for attempt in (1, 2):
            channel = connection.channel()
            try:
                self._declare_on(channel)
            except amqp.exceptions.NotFound:
                # Another standby's queue left just now and its exchange went with it
                # (auto-delete) between our declare and bind: declare it again.
                if attempt == 2:
                    raise
                continue
            self._connection, self._channel = connection, channel
            break
        self.stats.warm = False
        log.info("standing by warm: applying the active replica's events to this replica's "
                 "own state database", extra={"queue": self._queue, "path": self.state.path})

    def _declare_on(self, channel: amqp.Channel) -> None:
        channel.exchange_declare(self._exchange, "headers", durable=False, auto_delete=True)
        self._queue = f"{self._exchange}.{uuid.uuid4().hex[:12]}"
        channel.queue_declare(self._queue, durable=False, exclusive=True, auto_delete=True)
        channel.queue_bind(self._queue, self._exchange, routing_key="",
                           arguments={"x-match": "all", "instance_id": self._instance_id})
        channel.exchange_bind(destination=self._exchange, source=self._events_exchange,
                              routing_key="#")
        channel.basic_qos(0, PREFETCH, False)
        self._consumer_tag = str(channel.basic_consume(self._queue, callback=self._received,
                                                       no_ack=False))

    def _forget_connection(self) -> None:
        self._connection, self._channel, self._pending = None, None, []
        self.stats.warm = False

    def _received(self, message: amqp.Message) -> None:
        now = time.monotonic()
        if not self._pending:
            self._first_pending_at = now
        if (event := event_of(message, self._instance_id)) is not None:
            self.window.add(event, now)
        self._pending.append((int(message.delivery_info["delivery_tag"]),
                              change_of(message.body, self._instance_id)))

    def _read(self, connection: Connection, seconds: float) -> bool:
        """Read one frame within `seconds`: False if nothing came."""
        self._expect(seconds, "standing by (reading the active replica's events)")
        try:
            connection.drain_events(timeout=seconds)
        except TimeoutError:
            return False
        return True

    def _apply(self, *, ack: bool = True) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        changes = [change for _tag, change in pending if change is not None]
        self._expect(30.0, "applying the active replica's events")  # sqlite's busy timeout
        self.state.apply(changes)
        self.stats.applied += len(pending)
        if ack and self._channel is not None:
            # After the commit: a change lost before it is delivered again.
            self._channel.basic_ack(pending[-1][0], multiple=True)

    def _measure(self) -> int:
        """Events waiting in the queue (a passive declare), recorded with the files tracked."""
        waiting = 0
        if self._channel is not None:
            self._expect(self._reply_seconds, "measuring the standby's lag")
            waiting = int(self._channel.queue_declare(self._queue, passive=True).message_count)
        self.stats.lag_events = waiting + len(self._pending)
        self.stats.tracked = self.state.tracked()
        if self.stats.lag_events == 0 and self._channel is not None:
            self._caught_up()
        return self.stats.lag_events

    def _caught_up(self) -> None:
        if not self.stats.warm:
            self.stats.warm = True
            self.stats.lag_events = 0
            self.stats.tracked = self.state.tracked()
            log.info("standby is warm: caught up with the active replica's events",
                     extra={"files_tracked": self.stats.tracked})


# -------------------------------------------------------------------- the main thread


@dataclass(frozen=True)
class WarmSlot:
    """The state database a standby keeps warm, and the watcher lock that makes it its own
    (held until the process exits, like watcher.lock)."""

    slot: int
    fd: int
    path: str


def replica_db_path(state_dir: str, instance_id: str, slot: int) -> str:
    """Slot 0: the instance's own state.db; slot n: state.<n>.db beside it."""
    path = state_db_path(state_dir, instance_id)
    return path if slot == 0 else os.path.join(os.path.dirname(path), f"state.{slot}.db")


def warm_slot(state_dir: str, instance_id: str, *, embedded: bool) -> WarmSlot | None:
    """The database this standby keeps warm: the first free slot (None with the embedded
    spool, or when every slot is held: it then stands by cold, as a new replica would).

    Its outbox is dropped: events a replica that has since lost the lease recorded and did
    not see confirmed.  Each of them either reached the new active replica's feed, which
    applied it and re-announces it from its in-flight window (the replica that lost the
    lease published it at most a window before the takeover), or did not, and then the new
    active replica's state lacks it and its reconcile finds the file's state on disk.
    Kept, they would go out at this replica's next takeover after the announcements made
    since, stale and out of order (a file's discovery after its deletion)."""
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
        dropped = store.drop_outbox()
        tracked = store.tracked_count()
    finally:
        store.close()
    if dropped:
        log.warning("the standby's state database held events a replica that has since lost "
                    "the lease had not seen confirmed; dropped (the active replica announced "
                    "them again from its in-flight window, or its reconcile found the files' "
                    "state on disk)", extra={"events": dropped, "path": path})
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
    def send(self, kind: Report, payload: Any) -> None: ...
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
