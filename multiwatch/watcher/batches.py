"""One batch of outbox rows on its way to the broker: published, its confirms awaited (each
wait bounded), judged, and what left for good deleted from the outbox.  Runs on the
publisher thread (publisher.py), which owns the connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import amqp
from kombu import Connection, Producer

from multiwatch.config import BrokerConfig
from multiwatch.watcher.amqp_io import negotiated_heartbeat, publish_frames, read_pending_frames
from multiwatch.watcher.confirms import UNROUTABLE, Confirms, judge, runs
from multiwatch.watcher.held_event import HeldEvent
from multiwatch.watcher.message import Event
from multiwatch.watcher.outbox import OutboxGauge
from multiwatch.watcher.publisher_health import PublisherStats
from multiwatch.watcher.standby_window import SETTLED_EXCHANGE, SETTLED_HEADER, settled_key
from multiwatch.watcher.state import BUSY_TIMEOUT_SECONDS, DurableOutbox
from multiwatch.watcher.stats import LatencyHistogram

log = logging.getLogger("multiwatch.watcher.publisher")  # (the publisher thread's logger)

# While waiting for confirms, look at a stop request at least this often.
STOP_POLL_SECONDS = 0.25
BLOCKED_WAIT = ("no confirm in time on a connection the broker blocked; waiting on it until "
                "the alarm clears")


class PublishFailed(Exception):
    """Part of a batch was not confirmed; it stays in the outbox."""


class BatchSender:
    """Publishes batches for one publisher: its figures, its held event, its stop deadline."""

    def __init__(self, broker: BrokerConfig, gauge: OutboxGauge, stats: PublisherStats,
                 latency: LatencyHistogram, held: HeldEvent, *,
                 stop_deadline: Callable[[], float | None],
                 expect: Callable[[float, str], None] = lambda _seconds, _doing: None) -> None:
        """`expect`: the publisher's Progress.expect, renewed while a blocked wait goes on."""
        self._broker = broker
        self._expect = expect
        self._gauge = gauge
        self._stats = stats
        self._latency = latency
        self._held = held
        self._stop_deadline = stop_deadline
        self._settled_refused = False  # the broker refused the settled marker (permissions)

    def spooled(self, producer: Producer, batch: list[tuple[int, Event]],
                         outbox: DurableOutbox) -> None:
        """The embedded spool (kombu's filesystem transport): no confirms, always a queue."""
        for _seq, event in batch:
            producer.publish(
                event.body, routing_key=event.routing_key, content_type="application/json",
                content_encoding="utf-8", delivery_mode=2, message_id=event.message_id,
                correlation_id=event.correlation_id, headers=event.headers, mandatory=True,
                retry=False,  # retries go through our loop, so the outbox stays the truth
            )
        self._remove_delivered(outbox, batch, list(range(len(batch))))

    def confirmed(self, connection: Connection, producer: Producer, confirms: Confirms,
                       batch: list[tuple[int, Event]], outbox: DurableOutbox) -> None:
        events = [event for _seq, event in batch]
        read_pending_frames(connection)  # acks, a Connection.Blocked, a close
        confirms.returned.clear()  # returns arrive before the acks of their own batch
        publish_frames(connection, producer.channel, self._broker.exchange, events)
        tags = [confirms.publish() for _ in events]
        self._await_confirms(connection, confirms)
        outcomes = [confirms.outcome(tag, e.message_id) for tag, e in zip(tags, events,
                                                                           strict=True)]
        verdict = judge(outcomes)
        self._stats.unroutable += outcomes.count(UNROUTABLE)
        self._stats.nacked += outcomes.count("nacked")
        self._remove_delivered(outbox, batch, verdict.delivered)
        now = time.monotonic()
        if verdict.held is not None:
            event = events[verdict.held]
            reason = confirms.returned.get(event.message_id) or "rejected by the broker (nack)"
            self._held.hold(event, reason, now)
        elif 0 in verdict.delivered:
            self._held.delivered(now)
        if verdict.timed_out:
            blocked = self._stats.blocked
            raise PublishFailed(
                f"no confirm within {self._broker.confirm_timeout_seconds}s"
                + (f" (the broker blocked the connection: {blocked})" if blocked else ""))

    def settled(self, connection: Connection, channel: amqp.Channel, confirms: Confirms,
                instance_id: str) -> bool:
        """An active replica (ha, holding the lease) whose outbox is drained, every event it
        published confirmed positively (a held event stays in the outbox): publish the
        settled marker (once per drain: the caller's part), telling its standbys that their
        in-flight windows may be emptied (standby_window.py); True if the broker confirmed
        it positively.

        Invariant (why a standby may empty its window on the marker): every event published
        on this channel before the marker was confirmed before the marker was published,
        and RabbitMQ confirms a message only once every queue it was routed to accepted it,
        so those events were already in each standby's queue (and in the consumers') when
        the marker reached it: a standby receives the marker after them.  (Messages
        published on one channel also reach one queue in publish order, through any
        exchanges.)  A standby that bound its queue later missed those events, and its
        reconcile finds their files at takeover.

        Not mandatory: with no standby bound, the broker drops (and confirms) it.  Its
        confirm is awaited like a batch's: a nack settles nothing (the standbys keep their
        windows); none within confirm_timeout is PublishFailed (the link is in doubt).  A
        broker user without write permission on SETTLED_EXCHANGE gets a channel error:
        logged, the connection is replaced, and no marker is sent again."""
        if self._settled_refused:
            return False
        read_pending_frames(connection)
        channel.send_method(
            amqp.spec.Basic.Publish, "Bssbb",
            (0, SETTLED_EXCHANGE, settled_key(instance_id), False, False),
            amqp.Message(b"", delivery_mode=1, type="multiwatch.settled",
                         application_headers={"instance_id": instance_id,
                                              SETTLED_HEADER: True}))
        tag = confirms.publish()  # the marker takes a delivery tag like any publish
        try:
            self._await_confirms(connection, confirms)
        except amqp.exceptions.AccessRefused as exc:
            self._settled_refused = True
            log.warning("the broker refused the settled marker (no write permission on "
                        f"{SETTLED_EXCHANGE}): standbys keep their in-flight windows until "
                        "its time bound; reconnecting", extra={"error": str(exc)})
            raise
        if confirms.is_pending(tag):
            if self._stop_deadline() is not None:
                return False  # stopping: the standbys keep their windows
            raise PublishFailed(f"no confirm for the settled marker within "
                                f"{self._broker.confirm_timeout_seconds}s")
        return tag not in confirms.nacked

    def _await_confirms(self, connection: Connection, confirms: Confirms) -> None:
        """Read acks until every publish is settled, confirm_timeout passes or stop's
        deadline does (checked every STOP_POLL_SECONDS).

        On a connection the broker blocked (Connection.Blocked: a memory or disk alarm) the
        wait goes on past confirm_timeout, for as long as the broker keeps sending heartbeats
        (checked at every step: a node that also froze raises), until confirm_timeout after
        it unblocked the connection.  Not abandoned: RabbitMQ reads and routes what a blocked
        connection sent once the alarm clears, even after the client closed it, so every
        connection given up and published on again would deliver the batch once more.
        Without heartbeats (heartbeat_seconds 0) a frozen node could not be told apart: the
        connection is then given up at confirm_timeout as before."""
        confirm_timeout = self._broker.confirm_timeout_seconds
        deadline = time.monotonic() + confirm_timeout
        kept_blocked = False
        while confirms.waiting:
            now = time.monotonic()
            if now >= deadline and self._stats.blocked and negotiated_heartbeat(connection):
                deadline = now + confirm_timeout  # (and confirm_timeout once unblocked)
                self._expect(confirm_timeout + BUSY_TIMEOUT_SECONDS,
                             "waiting for the broker to unblock the connection")
                if not kept_blocked:
                    kept_blocked = True
                    log.info(BLOCKED_WAIT, extra={"reason": self._stats.blocked,
                                                  "outbox_depth": self._gauge.depth})
            if kept_blocked:  # a node that froze as well stops its heartbeats: this raises
                connection.heartbeat_check()
            until = min(deadline, self._stop_deadline() or deadline)
            remaining = until - now
            if remaining <= 0:
                return
            try:
                connection.drain_events(timeout=min(remaining, STOP_POLL_SECONDS))
            except TimeoutError:
                pass

    def _remove_delivered(self, outbox: DurableOutbox, batch: list[tuple[int, Event]],
                positions: list[int]) -> None:
        """Delete what left for good: one range per run of consecutive rows."""
        for run in runs(positions):
            outbox.ack([batch[p][0] for p in run])
        delivered = [batch[p][1] for p in positions]
        self._gauge.removed(len(delivered), sum(len(e.body) for e in delivered))
        self._stats.published += len(delivered)
        confirmed_at = time.monotonic()
        for event in delivered:
            noticed = self._gauge.noticed_at.pop(event.message_id, None)
            if noticed is not None:
                self._latency.observe(confirmed_at - noticed)
