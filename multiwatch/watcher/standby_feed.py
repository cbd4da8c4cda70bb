"""The standby's feed: the active replica's events for its instance, consumed on the very
connection the standby stands by on (publisher thread), applied to its warm state before
they are acknowledged, and handed over at takeover (standby.py's docstring: the queue, the
exchange, and why).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import amqp
from kombu import Connection

from multiwatch.watcher.message import Event
from multiwatch.watcher.standby_learning import (
    Change,
    WarmState,
    change_of,
    event_of,
    is_settled,
)
from multiwatch.watcher.standby_window import SETTLED_EXCHANGE, InFlightWindow, settled_key

log = logging.getLogger("multiwatch.watcher.standby")  # (the logger these lines always had)

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
# Replies the feed waits for when declaring its queue (channel, exchange, queue, two
# binds, qos, consume; then channel, bind and close for the settled marker), each bounded
# by the connection's read timeout.
DECLARE_READS = 10


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
        self.window = InFlightWindow(window_seconds)
        self.state = WarmState(db_path, self.window)
        self.stats = FeedStats()
        self._connection: Connection | None = None  # the one the queue was declared on
        self._channel: amqp.Channel | None = None
        self._queue = ""
        self._consumer_tag = ""
        self._pending: list[tuple[int, Change | None]] = []
        # The window's part of the pending deliveries: the events received since the last
        # settled marker among them, and whether one came (it empties the window).
        self._pending_events: list[Event] = []
        self._pending_settled = False
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
        self._expect(30.0, "re-announcing the in-flight window")  # sqlite's busy timeout
        events = self.state.reannounce()
        log.info("re-announcing the previous active replica's in-flight window (events it "
                 "may not have seen confirmed; same message ids)", extra={
                     "events": events, "window_seconds": self.window.seconds,
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
        self._bind_settled(connection)
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

    def _bind_settled(self, connection: Connection) -> None:
        """Bind the queue to the active replica's settled marker (standby_window.py), on a
        channel of its own: a broker user without permission on SETTLED_EXCHANGE gets a
        channel error, and the standby then goes on without markers (the window falls back
        to its time bound)."""
        channel = connection.channel()
        try:
            channel.queue_bind(self._queue, SETTLED_EXCHANGE,
                               routing_key=settled_key(self._instance_id))
        except amqp.exceptions.AccessRefused as exc:
            log.warning("the standby cannot bind its queue to the active replica's settled "
                        "marker; its in-flight window is bounded in time only (a takeover "
                        "may repeat up to its size)", extra={
                            "exchange": SETTLED_EXCHANGE, "error": str(exc)})
            return
        channel.close()

    def _forget_connection(self) -> None:
        self._connection, self._channel, self._pending = None, None, []
        self._pending_events, self._pending_settled = [], False
        self.stats.warm = False

    def _received(self, message: amqp.Message) -> None:
        now = time.monotonic()
        if not self._pending:
            self._first_pending_at = now
        tag = int(message.delivery_info["delivery_tag"])
        if is_settled(message, self._instance_id):
            # Everything the active replica published before the marker was confirmed
            # (the ordering argument: publisher.py _send_settled).
            self._pending_events, self._pending_settled = [], True
            self._pending.append((tag, None))
            return
        if (event := event_of(message, self._instance_id)) is not None:
            self._pending_events.append(event)
        self._pending.append((tag, change_of(message.body, self._instance_id)))

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
        events, settled = self._pending_events, self._pending_settled
        self._pending_events, self._pending_settled = [], False
        changes = [change for _tag, change in pending if change is not None]
        self._expect(30.0, "applying the active replica's events")  # sqlite's busy timeout
        self.state.apply(changes, events, settled=settled)
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
