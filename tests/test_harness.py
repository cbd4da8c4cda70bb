"""The harness itself: private broker, per-test vhost, consumer helpers."""

from __future__ import annotations

import time

import pytest
from kombu import Connection

from tests.support.consumer import (
    collect,
    connection_names,
    declare_queue,
    topology,
    vhost_of,
    wait_for,
)
from tests.support.rabbitmq import RabbitMQ


def test_collect_receives_persistent_message_with_properties(broker_url: str) -> None:
    """A persistent JSON message sent through the topic exchange arrives with its properties."""
    queue = topology("file_events")
    with Connection(broker_url, connect_timeout=10) as conn:
        conn.Producer().publish(
            {"event_type": "file_discovered", "file_info": {"name": "song.mp3"}},
            exchange=queue.exchange, routing_key="file.discovered", declare=[queue],
            serializer="json", delivery_mode=2, message_id="m-1", correlation_id="c-1",
            headers={"instance_id": "music"},
        )

    got = collect(broker_url, "file_events", until=lambda ms: len(ms) >= 1, timeout=10)

    [msg] = got
    assert msg.body == {"event_type": "file_discovered", "file_info": {"name": "song.mp3"}}
    assert msg.routing_key == "file.discovered"
    assert msg.exchange == "file_events"
    assert msg.properties["content_type"] == "application/json"
    assert msg.properties["delivery_mode"] == 2
    assert msg.properties["message_id"] == "m-1"
    assert msg.properties["correlation_id"] == "c-1"
    assert msg.headers == {"instance_id": "music"}


def test_collect_returns_what_arrived_when_time_runs_out(broker_url: str) -> None:
    """collect hands back the partial list at its deadline instead of hanging or raising."""
    declare_queue(broker_url, "file_events")
    with Connection(broker_url, connect_timeout=10) as conn:
        conn.Producer().publish({"n": 1}, exchange="file_events", routing_key="file.created",
                                serializer="json")
        conn.Producer().publish({"n": 2}, exchange="file_events", routing_key="other.key",
                                serializer="json")  # not bound: dropped by the broker

    started = time.monotonic()
    got = collect(broker_url, "file_events", until=lambda ms: len(ms) >= 2, timeout=1.0)

    assert [m.body for m in got] == [{"n": 1}]
    assert 1.0 <= time.monotonic() - started < 5.0


def test_connection_name_is_listed_while_open(rabbitmq: RabbitMQ, broker_url: str) -> None:
    """A kombu connection's connection_name shows in rabbitmqctl while open, and goes on close."""
    conn = Connection(broker_url, connect_timeout=10, transport_options={
        "client_properties": {"connection_name": "file_watcher_probe"}})
    conn.connect()
    try:
        wait_for(lambda: "file_watcher_probe" in connection_names(rabbitmq), timeout=10,
                 message="connection file_watcher_probe never listed")
        assert connection_names(rabbitmq, vhost=vhost_of(broker_url)) == ["file_watcher_probe"]
    finally:
        conn.release()
    wait_for(lambda: "file_watcher_probe" not in connection_names(rabbitmq), timeout=10,
             message="connection file_watcher_probe still listed after close")


def test_broker_url_is_a_fresh_vhost_of_its_own(rabbitmq: RabbitMQ, broker_url: str) -> None:
    """Each test gets an empty vhost named mw-<uuid> that exists on the broker."""
    vhost = vhost_of(broker_url)
    assert vhost.startswith("mw-")
    assert vhost in rabbitmq.rabbitmqctl("list_vhosts", "name").split()
    assert rabbitmq.rabbitmqctl("list_queues", "-p", vhost, "name").strip() == ""


def test_wait_for_raises_with_the_message_on_timeout() -> None:
    """wait_for returns the first truthy value, and fails with the caller's message otherwise."""
    values = iter([0, None, "ready"])
    assert wait_for(lambda: next(values), timeout=5, interval=0.01) == "ready"
    with pytest.raises(AssertionError, match="never true"):
        wait_for(lambda: False, timeout=0.1, interval=0.01, message="never true")
