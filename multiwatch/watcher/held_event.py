"""The head event the broker returned (unroutable) or rejected (nack): held, not dropped.

Owned by the publisher thread. The connection is fine, so it is kept: the held event is
published alone, with capped exponential backoff, until the broker routes it; the events
behind it wait in the outbox (no duplicates, no reordering; only a nacked event's retries
reach again the queues that took it, as a nack does not say which queue refused). A log
line at most once a minute, the publisher's `held` status (heartbeat `problem`,
`publish_held`) make it visible.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from multiwatch.watcher.message import Event
from multiwatch.watcher.outbox import OutboxGauge
from multiwatch.watcher.publisher_health import PublisherStats

log = logging.getLogger("multiwatch.watcher.publisher")  # (the logger these lines always had)

FIRST_RETRY_SECONDS = 0.5
LOG_EVERY_SECONDS = 60.0
HOW_TO_FIX = ("bind a queue to the exchange for this routing key, or give the exchange an "
              "alternate exchange (a policy) that takes unroutable messages")
# A nack: a queue the event was routed to refused it (RabbitMQ nacks when any of them does).
HOW_TO_FIX_NACK = ("make room in the queue that refuses it (a full queue with x-overflow "
                   "reject-publish: consume it, raise its max-length, or overflow drop-head); "
                   "queues that took it receive it again at each retry, same message_id")


@dataclass
class _Held:
    event: Event
    reason: str
    since: float
    retry_at: float
    delay: float = FIRST_RETRY_SECONDS
    attempts: int = 1
    logged_at: float = -float("inf")


class HeldEvent:
    """At most one held event: what to publish next while it is held, and its reporting."""

    def __init__(self, stats: PublisherStats, gauge: OutboxGauge,
                 max_delay_seconds: float) -> None:
        self._stats = stats
        self._gauge = gauge
        self._max_delay = max_delay_seconds
        self._held: _Held | None = None

    @property
    def active(self) -> bool:
        return self._held is not None

    def retry_at(self) -> float | None:
        """When the held event may be published again (None: nothing is held)."""
        return self._held.retry_at if self._held is not None else None

    def hold(self, event: Event, reason: str, now: float) -> None:
        """Keep `event` at the head and publish it alone, with capped backoff."""
        held = self._held
        if held is None or held.event.message_id != event.message_id:
            held = self._held = _Held(event, reason, since=now, retry_at=now)
        else:
            held.attempts += 1
            held.reason = reason
            held.delay = min(held.delay * 2, self._max_delay)
        held.retry_at = now + held.delay
        self._stats.held = (f"event {event.message_id} (routing key {event.routing_key!r}) "
                            f"is {reason}")
        self.report(now)

    def delivered(self, now: float) -> None:
        """The held event went through: publishing resumes in batches."""
        held = self._held
        if held is None:
            return
        log.info("the held event was delivered; publishing resumes", extra={
            "message_id": held.event.message_id, "routing_key": held.event.routing_key,
            "held_seconds": round(now - held.since, 1)})
        self._held = None
        self._stats.held = ""

    def report(self, now: float) -> None:
        """At most one line a minute while an event is held."""
        held = self._held
        if held is None or now - held.logged_at < LOG_EVERY_SECONDS:
            return
        held.logged_at = now
        unroutable = held.reason.startswith("unroutable")
        what = ("event unroutable: no queue is bound for its routing key" if unroutable
                else "event rejected by the broker")
        log.warning("%s; it and the events behind it wait in the outbox (to fix: %s)",
                    what, HOW_TO_FIX if unroutable else HOW_TO_FIX_NACK, extra={
                        "error": held.reason, "routing_key": held.event.routing_key,
                        "message_id": held.event.message_id, "attempts": held.attempts,
                        "held_seconds": round(now - held.since, 1),
                        "outbox_depth": self._gauge.depth})
