"""The publisher thread: the only thread that touches the broker connection.

It publishes the durable outbox in order, in batches with pipelined publisher confirms:
a batch is written, then confirms are awaited (bounded by confirm_timeout), then the
confirmed prefix of the batch is deleted from the outbox.  Anything unconfirmed, nacked
or returned as unroutable stays and is published again after a reconnect with capped
exponential backoff and full jitter — at-least-once, with message ids that let
consumers drop the duplicates.  While idle the thread services AMQP heartbeats itself
(a publish-only connection is otherwise closed by the broker).
"""

from __future__ import annotations

import contextlib
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import amqp
from kombu import Connection, Producer

from multiwatch.broker import BrokerLink, exchange_for, queue_for
from multiwatch.config import BrokerConfig
from multiwatch.watcher.message import Event
from multiwatch.watcher.outbox import OutboxGauge
from multiwatch.watcher.state import DurableOutbox
from multiwatch.watcher.stats import LatencyHistogram

log = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 0.5
# New outbox rows and stop() wake the publisher at once; otherwise it wakes only to
# service AMQP heartbeats: a quarter of the negotiated interval (py-amqp sends one after
# half of it), at most every IDLE_SERVICE_MAX_SECONDS so a connection the broker dropped
# while idle is noticed (and reported) within seconds.
IDLE_SERVICE_MAX_SECONDS = 5.0
BATCH_SIZE = 256


class PublishFailed(Exception):
    """Part of a batch was not confirmed; it stays in the outbox."""

    def __init__(self, problem: str, *, unroutable: bool = False) -> None:
        super().__init__(problem)
        self.unroutable = unroutable


@dataclass
class PublisherStats:
    """Read by the pipeline for heartbeats; written only by the publisher thread."""

    connected: bool = False
    published: int = 0
    failures: int = 0
    last_error: str = ""


class _Confirms:
    """Publisher-confirm bookkeeping for one channel (delivery tags count from 1).

    Tags settle mostly in order and often many at once (multiple=True), so everything up
    to a watermark is settled and only out-of-order settlements are kept in a set: an ack
    costs O(tags it settles), not O(tags in flight)."""

    def __init__(self) -> None:
        self.sent = 0
        self._settled_through = 0
        self._settled_above: set[int] = set()  # settled singly, above the watermark
        self.nacked: set[int] = set()
        self.returned: dict[str, str] = {}  # message_id → reason

    def publish(self) -> int:
        self.sent += 1
        return self.sent

    @property
    def waiting(self) -> bool:
        return self._settled_through < self.sent

    def is_pending(self, tag: int) -> bool:
        return tag > self._settled_through and tag not in self._settled_above

    def on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._settle(delivery_tag, multiple)

    def on_nack(self, delivery_tag: int, multiple: bool) -> None:
        low = self._settled_through if multiple else delivery_tag - 1
        self.nacked.update(t for t in range(low + 1, delivery_tag + 1) if self.is_pending(t))
        self._settle(delivery_tag, multiple)

    def on_return(self, exc: Exception, exchange: str, routing_key: str, message: object) -> None:
        properties = getattr(message, "properties", {}) or {}
        self.returned[str(properties.get("message_id"))] = (
            f"unroutable: no queue is bound to exchange {exchange!r} for routing key "
            f"{routing_key!r} ({exc})")

    def _settle(self, delivery_tag: int, multiple: bool) -> None:
        if multiple:
            self._settled_through = max(self._settled_through, delivery_tag)
        elif delivery_tag > self._settled_through:
            self._settled_above.add(delivery_tag)
        while self._settled_through + 1 in self._settled_above:
            self._settled_through += 1
            self._settled_above.discard(self._settled_through)
        if self._settled_above and min(self._settled_above) <= self._settled_through:
            self._settled_above = {t for t in self._settled_above if t > self._settled_through}


