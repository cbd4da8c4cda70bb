"""Publisher-confirm bookkeeping: which published events the broker has settled."""

from __future__ import annotations

from multiwatch.watcher.confirms import (
    NACKED,
    PENDING,
    ROUTED,
    UNROUTABLE,
    judge,
    runs,
)
from multiwatch.watcher.confirms import Confirms as _Confirms


def _sent(count: int) -> _Confirms:
    confirms = _Confirms()
    for _ in range(count):
        confirms.publish()
    return confirms


def test_a_multiple_ack_settles_every_tag_up_to_it_and_no_further() -> None:
    """Events up to an ack with multiple=True leave the outbox; later ones still wait."""
    confirms = _sent(10)
    confirms.on_ack(6, multiple=True)
    assert [t for t in range(1, 11) if confirms.is_pending(t)] == [7, 8, 9, 10]
    assert confirms.waiting


def test_single_acks_out_of_order_settle_exactly_their_tags() -> None:
    """Single acks arriving out of order settle just those events, and fill the gap later."""
    confirms = _sent(5)
    confirms.on_ack(3, multiple=False)
    confirms.on_ack(1, multiple=False)
    assert [t for t in range(1, 6) if confirms.is_pending(t)] == [2, 4, 5]
    confirms.on_ack(2, multiple=False)
    confirms.on_ack(5, multiple=True)
    assert not confirms.waiting
    assert not any(confirms.is_pending(t) for t in range(1, 6))


def test_a_multiple_nack_marks_only_the_still_pending_tags_rejected() -> None:
    """A nack with multiple=True rejects the unsettled events up to it, not acked ones."""
    confirms = _sent(6)
    confirms.on_ack(2, multiple=False)
    confirms.on_nack(4, multiple=True)
    assert confirms.nacked == {1, 3, 4}
    assert [t for t in range(1, 7) if confirms.is_pending(t)] == [5, 6]


def test_routed_events_behind_an_unroutable_one_leave_and_it_is_held() -> None:
    """Every confirm in, the second of four returned: the other three are delivered (sending
    them again would duplicate them) and the returned one is held at the head."""
    verdict = judge([ROUTED, UNROUTABLE, ROUTED, ROUTED])
    assert verdict.delivered == [0, 2, 3]
    assert (verdict.held, verdict.held_why, verdict.timed_out) == (1, UNROUTABLE, False)
    assert runs(verdict.delivered) == [[0], [2, 3]]


def test_a_missing_confirm_keeps_everything_from_the_first_problem_on() -> None:
    """A confirm that never came: only the prefix before the first problem is delivered; the
    rest is published again after a reconnect."""
    verdict = judge([ROUTED, PENDING, ROUTED, NACKED])
    assert verdict.delivered == [0] and verdict.timed_out and verdict.held is None
    verdict = judge([ROUTED, NACKED, PENDING])
    assert verdict.delivered == [0] and verdict.timed_out and verdict.held == 1


def test_a_returned_message_is_known_unroutable_when_its_ack_arrives() -> None:
    """basic.return comes before the ack of the same message: its outcome is UNROUTABLE."""
    confirms = _Confirms()
    tag = confirms.publish()
    confirms.on_return(Exception("NO_ROUTE"), "file_events", "file.deleted",
                       type("M", (), {"properties": {"message_id": "m1"}})())
    assert confirms.outcome(tag, "m1") == PENDING
    confirms.on_ack(tag, False)
    assert confirms.outcome(tag, "m1") == UNROUTABLE
    assert confirms.outcome(tag, "other") == ROUTED
