"""The publisher thread stopping while the broker is down: a handful of lines, on time."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from multiwatch.config import BrokerConfig
from multiwatch.watcher.outbox import OutboxGauge
from multiwatch.watcher.publisher import Publisher
from tests.support.process import free_port

RETRYING = "broker unavailable, retrying"


class _Records(logging.Handler):
    """Every record the publisher's logger emits, and an event set on the first retry."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.retried = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if record.getMessage() == RETRYING:
            self.retried.set()


@pytest.fixture
def records() -> Iterator[_Records]:
    handler = _Records()
    logger = logging.getLogger("multiwatch.watcher.publisher")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _publisher(tmp_path: Path, url: str, *, waiting: int = 5) -> Publisher:
    broker = BrokerConfig(url=url, connect_timeout_seconds=2, confirm_timeout_seconds=2,
                          reconnect_max_seconds=10)
    gauge = OutboxGauge(events=waiting, size=100, max_events=1000, max_bytes=10**6)
    return Publisher(broker=broker, state_dir=str(tmp_path), instance_id="stop-test",
                     db_path=str(tmp_path / "state.db"), gauge=gauge)


@pytest.mark.parametrize("host", ["127.0.0.1", "nonexistent.invalid"])
def test_stopping_with_the_broker_down_logs_a_handful_of_lines(
        tmp_path: Path, records: _Records, host: str) -> None:
    """Stop with events waiting and no broker (closed port, unknown host): the thread ends
    well before the deadline and logs a few lines, not thousands of immediate retries."""
    publisher = _publisher(tmp_path, f"amqp://guest:guest@{host}:{free_port()}//")
    publisher.start()
    try:
        assert records.retried.wait(10), "the publisher never tried the broker"
        before = len(records.records)
        started = time.monotonic()
        publisher.stop(started + 3.0)
        publisher.join(5)
        took = time.monotonic() - started
        assert not publisher.is_alive()
    finally:
        publisher.stop(time.monotonic())
        publisher.join(5)
    after_stop = records.records[before:]
    assert len(after_stop) <= 5, [r.getMessage() for r in after_stop[:10]]
    assert took < 3.0, f"stop took {took:.1f}s with a 3 s deadline"
