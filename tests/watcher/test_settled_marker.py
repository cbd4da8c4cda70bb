"""The active replica's settled marker (batches.py BatchSender.settled): where it goes, and
that its delivery tag keeps the channel's confirm bookkeeping right."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

from multiwatch.config import BrokerConfig
from multiwatch.watcher.batches import BatchSender, PublishFailed
from multiwatch.watcher.confirms import Confirms
from multiwatch.watcher.held_event import HeldEvent
from multiwatch.watcher.lease import BrokerLease
from multiwatch.watcher.outbox import OutboxGauge
from multiwatch.watcher.publisher import Publisher
from multiwatch.watcher.publisher_health import PublisherStats
from multiwatch.watcher.standby_window import SETTLED_EXCHANGE, SETTLED_HEADER, settled_key
from multiwatch.watcher.state import StateStore
from multiwatch.watcher.stats import LatencyHistogram
from tests.support.consumer import wait_for

ID = "music"


class _Broker:
    """A channel and connection as BatchSender uses them: publishes are recorded, and each
    read settles what is waiting the way `answer` says (ack, nack, or nothing)."""

    connection = None  # (no transport: every read goes to drain_events)

    def __init__(self, confirms: Confirms, answer: str) -> None:
        self.confirms, self.answer = confirms, answer
        self.published: list[tuple[tuple[Any, ...], Any]] = []

    def send_method(self, _method: object, _fmt: str, args: tuple[Any, ...],
                    message: object) -> None:
        self.published.append((args, message))

    def drain_events(self, timeout: float) -> None:
        if self.answer == "ack" and self.confirms.waiting:
            self.confirms.on_ack(self.confirms.sent, True)
        elif self.answer == "nack" and self.confirms.waiting:
            self.confirms.on_nack(self.confirms.sent, True)
        else:
            raise TimeoutError


def _sender() -> BatchSender:
    broker = BrokerConfig(confirm_timeout_seconds=0.3)
    gauge = OutboxGauge(events=0, size=0, max_events=100, max_bytes=10**6)
    stats = PublisherStats()
    return BatchSender(broker, gauge, stats, LatencyHistogram(), HeldEvent(stats, gauge, 1.0),
                       stop_deadline=lambda: None)


def test_the_marker_goes_to_amq_direct_not_mandatory_and_takes_a_delivery_tag() -> None:
    """Never the events exchange (catch-all consumers would see it), not mandatory (no
    standby: dropped); its tag is counted, so the next batch's tags stay right."""
    confirms = Confirms()
    confirms.publish()
    confirms.on_ack(1, False)  # an earlier batch of one
    broker = _Broker(confirms, "ack")
    assert _sender().settled(broker, broker, confirms, ID)  # type: ignore[arg-type]
    (args, message), = broker.published
    assert args == (0, SETTLED_EXCHANGE, settled_key(ID), False, False)
    assert message.properties["application_headers"] == {"instance_id": ID,
                                                         SETTLED_HEADER: True}
    assert confirms.sent == 2 and not confirms.waiting
    assert confirms.publish() == 3


def test_a_marker_nacked_is_not_settled_and_one_unconfirmed_fails_the_link() -> None:
    """A nack: the standbys keep their windows; no confirm within confirm_timeout: the
    connection is in doubt, as for a batch."""
    confirms = Confirms()
    broker = _Broker(confirms, "nack")
    assert not _sender().settled(broker, broker, confirms, ID)  # type: ignore[arg-type]
    silent = _Broker(confirms, "none")
    with pytest.raises(PublishFailed):
        _sender().settled(silent, silent, confirms, ID)  # type: ignore[arg-type]


def test_an_active_replica_sends_no_marker_before_its_startup_reconcile_is_complete(
        tmp_path: Path, broker_url: str) -> None:
    """A replica that just took over has yet to publish what its reconcile finds of the
    failed one's events: a marker then would let a standby empty a window those events are
    still only in.  With the lease held and the outbox drained, nothing is sent until the
    main loop says the startup scan is complete; then the marker comes at once."""
    with Connection(broker_url, connect_timeout=10) as conn:
        channel = conn.default_channel
        queue, _, _ = channel.queue_declare(queue="", exclusive=True, auto_delete=True)
        channel.queue_bind(queue, SETTLED_EXCHANGE, settled_key(ID))
        broker = BrokerConfig(url=broker_url, connect_timeout_seconds=5,
                              confirm_timeout_seconds=5, heartbeat_seconds=0)
        gauge = OutboxGauge(events=0, size=0, max_events=1000, max_bytes=10**6)
        publisher = Publisher(broker=broker, state_dir=str(tmp_path), instance_id=ID,
                              db_path=None, gauge=gauge, lease=BrokerLease(ID))
        publisher.start()
        try:
            assert publisher.role.promoted.wait(15), "the lease was never taken"
            db = str(tmp_path / "state.db")
            StateStore(db).close()
            publisher.attach(db)
            wait_for(lambda: publisher.progress.doing == "waiting for events", 15,
                     message="the publisher never drained its empty outbox")
            assert channel.basic_get(queue, no_ack=True) is None, "a marker before the reconcile"
            publisher.reconciled.set()
            gauge.new_events.set()
            marker = wait_for(lambda: channel.basic_get(queue, no_ack=True), 15,
                              message="no marker once the reconcile was complete")
            assert marker.properties["application_headers"][SETTLED_HEADER] is True
        finally:
            publisher.stop(time.monotonic() + 5)
            publisher.join(10)
        assert not publisher.is_alive()
