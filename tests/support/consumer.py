"""What arrived on the broker: consume-and-count helpers, a poller, connection names.

The topology matches the application's: a durable topic exchange `file_events` and a durable
queue bound to it with `file.#`.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from kombu import Connection, Exchange, Queue
from kombu.message import Message

if TYPE_CHECKING:
    from tests.support.rabbitmq import RabbitMQ

EXCHANGE = "file_events"
BINDING_KEY = "file.#"

T = TypeVar("T")

# Always present in Received.properties (None when the publisher did not set them).
PROPERTY_KEYS = ("content_type", "delivery_mode", "message_id", "correlation_id")


@dataclass(frozen=True)
class Received:
    """One consumed message. `properties` holds the AMQP basic properties except headers."""

    body: dict[str, Any]
    routing_key: str
    properties: dict[str, Any]
    headers: dict[str, Any] = field(default_factory=dict)
    exchange: str = ""
    redelivered: bool = False

    @classmethod
    def from_message(cls, message: Message) -> Received:
        raw = message.body
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise AssertionError(f"message body is not JSON: {raw[:200]!r}") from exc
        if not isinstance(body, dict):  # a test failure, not a programming error
            raise AssertionError(f"message body is not a JSON object: {body!r}")
        props = {k: v for k, v in message.properties.items() if k != "application_headers"}
        for key in PROPERTY_KEYS:
            props.setdefault(key, None)
        info = message.delivery_info
        return cls(
            body=body,
            routing_key=info.get("routing_key", ""),
            properties=props,
            headers=dict(message.headers or {}),
            exchange=info.get("exchange", ""),
            redelivered=bool(info.get("redelivered", False)),
        )


def topology(
    queue: str, *, exchange: str = EXCHANGE, binding_key: str = BINDING_KEY,
    arguments: dict[str, Any] | None = None,
) -> Queue:
    """The application's topology: durable topic exchange, durable queue bound to it
    (`arguments`: the queue's x- arguments, repeated at every declaration)."""
    ex = Exchange(exchange, type="topic", durable=True)
    return Queue(queue, exchange=ex, routing_key=binding_key, durable=True,
                 queue_arguments=arguments)


def declare_queue(
    url: str, queue: str, *, exchange: str = EXCHANGE, binding_key: str = BINDING_KEY,
    arguments: dict[str, Any] | None = None,
) -> None:
    """Declare exchange, queue and binding now, so messages published later are kept."""
    with Connection(url, connect_timeout=10) as conn:
        topology(queue, exchange=exchange, binding_key=binding_key,
                 arguments=arguments)(conn.default_channel).declare()


def collect(
    url: str,
    queue: str,
    *,
    until: Callable[[list[Received]], bool],
    timeout: float,
    exchange: str = EXCHANGE,
    binding_key: str = BINDING_KEY,
    arguments: dict[str, Any] | None = None,
) -> list[Received]:
    """Consume (and ack) from `queue` until `until(received)` is true or `timeout` passes.

    Returns everything that arrived either way; the caller asserts on it. The queue is
    declared and bound first, like the application does.
    """
    received: list[Received] = []
    problems: list[BaseException] = []

    def on_message(message: Message) -> None:
        message.ack()
        try:
            received.append(Received.from_message(message))
        except AssertionError as exc:
            problems.append(exc)

    deadline = time.monotonic() + timeout
    with Connection(url, connect_timeout=10) as conn:
        q = topology(queue, exchange=exchange, binding_key=binding_key, arguments=arguments)
        with conn.Consumer(q, on_message=on_message, prefetch_count=100):
            while not problems and not until(received):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    conn.drain_events(timeout=min(remaining, 0.2))
                except TimeoutError:  # socket.timeout
                    pass
    if problems:
        raise problems[0]
    return received


def wait_for(
    predicate: Callable[[], T], timeout: float, interval: float = 0.05, message: str = ""
) -> T:
    """Poll `predicate` until it returns something truthy (returned) or raise AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(message or f"condition not met within {timeout}s: {predicate!r}")
        time.sleep(interval)


def vhost_of(url: str) -> str:
    """The vhost an AMQP URL names (percent-decoded; '/' when the path is empty)."""
    path = urllib.parse.urlsplit(url).path
    return urllib.parse.unquote(path[1:]) if len(path) > 1 else "/"


def _table(value: Any) -> dict[str, Any]:
    """An AMQP field table as rabbitmqctl's JSON shows it: [[key, type, value], ...] or a dict."""
    if isinstance(value, dict):
        return value
    table: dict[str, Any] = {}
    for item in value or []:
        if isinstance(item, list | tuple) and len(item) == 3:
            key, kind, val = item
            table[str(key)] = _table(val) if kind == "table" else val
        elif isinstance(item, list | tuple) and len(item) == 2:
            table[str(item[0])] = item[1]
    return table


def _json_array(text: str) -> list[dict[str, Any]]:
    """The JSON array in rabbitmqctl output, ignoring any warning lines before it."""
    start = text.find("[")
    if start < 0:
        raise AssertionError(f"no JSON array in rabbitmqctl output: {text!r}")
    rows = json.loads(text[start:])
    if not isinstance(rows, list):
        raise AssertionError(f"rabbitmqctl JSON is not an array: {text!r}")
    return rows


def connection_names(rabbitmq: RabbitMQ, *, vhost: str | None = None) -> list[str]:
    """`connection_name` client property of every open connection (optionally in one vhost).

    Connections that did not set one are left out.
    """
    out = rabbitmq.rabbitmqctl(
        "list_connections", "name", "vhost", "client_properties", "--formatter", "json"
    )
    names = []
    for row in _json_array(out):
        if vhost is not None and row.get("vhost") != vhost:
            continue
        name = _table(row.get("client_properties")).get("connection_name")
        if name is not None:
            names.append(str(name))
    return names
