"""The publisher thread: the only thread that touches the broker connection.

It publishes the outbox in order, each message with a publisher confirm bounded by
confirm_timeout, and acknowledges an outbox entry only after the broker confirmed it.
While idle it services AMQP heartbeats itself (a publish-only connection is otherwise
closed by the broker).  Any failure closes the connection and reconnects with capped
exponential backoff and full jitter; the unconfirmed event is published again, which
is why message ids are deterministic.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass

from kombu import Connection, Producer

from multiwatch.broker import exchange_for, open_connection, queue_for
from multiwatch.config import BrokerConfig, mask_url
from multiwatch.watcher.outbox import Outbox

log = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 0.5
IDLE_POLL_SECONDS = 0.5
HEARTBEAT_SERVICE_SECONDS = 1.0  # well inside any heartbeat interval a broker negotiates


@dataclass
class PublisherStats:
    """Read by the pipeline for heartbeats; written only by the publisher thread."""

    connected: bool = False
    published: int = 0
    failures: int = 0
    last_error: str = ""


class Publisher(threading.Thread):
    """Drains an Outbox to the broker with confirms; stop() flushes within a deadline."""

    def __init__(self, *, broker: BrokerConfig, state_dir: str, instance_id: str,
                 outbox: Outbox) -> None:
        super().__init__(name=f"publisher-{instance_id}", daemon=True)
        self._broker = broker
        self._state_dir = state_dir
        self._connection_name = f"file_watcher_{instance_id}"
        self._outbox = outbox
        self._stop_deadline: float | None = None
        self._wake = threading.Event()
        self.stats = PublisherStats()

    def stop(self, deadline: float) -> None:
        """Finish publishing what is in the outbox, or give up at time.monotonic() deadline."""
        self._stop_deadline = deadline
        self._wake.set()

    def _stopping_now(self) -> bool:
        deadline = self._stop_deadline
        if deadline is None:
            return False
        return time.monotonic() >= deadline or len(self._outbox) == 0

    def run(self) -> None:
        retry_delay = FIRST_RETRY_SECONDS
        while not self._stopping_now():
            connection = open_connection(
                self._broker, self._state_dir, connection_name=self._connection_name
            )
            try:
                self._serve(connection)
                retry_delay = FIRST_RETRY_SECONDS
            except Exception as exc:  # noqa: BLE001 - any broker or socket failure: back off, retry
                self.stats.connected = False
                self.stats.failures += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                delay = random.uniform(0, retry_delay)
                log.warning(
                    "broker unavailable, retrying",
                    extra={"error": self.stats.last_error, "retry_in_seconds": round(delay, 2),
                           "outbox_depth": len(self._outbox)},
                )
                retry_delay = min(retry_delay * 2, self._broker.reconnect_max_seconds)
                self._wake.wait(delay)
            finally:
                self.stats.connected = False
                _close_quietly(connection)
        remaining = len(self._outbox)
        if remaining:
            log.warning("stopped with events still unconfirmed", extra={"outbox_depth": remaining})

    def _serve(self, connection: Connection) -> None:
        connection.connect()
        channel = connection.channel()
        exchange = exchange_for(self._broker)(channel)
        exchange.declare()
        queue = queue_for(self._broker)
        if queue is not None:
            queue(channel).declare()
        producer = Producer(channel, exchange=exchange)
        self.stats.connected = True
        log.info("connected to broker", extra={
            "broker": "embedded" if self._broker.embedded else mask_url(str(self._broker.url)),
            "connection_name": self._connection_name,
        })
        services_heartbeats = not self._broker.embedded
        next_heartbeat = 0.0
        while not self._stopping_now():
            event = self._outbox.peek(IDLE_POLL_SECONDS)
            if services_heartbeats and time.monotonic() >= next_heartbeat:
                _service_heartbeat(connection)
                next_heartbeat = time.monotonic() + HEARTBEAT_SERVICE_SECONDS
            if event is None:
                continue
            producer.publish(
                event.body,
                routing_key=event.routing_key,
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=2,
                message_id=event.message_id,
                correlation_id=event.correlation_id,
                headers=event.headers,
                retry=False,  # retries go through our loop, so the outbox stays the truth
                confirm_timeout=self._broker.confirm_timeout_seconds,
            )
            self._outbox.ack(event)
            self.stats.published += 1


def _service_heartbeat(connection: Connection) -> None:
    """Read pending frames and send/check heartbeats without blocking."""
    try:
        connection.drain_events(timeout=0)
    except TimeoutError:
        pass
    connection.heartbeat_check()


def _close_quietly(connection: Connection) -> None:
    try:
        connection.release()
    except Exception:  # already broken; nothing more to do
        log.debug("ignored error while closing the broker connection", exc_info=True)
