"""The publisher thread: the only thread that touches the broker connection.

It publishes the durable outbox in order, in batches with pipelined publisher confirms:
a batch is written (always `mandatory`), then confirms are awaited (bounded by
confirm_timeout), then what the broker confirmed and routed is deleted from the outbox.

- No confirm (a dead, frozen or blocked broker): the connection is dropped without a
  polite close and the next URL is tried after capped exponential backoff with full
  jitter; the unconfirmed events are published again (at-least-once, with message ids
  that let consumers drop the duplicates).
- Returned (unroutable) or nacked: the connection is fine, so it is kept.  The event is
  held at the head of the outbox and published alone, with backoff, until the broker
  routes it; the events behind it wait (held_event.py).

Every wait has a deadline, and before each the thread records when it expects to be back
(`progress`): the watcher's main loop restarts the watcher if the thread dies or misses
that deadline.  While idle the thread services AMQP heartbeats itself.

Replicas (roster `ha`, watcher/lease.py): each connection first takes the instance's lease
on itself, and nothing is published on a connection that does not hold it.  Another
replica holding it is not a failure (no warning, no backoff): this one stands by on its
connection and tries again every `lease_retry_seconds` (`_stand_by`), meanwhile applying
the active replica's events to its own state database (watcher/standby.py `feed`); its
outbox is opened
only once the main loop, woken by `role`, has chosen the state database (`attach`).  A
connection announces its role in its client properties, so one that turns out to be in the
other role is closed and replaced at once (`_Relabel`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import sqlite3
import threading
import time

from kombu import Connection, Producer

from multiwatch.broker import (
    BrokerLink,
    close_connection,
    connect_budget,
    drop_connection,
    exchange_for,
    queue_for,
)
from multiwatch.config import BrokerConfig
from multiwatch.watcher.amqp_io import (
    heartbeat_service_interval,
    service_heartbeat,
)
from multiwatch.watcher.batches import BatchSender
from multiwatch.watcher.confirms import Confirms
from multiwatch.watcher.held_event import HeldEvent
from multiwatch.watcher.lease import Lease, Role, RoleState
from multiwatch.watcher.outbox import OutboxGauge
from multiwatch.watcher.publisher_failures import (
    BlockedAlarm,
    failure_extra,
    failure_message,
    failure_reason,
)
from multiwatch.watcher.publisher_health import Progress, PublisherStats
from multiwatch.watcher.standby_feed import StandbyFeed
from multiwatch.watcher.state import BUSY_TIMEOUT_SECONDS, DurableOutbox
from multiwatch.watcher.stats import LatencyHistogram

log = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 0.5
BATCH_SIZE = 256
# Channel open, exchange and queue declare, confirm_select: one reply each.
SETUP_READS = 4
# A polite close waits this long for Close-Ok (a healthy broker answers at once).
CLOSE_WAIT_SECONDS = 2.0
# While waiting for confirms, look at a stop request at least this often.
STOP_POLL_SECONDS = 0.25


def replica_heartbeat_seconds(configured: int) -> int:
    """The AMQP heartbeat a replica asks for: half of `heartbeat_seconds` (at least 1; 0
    stays off).  The broker drops a silent peer two to three of its heartbeats after the
    last frame, so a frozen or cut-off active replica loses its lease within 1 to 1.5 x
    heartbeat_seconds, and a standby takes over within 2 x heartbeat_seconds +
    lease_retry_seconds (README, Replicas)."""
    return max(1, configured // 2) if configured > 0 else 0


class _Relabel(Exception):
    """The connection announces the other role: close it and connect again at once."""


class _Fatal(Exception):
    """The thread cannot go on (the outbox cannot be opened): the watcher restarts."""


class Publisher(threading.Thread):
    """Drains the outbox to the broker; stop() flushes within a deadline."""

    def __init__(self, *, broker: BrokerConfig, state_dir: str, instance_id: str,
                 db_path: str | None, gauge: OutboxGauge, lease: Lease | None = None,
                 lease_retry_seconds: float = 2.0) -> None:
        """`lease` (replicas): publish only while holding it; `db_path` is then None until
        attach() names the state database."""
        super().__init__(name=f"publisher-{instance_id}", daemon=True)
        self._broker = broker
        self._state_dir = state_dir
        self._connection_name = f"file_watcher_{instance_id}"
        self._instance_id = instance_id
        self._db_path = db_path
        self._outbox: DurableOutbox | None = None
        self._attached = threading.Event()
        self._lease = lease
        self._lease_retry_seconds = lease_retry_seconds
        # A standby's feed (watcher/standby.py): consumed while standing by, set before start.
        self.feed: StandbyFeed | None = None
        self.role = RoleState(replicated=lease is not None)
        self._labelled = ""  # the role the current connection announces
        self._gauge = gauge
        self._stop_deadline: float | None = None
        self._wake = threading.Event()
        self.stats = PublisherStats()
        self._blocked = BlockedAlarm(self.stats)
        self._held = HeldEvent(self.stats, gauge, broker.reconnect_max_seconds)
        self.latency = LatencyHistogram()
        self.progress = Progress()
        self._batches = BatchSender(broker, gauge, self.stats, self.latency, self._held,
                                    stop_deadline=lambda: self._stop_deadline,
                                    expect=self.progress.expect)
        # Set by the main loop once the startup scan is complete (its findings are in the
        # outbox); until then no settled marker is sent (see _serve).
        self.reconciled = threading.Event()

    def attach(self, db_path: str) -> None:
        """The state database whose outbox to publish (a replica's, once it is active)."""
        self._db_path = db_path
        self._attached.set()

    def stop(self, deadline: float) -> None:
        """Finish publishing the outbox, or give up at time.monotonic() deadline."""
        self._stop_deadline = deadline
        self._wake.set()
        self._gauge.new_events.set()

    def failure(self, now: float) -> str:
        """Why this publisher no longer works ("" while it does): its thread ended, or it
        missed the deadline it set itself for its current wait."""
        if self._stop_deadline is not None or self.ident is None:
            return ""
        if not self.is_alive():
            return f"publisher thread ended: {self.stats.fatal or 'no reason recorded'}"
        return self.progress.stuck(now)

    def _stopping_now(self) -> bool:
        deadline = self._stop_deadline
        if deadline is None:
            return False
        # A held event will not go through in the seconds left: stop at once.
        return time.monotonic() >= deadline or self._gauge.depth == 0 or self._held.active

    # ---------------------------------------------------------------- the thread

    def run(self) -> None:
        try:
            if self._db_path is not None:  # a lone watcher: the outbox first, as it was
                self._attached.set()
                self._open_outbox()
            self._run()
        except _Fatal:
            pass
        except Exception as exc:  # noqa: BLE001 - reported through failure(): the watcher restarts
            self._died("publisher crashed", exc)
        finally:
            if self._outbox is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._outbox.close()
            if self._lease is not None:
                self._lease.close()
        if self._gauge.depth and not self.stats.fatal:
            log.warning("stopped with events still unconfirmed; they are kept in the outbox "
                        "and sent after the next start", extra={"outbox_depth": self._gauge.depth})

    def _died(self, what: str, exc: Exception) -> None:
        self.stats.connected = False
        self.stats.fatal = f"{what}: {type(exc).__name__}: {exc}"
        log.error("%s; the watcher restarts", what, exc_info=True,
                  extra={"error": self.stats.fatal, "outbox_depth": self._gauge.depth})

    def _open_outbox(self) -> DurableOutbox:
        """The outbox of the state database named by db_path; _Fatal if it cannot be opened."""
        if self._outbox is None:
            self.progress.expect(BUSY_TIMEOUT_SECONDS, "opening the outbox")
            try:
                self._outbox = DurableOutbox(str(self._db_path))
            except Exception as exc:  # (any error: the watcher restarts)
                self._died("cannot open the outbox in the state database", exc)
                raise _Fatal from exc
        return self._outbox

    def _run(self) -> None:
        retry_delay = FIRST_RETRY_SECONDS
        replicated = self._lease is not None and not self._broker.embedded
        broker = self._broker
        if replicated:
            broker = dataclasses.replace(
                broker, heartbeat_seconds=replica_heartbeat_seconds(broker.heartbeat_seconds))
        link = BrokerLink(broker, self._state_dir, connection_name=self._connection_name,
                          on_blocked=self._blocked.on_blocked,
                          on_unblocked=self._blocked.on_unblocked,
                          stopping=lambda: self._stop_deadline is not None,
                          properties=(lambda: {"role": self._labelled}) if replicated else None)
        while not self._stopping_now():
            connection: Connection | None = None
            failure: Exception | None = None
            self.progress.expect(connect_budget(self._broker), "connecting to the broker")
            self._labelled = self.role.label()
            try:
                connection = link.connect()  # each URL once, in turn (cluster failover)
                self._serve(connection, link.where)
            except (_Relabel, _Fatal):
                pass  # (_Fatal: run() ends the thread once the connection is closed)
            except Exception as exc:  # noqa: BLE001 - any broker or socket failure: back off, retry
                failure = exc
            self.stats.connected = False
            self.stats.blocked = ""
            self.role.dropped()  # a lease held on that connection ended with it
            if connection is not None:
                self._close(connection, polite=failure is None)
            if self.stats.fatal:
                raise _Fatal
            if failure is None:
                retry_delay = FIRST_RETRY_SECONDS
                continue
            self.stats.failures += 1
            self.stats.last_error = failure_reason(failure, link)
            if self._stop_deadline is not None:
                # Stopping: the broker just failed, so the outbox will not drain before the
                # deadline; it is kept for the next start (logged once, by run()).
                log.warning("broker unavailable while stopping", extra=failure_extra(
                    failure, link, self.stats, self._gauge, None))
                return
            delay = random.uniform(0, retry_delay)
            log.warning(failure_message(failure), extra=failure_extra(
                failure, link, self.stats, self._gauge, delay))
            retry_delay = min(retry_delay * 2, self._broker.reconnect_max_seconds)
            self.progress.expect(delay, "waiting to reconnect")
            # stop() sets the event to cut this wait short; it is never set otherwise, and
            # the loop's condition then ends the thread, so it needs no clearing.
            self._wake.wait(delay)

    def _close(self, connection: Connection, *, polite: bool) -> None:
        """A healthy connection is closed politely (bounded); a failed one is dropped."""
        self.progress.expect(CLOSE_WAIT_SECONDS, "closing the broker connection")
        if self._broker.embedded:
            with contextlib.suppress(Exception):
                connection.release()  # the filesystem spool: nothing to wait for
        elif polite:
            close_connection(connection, within=CLOSE_WAIT_SECONDS)
        else:
            drop_connection(connection)

    # ---------------------------------------------------------------- one connection

    def _serve(self, connection: Connection, where: str) -> None:
        self.progress.expect(SETUP_READS * self._broker.connect_timeout_seconds,
                             "opening a channel and declaring the exchange")
        channel = connection.channel()
        exchange = exchange_for(self._broker)(channel)
        exchange.declare()
        queue = queue_for(self._broker)
        if queue is not None:
            queue(channel).declare()
        confirms: Confirms | None = None
        if not self._broker.embedded:
            confirms = Confirms()
            channel.confirm_select()
            channel.events["basic_ack"].add(confirms.on_ack)
            channel.events["basic_nack"].add(confirms.on_nack)
            channel.events["basic_return"].add(confirms.on_return)
        producer = Producer(channel, exchange=exchange)
        self.stats.connected = True
        log.info("connected to broker", extra={
            "broker": "embedded" if self._broker.embedded else where,
            "connection_name": self._connection_name, "outbox_depth": self._gauge.depth})
        service_every = heartbeat_service_interval(connection)
        if self._lease is not None and not self._hold_lease(connection, service_every):
            return  # asked to stop before holding it
        outbox = self._outbox or self._wait_for_outbox(connection, service_every)
        if outbox is None:
            return  # asked to stop
        next_service = 0.0
        settled = False  # the settled marker went out since the last batch (replicas)
        while not self._stopping_now():
            now = time.monotonic()
            if confirms is not None and now >= next_service:
                self.progress.expect(self._broker.confirm_timeout_seconds, "servicing heartbeats")
                service_heartbeat(connection)
                next_service = now + service_every
            wake_at = next_service if confirms is not None else now + service_every
            retry_at = self._held.retry_at()
            if retry_at is not None and now < retry_at:
                self._held.report(now)
                self._wait(self._wake, min(retry_at, wake_at) - now, "holding an event")
                continue
            # The gauge counts committed rows: an empty outbox needs no query.
            size = 1 if retry_at is not None else BATCH_SIZE
            batch = outbox.peek(size) if self._gauge.depth else []
            if not batch:
                # Only after this replica's startup reconcile: a replica that just took
                # over has not yet published what it found of the failed one's events,
                # and a standby that empties its window on this marker could then lose them.
                if (not settled and confirms is not None and self._lease is not None
                        and self.reconciled.is_set()):
                    self.progress.expect(self._broker.confirm_timeout_seconds,
                                         "publishing the settled marker")
                    self._batches.settled(connection, producer.channel, confirms,
                                          self._instance_id)
                    settled = True  # once per drain, whatever the outcome
                self._wait(self._gauge.new_events, wake_at - now, "waiting for events")
                self._gauge.new_events.clear()
                # Rows `multiwatch resync` added from its own process.
                if (resynced := outbox.take_resynced())[0]:
                    self._gauge.added(*resynced)
                continue
            # Writing and confirms are bounded by confirm_timeout each; the outbox delete
            # by sqlite's busy timeout.
            self.progress.expect(2 * self._broker.confirm_timeout_seconds + BUSY_TIMEOUT_SECONDS,
                                 "publishing")
            settled = False
            if confirms is None:
                self._batches.spooled(producer, batch, outbox)
            else:
                self._batches.confirmed(connection, producer, confirms, batch, outbox)

    # ---------------------------------------------------------------- replicas (ha)

    def _hold_lease(self, connection: Connection, service_every: float) -> bool:
        """Take the lease on this connection, or stand by on it until it is free: True once
        held (publishing may start), False once asked to stop.  _Relabel when the
        connection announces the other role."""
        assert self._lease is not None
        relabel = not self._broker.embedded  # (the spool has no client properties)
        while self._stop_deadline is None:
            self.progress.expect(SETUP_READS * self._broker.connect_timeout_seconds,
                                 "taking the lease")
            if self._lease.take(connection):
                if self.feed is not None:  # the last events of the previous active replica
                    self.feed.finish(connection)
                if relabel and self._labelled != Role.ACTIVE.value:
                    self.role.won_unlabelled()
                    self._lease.let_go(connection)
                    raise _Relabel(Role.ACTIVE.value)
                self.role.took()
                return True
            self.role.refused()
            if relabel and self._labelled != Role.STANDBY.value:
                raise _Relabel(Role.STANDBY.value)
            self._stand_by(connection, service_every)
        return False

    def _stand_by(self, connection: Connection, service_every: float) -> None:
        """Where a standby spends its time: lease_retry_seconds between two tries of the
        lease, servicing the connection's heartbeats (a stop request ends it at once), and
        keeping its state database warm from the active replica's events (`feed`).
        Not a failure: nothing is counted or logged."""
        until = time.monotonic() + self._lease_retry_seconds
        if self.feed is not None and not self._broker.embedded:
            self.feed.serve(connection, until, service_every,
                            stopping=lambda: self._stop_deadline is not None)
            return
        while self._stop_deadline is None:
            now = time.monotonic()
            if now >= until:
                return
            if not self._broker.embedded:
                self.progress.expect(self._broker.confirm_timeout_seconds, "servicing heartbeats")
                service_heartbeat(connection)
            self._wait(self._wake, min(until - now, service_every), "standing by")

    def _wait_for_outbox(self, connection: Connection,
                         service_every: float) -> DurableOutbox | None:
        """Holding the lease, wait for the main loop to choose the state database (attach);
        None if asked to stop first."""
        while not self._attached.is_set():
            if self._stop_deadline is not None:
                return None
            if not self._broker.embedded:
                self.progress.expect(self._broker.confirm_timeout_seconds, "servicing heartbeats")
                service_heartbeat(connection)
            self._wait(self._attached, min(service_every, STOP_POLL_SECONDS),
                       "waiting for the state database")
        return self._open_outbox()

    def _wait(self, event: threading.Event, seconds: float, doing: str) -> None:
        seconds = max(0.0, seconds)
        self.progress.expect(seconds, doing)
        event.wait(seconds)
