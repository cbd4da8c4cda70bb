"""Low-level py-amqp I/O for the publisher: batched publishing and non-blocking reads.

Everything here that reaches below py-amqp's public API is in `_coalesced_writes`, which
falls back to plain per-frame writes when py-amqp's transport does not look as expected.
"""

from __future__ import annotations

import contextlib
import select
from collections.abc import Iterator, Sequence

import amqp
from kombu import Connection

from multiwatch.watcher.message import Event

# An idle publisher services the connection (and looks for `multiwatch resync` rows) at
# least this often (seconds): how soon a connection dropped while idle shows, against the
# fixed CPU cost of each wakeup (as the idle heartbeat's, parent_link.py).
IDLE_SERVICE_MAX_SECONDS = 10.0


def publish_frames(connection: Connection, channel: amqp.Channel, exchange: str,
                   events: Sequence[Event]) -> None:
    """Publish each event as basic_publish would (Basic.Publish + content), mandatory, with
    the frames of the whole batch in one socket write.

    kombu's Producer.publish adds nothing these ready-made bytes need, and cost about a
    third of the publisher thread per message.  py-amqp's basic_publish also polls the
    socket before every message (a recv that times out, and two settimeout calls), to
    notice a Connection.Blocked from the broker: the caller does that once per batch.
    Always mandatory: RabbitMQ confirms a message it could not route, so without a
    basic.return an unbound routing key (or a deleted queue or binding) would lose it."""
    with _coalesced_writes(connection):
        for event in events:
            channel.send_method(
                amqp.spec.Basic.Publish, "Bssbb",
                (0, exchange, event.routing_key, True, False),
                amqp.Message(event.body, content_type="application/json",
                             content_encoding="utf-8", delivery_mode=2,
                             message_id=event.message_id,
                             correlation_id=event.correlation_id,
                             application_headers=event.headers))


@contextlib.contextmanager
def _coalesced_writes(connection: Connection) -> Iterator[None]:
    """Send the frames of a whole batch with one socket write instead of one per message.

    py-amqp writes every frame straight to the socket (`transport._write`, the socket's
    sendall; a py-amqp internal); on loopback each of those calls also runs the receiving
    side's TCP work, so in a burst they were the publisher's largest cost.  The frames are
    collected (copied: py-amqp reuses its frame buffer) and written at once when the batch
    is complete.  If the transport does not look as expected, frames go out one by one.
    The write is bounded like any other: the socket's SO_SNDTIMEO (write_timeout)."""
    transport = getattr(connection.connection, "transport", None)
    send = getattr(transport, "_write", None)
    if transport is None or send is None:
        yield
        return
    frames: list[bytes] = []
    own = vars(transport).get("_write")  # TCP: the socket's sendall; TLS: none (a method)
    transport._write = lambda data: frames.append(bytes(data))
    try:
        yield
    finally:
        if own is None:
            del transport._write
        else:
            transport._write = own
    send(b"".join(frames))  # not reached if publishing failed: the connection is dropped


def negotiated_heartbeat(connection: Connection) -> float:
    """The heartbeat interval agreed with the broker (seconds; 0: none)."""
    return float(getattr(connection.connection, "heartbeat", 0) or 0)


def heartbeat_service_interval(connection: Connection) -> float:
    """How often an idle publisher services the connection (seconds): a quarter of the
    negotiated heartbeat (py-amqp sends one after half of it), at most
    IDLE_SERVICE_MAX_SECONDS so a connection dropped while idle is noticed within seconds."""
    negotiated = negotiated_heartbeat(connection)
    if negotiated > 0:
        return max(0.5, min(IDLE_SERVICE_MAX_SECONDS, negotiated / 4))
    return IDLE_SERVICE_MAX_SECONDS


def read_pending_frames(connection: Connection) -> None:
    """Handle what the broker sent (acks, Connection.Blocked, a close) without blocking.

    Nothing to read (the usual case while idle) is found with one poll() instead of
    py-amqp's read attempt (two settimeout calls and a timed-out recv, raised through
    its frame reader)."""
    if not _input_waiting(connection):
        return
    try:
        connection.drain_events(timeout=0)
    except TimeoutError:
        pass


def _input_waiting(connection: Connection) -> bool:
    """True unless it is certain a read would find nothing: nothing buffered by py-amqp
    or TLS, and the socket neither readable nor at EOF or in error.  A transport that
    does not look as expected (py-amqp internals) counts as having input."""
    transport = getattr(connection.connection, "transport", None)
    sock = getattr(transport, "sock", None)
    if sock is None or getattr(transport, "_read_buffer", None) != b"":
        return True
    pending = getattr(sock, "pending", None)  # ssl.SSLSocket: decrypted bytes held back
    if pending is not None and pending():
        return True
    poll = select.poll()
    try:
        poll.register(sock.fileno(), select.POLLIN)
    except (OSError, ValueError):
        return True  # (a closed socket: the read reports it)
    return bool(poll.poll(0))


def service_heartbeat(connection: Connection) -> None:
    """Read pending frames and send/check heartbeats without blocking."""
    read_pending_frames(connection)
    connection.heartbeat_check()