class Publisher(threading.Thread):
    """Drains the outbox to the broker; stop() flushes within a deadline."""

    def __init__(self, *, broker: BrokerConfig, state_dir: str, instance_id: str,
                 db_path: str, gauge: OutboxGauge) -> None:
        super().__init__(name=f"publisher-{instance_id}", daemon=True)
        self._broker = broker
        self._state_dir = state_dir
        self._connection_name = f"file_watcher_{instance_id}"
        self._db_path = db_path
        self._gauge = gauge
        self._stop_deadline: float | None = None
        self._wake = threading.Event()
        self.stats = PublisherStats()
        self.latency = LatencyHistogram()

    def stop(self, deadline: float) -> None:
        """Finish publishing the outbox, or give up at time.monotonic() deadline."""
        self._stop_deadline = deadline
        self._wake.set()
        self._gauge.new_events.set()

    def _stopping_now(self) -> bool:
        deadline = self._stop_deadline
        if deadline is None:
            return False
        return time.monotonic() >= deadline or self._gauge.depth == 0

    def run(self) -> None:
        outbox = DurableOutbox(self._db_path)
        try:
            self._run(outbox)
        finally:
            outbox.close()
        if self._gauge.depth:
            log.warning("stopped with events still unconfirmed; they are kept in the outbox "
                        "and sent after the next start", extra={"outbox_depth": self._gauge.depth})

    def _run(self, outbox: DurableOutbox) -> None:
        retry_delay = FIRST_RETRY_SECONDS
        link = BrokerLink(self._broker, self._state_dir, connection_name=self._connection_name)
        while not self._stopping_now():
            connection: Connection | None = None
            try:
                connection = link.connect()  # each URL once, in turn (cluster failover)
                self._serve(connection, outbox, link.where)
                retry_delay = FIRST_RETRY_SECONDS
            except Exception as exc:  # noqa: BLE001 - any broker or socket failure: back off, retry
                self.stats.connected = False
                self.stats.failures += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                delay = random.uniform(0, retry_delay)
                message = _failure_message(exc)
                log.warning(message, extra={
                    "error": self.stats.last_error, "retry_in_seconds": round(delay, 2),
                    "outbox_depth": self._gauge.depth})
                retry_delay = min(retry_delay * 2, self._broker.reconnect_max_seconds)
                self._wake.wait(delay)
            finally:
                self.stats.connected = False
                if connection is not None:
                    _close_quietly(connection)

    def _serve(self, connection: Connection, outbox: DurableOutbox, where: str) -> None:
        channel = connection.channel()
        exchange = exchange_for(self._broker)(channel)
        exchange.declare()
        queue = queue_for(self._broker)
        if queue is not None:
            queue(channel).declare()
        confirms = _Confirms()
        confirming = not self._broker.embedded
        if confirming:
            channel.confirm_select()
            channel.events["basic_ack"].add(confirms.on_ack)
            channel.events["basic_nack"].add(confirms.on_nack)
            channel.events["basic_return"].add(confirms.on_return)
        producer = Producer(channel, exchange=exchange)
        self.stats.connected = True
        log.info("connected to broker", extra={
            "broker": "embedded" if self._broker.embedded else where,
            "connection_name": self._connection_name, "outbox_depth": self._gauge.depth})
        service_every = _heartbeat_service_interval(connection)
        next_service = 0.0
        while not self._stopping_now():
            now = time.monotonic()
            if confirming and now >= next_service:
                _service_heartbeat(connection)
                next_service = now + service_every
            # The gauge counts committed rows: an empty outbox needs no query.
            batch = outbox.peek(BATCH_SIZE) if self._gauge.depth else []
            if not batch:
                self._gauge.new_events.wait(max(0.0, next_service - time.monotonic())
                                            if confirming else service_every)
                self._gauge.new_events.clear()
                continue
            self._publish_batch(connection, producer, confirms if confirming else None,
                                batch, outbox)

    def _publish_batch(self, connection: Connection, producer: Producer,
                       confirms: _Confirms | None, batch: list[tuple[int, Event]],
                       outbox: DurableOutbox) -> None:
        tags = []
        # Without our own queue nobody may be bound: have the broker return the message
        # instead of dropping it, and keep it in the outbox.
        mandatory = self._broker.queue is None
        if confirms is not None:
            confirms.returned.clear()  # returns arrive before the acks of their own batch
            # A real AMQP channel (py-amqp under kombu): publish on it directly.  kombu's
            # Producer.publish adds nothing these ready-made bytes need, and cost about a
            # third of the publisher thread per message.  py-amqp's basic_publish also
            # polls the socket before every message (a recv that times out, and two
            # settimeout calls), to notice a Connection.Blocked from the broker: a quarter
            # to a third of this thread's CPU in a burst.  It is done once per batch here, and
            # the messages are sent as basic_publish sends them (Basic.Publish + content).
            channel = producer.channel
            exchange = self._broker.exchange
            _read_pending_frames(connection)
            with _coalesced_writes(connection):
                for _seq, event in batch:
                    channel.send_method(
                        amqp.spec.Basic.Publish, "Bssbb",
                        (0, exchange, event.routing_key, mandatory, False),
                        amqp.Message(event.body, content_type="application/json",
                                     content_encoding="utf-8", delivery_mode=2,
                                     message_id=event.message_id,
                                     correlation_id=event.correlation_id,
                                     application_headers=event.headers))
                    tags.append(confirms.publish())
            self._await_confirms(connection, confirms)
        else:  # the embedded spool (kombu's filesystem transport): no confirms
            for _seq, event in batch:
                producer.publish(
                    event.body, routing_key=event.routing_key, content_type="application/json",
                    content_encoding="utf-8", delivery_mode=2, message_id=event.message_id,
                    correlation_id=event.correlation_id, headers=event.headers,
                    mandatory=mandatory,
                    retry=False,  # retries go through our loop, so the outbox stays the truth
                )
                tags.append(0)
        confirmed: list[tuple[int, Event]] = []
        problem, unroutable = "", False
        for tag, (seq, event) in zip(tags, batch, strict=True):
            if confirms is not None:
                unroutable = event.message_id in confirms.returned
                problem = (confirms.returned.pop(event.message_id, "")
                           or ("broker rejected (nack)" if tag in confirms.nacked else "")
                           or (f"no confirm within {self._broker.confirm_timeout_seconds}s"
                               if confirms.is_pending(tag) else ""))
            if problem:
                break
            confirmed.append((seq, event))
        outbox.ack([seq for seq, _ in confirmed])
        self._gauge.removed(len(confirmed), sum(len(e.body) for _, e in confirmed))
        self.stats.published += len(confirmed)
        confirmed_at = time.monotonic()
        for _, event in confirmed:
            noticed = self._gauge.noticed_at.pop(event.message_id, None)
            if noticed is not None:
                self.latency.observe(confirmed_at - noticed)
        if problem:
            raise PublishFailed(problem, unroutable=unroutable)

    def _await_confirms(self, connection: Connection, confirms: _Confirms) -> None:
        deadline = time.monotonic() + self._broker.confirm_timeout_seconds
        while confirms.waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                connection.drain_events(timeout=remaining)
            except TimeoutError:
                return


