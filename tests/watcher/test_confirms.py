"""Publisher-confirm bookkeeping: which published events the broker has settled."""

from __future__ import annotations

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
