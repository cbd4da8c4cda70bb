"""The outbox gauge (watcher/outbox.py): its count stays true when the publisher deletes a
row before the pipeline has counted it (else a stopping watcher waited for a
depth of 1 over an empty outbox until its stop deadline, holding its replica lease)."""

from __future__ import annotations

from multiwatch.watcher.outbox import OutboxGauge


def test_a_row_removed_before_it_was_counted_leaves_the_gauge_at_zero() -> None:
    """Commit, publish and delete (removed), then the committer's added(): depth 0, size 0."""
    gauge = OutboxGauge(events=0, size=0, max_events=100, max_bytes=1 << 20)
    gauge.removed(1, 10)  # the publisher confirmed and deleted the freshly committed row
    assert gauge.depth == 0 and gauge.size == 0  # never shown below zero
    gauge.added(1, 10)  # the pipeline counts what it committed
    assert (gauge.depth, gauge.size) == (0, 0)
    gauge.added(2, 20)
    gauge.removed(2, 20)
    assert (gauge.depth, gauge.size, gauge.full) == (0, 0, False)