@contextlib.contextmanager
def _coalesced_writes(connection: Connection) -> Iterator[None]:
    """Send the frames of a whole batch with one socket write instead of one per message.

    py-amqp writes every frame straight to the socket (`transport._write`, the socket's
    sendall); on loopback each of those calls also runs the receiving side's TCP work, so
    in a burst they were the publisher's largest cost.  The frames are collected (copied:
    py-amqp reuses its frame buffer) and written at once when the batch is complete.  If
    the transport does not look as expected, frames go out one by one as before."""
    transport = getattr(connection.connection, "transport", None)
    send = getattr(transport, "_write", None)
    if transport is None or send is None:
        yield
        return
    frames: list[bytes] = []
    own = vars(transport).get("_write")  # TCP: the socket's sendall; TLS: none (a method)
    transport._write = lambda data: frames.append(bytes(data))
    try:
        yield
    finally:
        if own is None:
            del transport._write
        else:
            transport._write = own
    send(b"".join(frames))  # not reached if publishing failed: the connection is dropped


def _failure_message(exc: Exception) -> str:
    if getattr(exc, "unroutable", False):
        return ("events unroutable: no queue is bound to the exchange; keeping them in the "
                "outbox and retrying")
    if isinstance(exc, sqlite3.Error):
        return "cannot update the outbox in the state database, retrying"
    return "broker unavailable, retrying"


def _heartbeat_service_interval(connection: Connection) -> float:
    """How often an idle publisher services the connection (seconds)."""
    negotiated = getattr(connection.connection, "heartbeat", 0) or 0
    if negotiated > 0:
        return max(0.5, min(IDLE_SERVICE_MAX_SECONDS, negotiated / 4))
    return IDLE_SERVICE_MAX_SECONDS


def _read_pending_frames(connection: Connection) -> None:
    """Handle what the broker sent (acks, Connection.Blocked, a close) without blocking."""
    try:
        connection.drain_events(timeout=0)
    except TimeoutError:
        pass


def _service_heartbeat(connection: Connection) -> None:
    """Read pending frames and send/check heartbeats without blocking."""
    _read_pending_frames(connection)
    connection.heartbeat_check()


def _close_quietly(connection: Connection) -> None:
    try:
        connection.release()
    except Exception:
        log.debug("ignored error while closing the broker connection", exc_info=True)
