"""Unroutable events: held at the head of the outbox, never duplicated or overtaken, and
visible (/readyz, /status, /metrics, one log line); publishes are always mandatory, so a
configured queue unbound or deleted while the watcher runs loses nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.consumer import BINDING_KEY, EXCHANGE, Received, collect, declare_queue, wait_for
from tests.support.faults import FAST_BROKER, outbox_rows, queue_depth, state_db
from tests.support.hostile import http_request, roster
from tests.support.process import Multiwatch, free_port
from tests.support.rabbitmq import amqp_connection

MINE = "mine"  # the consumer's own queue when broker.queue is null
HELD_LOG = "event unroutable"
NACKED_LOG = "event rejected by the broker"
# A queue that holds one ready message and makes RabbitMQ nack the next publish.
FULL = {"x-max-length": 1, "x-overflow": "reject-publish"}


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def running(tmp_path: Path, inbox: Path, broker_url: str, port: int,
            request: pytest.FixtureRequest) -> Iterator[Multiwatch]:
    broker: dict[str, Any] = {"url": broker_url, **FAST_BROKER, **request.param}
    path = roster(tmp_path, [{"id": "inbox", "directory": str(inbox)}], broker=broker,
                  http_port=port)
    mw = Multiwatch(["-c", str(path)])
    try:
        mw.wait_for_log(lambda line: line.get("message") == "connected to broker", timeout=30)
        yield mw
    finally:
        mw.cleanup()


def _bind(url: str, queue: str, key: str, *, unbind: bool = False) -> None:
    with amqp_connection(url, connect_timeout=5) as conn:
        channel = conn.channel()
        if unbind:
            channel.queue_unbind(queue, EXCHANGE, key)
        else:
            channel.queue_bind(queue, EXCHANGE, key)


def _delete_queue(url: str, queue: str) -> None:
    with amqp_connection(url, connect_timeout=5) as conn:
        conn.channel().queue_delete(queue)


def _not_ready(port: int) -> str:
    code, body, _ = http_request(port, "/readyz")
    if code != 503:
        return ""
    return " | ".join(r["reason"] for r in json.loads(body).get("not_ready", []))


def _metric(port: int, name: str) -> float:
    _, text, _ = http_request(port, "/metrics")
    found = re.search(rf'^{name}{{instance_id="inbox"}} (\S+)$', text, flags=re.MULTILINE)
    return float(found.group(1)) if found else -1.0


def _names(messages: list[Received]) -> list[tuple[str, str]]:
    return [(m.routing_key, m.body["file_info"]["name"]) for m in messages]


@pytest.mark.parametrize("running", [{"queue": None}], indirect=True)
def test_an_unroutable_head_event_waits_without_duplicates_or_reordering(
        tmp_path: Path, inbox: Path, broker_url: str, port: int, running: Multiwatch) -> None:
    """queue null, the consumer binds file.discovered only: a file_deleted nobody takes is held
    (503 with the reason, a metric, one log line); the files discovered after it wait behind
    it; once file.deleted is bound each event arrives once, in order."""
    mw = running
    declare_queue(broker_url, MINE, binding_key="file.discovered")
    (inbox / "head.txt").write_bytes(b"soon deleted")
    collect(broker_url, MINE, timeout=20, until=lambda ms: len(ms) >= 1,
            binding_key="file.discovered")
    (inbox / "head.txt").unlink()  # file.deleted: bound to nothing
    wait_for(lambda: "unroutable" in _not_ready(port), timeout=20,
             message="/readyz does not say why")
    assert "file.deleted" in _not_ready(port)
    for i in range(4):
        (inbox / f"later-{i}.txt").write_bytes(b"%d" % i)
    db = state_db(tmp_path, "inbox")
    wait_for(lambda: outbox_rows(db) == 5, timeout=20, message="later events not recorded")
    # Several retries of the head, each returned again: nothing else was published.
    wait_for(lambda: _metric(port, "multiwatch_events_unroutable_total") >= 3, timeout=20)
    assert _metric(port, "multiwatch_publish_held") == 1.0
    assert outbox_rows(db) == 5

    _bind(broker_url, MINE, "file.deleted")
    got = collect(broker_url, MINE, timeout=30, until=lambda ms: len(ms) >= 5,
                  binding_key="file.deleted")
    wait_for(lambda: _not_ready(port) == "" and http_request(port, "/readyz")[0] == 200,
             timeout=15, message=f"not ready after binding: {_not_ready(port)!r}")

    assert _names(got)[0] == ("file.deleted", "head.txt"), _names(got)
    assert sorted(_names(got)[1:]) == [("file.discovered", f"later-{i}.txt") for i in range(4)]
    assert len({m.properties["message_id"] for m in got}) == len(got) == 5, _names(got)
    assert _metric(port, "multiwatch_publish_held") == 0.0
    held_lines = [line for line in mw.lines if HELD_LOG in str(line.get("message"))]
    assert len(held_lines) == 1, held_lines
    assert "bind a queue" in held_lines[0]["message"]


@pytest.mark.parametrize("running", [{}], indirect=True)
@pytest.mark.parametrize("how", ["unbind", "delete"])
def test_a_configured_queue_unbound_while_running_loses_no_event(
        tmp_path: Path, inbox: Path, broker_url: str, port: int, running: Multiwatch,
        how: str) -> None:
    """The configured queue's binding (or the queue) is removed while the watcher stays
    connected: the next event is returned, not confirmed-and-dropped; it stays in the outbox
    with the reason shown, and arrives once the binding is back."""
    if how == "unbind":
        _bind(broker_url, "file_events", BINDING_KEY, unbind=True)
    else:
        _delete_queue(broker_url, "file_events")
    (inbox / "kept.txt").write_bytes(b"must not be lost")
    wait_for(lambda: "unroutable" in _not_ready(port), timeout=20,
             message="/readyz does not say why")
    db = state_db(tmp_path, "inbox")
    assert outbox_rows(db) == 1
    _, status, _ = http_request(port, "/status")
    assert "unroutable" in json.loads(status)["instances"]["inbox"]["reason"]

    declare_queue(broker_url, "file_events")  # the queue and its binding, back
    got = collect(broker_url, "file_events", timeout=30, until=lambda ms: len(ms) >= 1)
    assert _names(got) == [("file.discovered", "kept.txt")]
    wait_for(lambda: outbox_rows(db) == 0, timeout=10)


@pytest.mark.parametrize("running", [{"queue": None}], indirect=True)
def test_a_nacked_head_event_waits_and_arrives_once_in_order(
        tmp_path: Path, inbox: Path, broker_url: str, port: int, running: Multiwatch) -> None:
    """queue null, the consumer's queue full (max-length 1, overflow reject-publish): the next
    event is nacked and held (503 with the reason, a metric, one log line saying to make room
    in the queue), the event behind it waits; once the queue is consumed each event arrives
    once, in order."""
    mw = running
    declare_queue(broker_url, MINE, arguments=FULL)
    db = state_db(tmp_path, "inbox")
    (inbox / "n-0.txt").write_bytes(b"fills the queue")
    wait_for(lambda: queue_depth(broker_url, MINE) == 1, timeout=20)
    (inbox / "n-1.txt").write_bytes(b"nacked")
    wait_for(lambda: "nack" in _not_ready(port), timeout=20, message="/readyz does not say why")
    (inbox / "n-2.txt").write_bytes(b"waits behind it")
    wait_for(lambda: outbox_rows(db) == 2, timeout=20, message="n-2 not recorded")
    wait_for(lambda: _metric(port, "multiwatch_events_nacked_total") >= 3, timeout=20)
    assert _metric(port, "multiwatch_publish_held") == 1.0
    assert queue_depth(broker_url, MINE) == 1 and outbox_rows(db) == 2

    got = collect(broker_url, MINE, timeout=30, until=lambda ms: len(ms) >= 3, arguments=FULL)
    wait_for(lambda: http_request(port, "/readyz")[0] == 200, timeout=15,
             message=f"not ready after the queue was consumed: {_not_ready(port)!r}")

    assert [name for _key, name in _names(got)] == ["n-0.txt", "n-1.txt", "n-2.txt"]
    assert len({m.properties["message_id"] for m in got}) == len(got) == 3
    held_lines = [line for line in mw.lines if NACKED_LOG in str(line.get("message"))]
    assert len(held_lines) == 1, held_lines
    assert "make room in the queue" in held_lines[0]["message"]
