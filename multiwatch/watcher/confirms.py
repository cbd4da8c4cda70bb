"""Publisher confirms for one channel, and what they say about a published batch.

RabbitMQ sends basic.return before the ack of the same message, so by the time a batch's
confirms are in, each message is known to be routed (acked, not returned), unroutable
(returned, then acked), rejected (nacked) or still unconfirmed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

ROUTED, UNROUTABLE, NACKED, PENDING = "routed", "unroutable", "nacked", "pending"


class Confirms:
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

    def outcome(self, tag: int, message_id: str) -> str:
        """ROUTED, UNROUTABLE, NACKED or PENDING for one published message."""
        if self.is_pending(tag):
            return PENDING
        if tag in self.nacked:
            return NACKED
        if message_id in self.returned:
            return UNROUTABLE
        return ROUTED

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


@dataclass
class BatchOutcome:
    """Which messages of a batch (by position) left for good, and the first that did not."""

    delivered: list[int] = field(default_factory=list)
    held: int | None = None  # position of the first unroutable or nacked message
    held_why: str = ""  # UNROUTABLE or NACKED
    timed_out: bool = False  # some message got no confirm: the connection is suspect


def judge(outcomes: Sequence[str]) -> BatchOutcome:
    """What to delete from the outbox after a batch, given each message's outcome in order.

    A message without a confirm means the link is in doubt: only the prefix before the
    first problem is delivered, the rest is published again after a reconnect.  When every
    message is settled, each routed one is delivered, also those behind an unroutable or
    nacked one (they reached their queues; publishing them again would duplicate them), and
    the first unroutable or nacked one is held at the head of the outbox."""
    result = BatchOutcome(timed_out=PENDING in outcomes)
    for position, outcome in enumerate(outcomes):
        if outcome == ROUTED:
            result.delivered.append(position)
            continue
        if result.held is None and outcome != PENDING:
            result.held, result.held_why = position, outcome
        if result.timed_out:
            break
    return result


def runs(positions: Sequence[int]) -> list[list[int]]:
    """Consecutive positions grouped: [0, 1, 3, 4, 6] → [[0, 1], [3, 4], [6]]."""
    grouped: list[list[int]] = []
    for position in positions:
        if grouped and grouped[-1][-1] + 1 == position:
            grouped[-1].append(position)
        else:
            grouped.append([position])
    return grouped
