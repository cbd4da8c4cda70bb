"""Broker plumbing shared by the watcher's publisher and `multiwatch tail`.

One place decides how a kombu Connection is built (AMQP, or the embedded filesystem
spool under state_dir) and what topology is declared, so producer and consumer agree.

Several URLs (a cluster) are tried in turn by `BrokerLink`, one kombu Connection per URL.
kombu's own failover (`alternates` + `Connection.switch`) is not used: `switch` re-parses
the next URL and so drops a callable password, and its cycle restarts with every new
Connection object. A password file is read by a callable that py-amqp calls at every
connect, so a rotated secret is picked up at the next reconnect.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any

import amqp
from kombu import Connection, Exchange, Queue
from kombu.utils.url import parse_url

from multiwatch.broker_errors import (
    CLOSED_BY_SERVER,
    HandshakeClosed,
    describe,
    resolve_host,
    user_of,
)
from multiwatch.config import DEFAULT_QUEUE, BrokerConfig, TlsConfig, mask_url
from multiwatch.config.broker import read_password_file
from multiwatch.config.urls import replace_password
from multiwatch.state_dir import private_dirs

log = logging.getLogger(__name__)


class PasswordFileError(OSError):
    """The password file could not be read at connect time (a vanished or unreadable secret)."""


class PasswordFile:
    """A kombu password callable: the file's content, read afresh at every connect."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self) -> str:
        try:
            return read_password_file(self.path)
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            raise PasswordFileError(
                f"cannot read the broker password file {self.path}: {why}") from None

    def __repr__(self) -> str:  # never the secret
        return f"PasswordFile({self.path!r})"


def spool_dir(state_dir: str) -> str:
    """Where the embedded broker keeps messages (never inside a watched directory)."""
    return os.path.join(state_dir, "spool")


def ssl_options(tls: TlsConfig | None) -> dict[str, Any]:
    """py-amqp's `ssl=` dict for an amqps:// URL (kombu fills in a None server_hostname)."""
    tls = tls or TlsConfig()
    options: dict[str, Any] = {
        "cert_reqs": ssl.CERT_REQUIRED if tls.verify else ssl.CERT_NONE,
    }
    if tls.verify:  # with a server_hostname py-amqp also checks the name (and sends SNI)
        options["server_hostname"] = tls.server_hostname
    if tls.ca_file:
        options["ca_certs"] = tls.ca_file
    if tls.cert_file:
        options["certfile"] = tls.cert_file
    if tls.key_file:
        options["keyfile"] = tls.key_file
    return options


# A connection attempt is the host lookup, the TCP connect and up to three handshake reads
# (Start, Tune, Open-Ok), each bounded by connect_timeout_seconds.
READS_PER_CONNECT = 5


def connect_budget(broker: BrokerConfig) -> float:
    """The longest `BrokerLink.connect()` may take: every URL at its worst (seconds)."""
    return max(len(broker.urls), 1) * READS_PER_CONNECT * broker.connect_timeout_seconds


def open_connection(
    broker: BrokerConfig, state_dir: str, *, connection_name: str | None = None,
    url: str | None = None, on_blocked: Callable[[str], None] | None = None,
    on_unblocked: Callable[[], None] | None = None,
    properties: Mapping[str, str] | None = None,
) -> Connection:
    """A not-yet-connected kombu Connection to `url` (default: the first broker URL).

    Every socket read and write has a deadline: a frozen broker (accepts, never answers)
    raises instead of hanging.  py-amqp blocks in a plain recv() whenever it waits for a
    reply (channel open, declares, confirm_select, Close-Ok); `read_timeout` (py-amqp's
    public option, SO_RCVTIMEO) ends each of those after connect_timeout_seconds.  Reads
    the caller bounds itself (drain_events(timeout=...)) are unaffected.
    on_blocked/on_unblocked: called by py-amqp on Connection.Blocked/Unblocked (an alarm).
    properties: more client properties beside connection_name (a replica's `role`)."""
    if broker.embedded:
        spool = spool_dir(state_dir)
        messages = os.path.join(spool, "messages")
        control = os.path.join(spool, "control")
        for folder in ("messages", "control"):  # 0700, ours: see multiwatch.state_dir
            private_dirs(state_dir, ["spool", folder])
        return Connection(
            "filesystem://",
            transport_options={
                "data_folder_in": messages,
                "data_folder_out": messages,
                "control_folder": control,
                "store_processed": False,
            },
        )
    url = url or broker.urls[0]
    # Confirms are requested and awaited by the publisher itself (pipelined, bounded);
    # the write timeout keeps a frozen broker from blocking a publish forever.
    options: dict[str, object] = {"write_timeout": broker.confirm_timeout_seconds,
                                  "read_timeout": broker.connect_timeout_seconds}
    if on_blocked is not None:
        options["on_blocked"] = on_blocked
    if on_unblocked is not None:
        options["on_unblocked"] = on_unblocked
    if connection_name:
        # Shown by `rabbitmqctl list_connections name client_properties` and the UI.
        options["client_properties"] = {"connection_name": connection_name, **(properties or {})}
    extra: dict[str, Any] = {}
    if broker.password_file:
        # A URL without a password leaves kombu's `password=` in charge.
        url = replace_password(url, None)
        extra["password"] = PasswordFile(broker.password_file)
    if parse_url(url)["transport"] == "amqps":
        extra["ssl"] = ssl_options(broker.tls)
    return Connection(
        url,
        heartbeat=broker.heartbeat_seconds,
        connect_timeout=broker.connect_timeout_seconds,
        transport_options=options,
        **extra,
    )


def connect_once(connection: Connection) -> Connection:
    """Connect with a single attempt (kombu's `connect()` sleeps 2 s and tries again).
    A hang-up before the handshake is done raises HandshakeClosed (described in words)."""
    try:
        connection.ensure_connection(max_retries=0, reraise_as_library_errors=False)
    except OSError as exc:
        if type(exc) is OSError and str(exc) == CLOSED_BY_SERVER:
            raise HandshakeClosed(str(exc)) from exc
        raise
    _bound_tls_reads(connection)
    return connection


def _bound_tls_reads(connection: Connection) -> None:
    """Give a TLS connection's socket a timeout of connect_timeout_seconds.

    `read_timeout` (SO_RCVTIMEO) bounds reads on a plain socket only: CPython's ssl module
    retries a TLS read that the kernel timed out, so a reply py-amqp waits for without a
    timeout of its own (channel open, declare, Close-Ok) would wait forever on a frozen
    node.  A socket timeout ends it; py-amqp's own waits with a timeout set theirs and put
    this one back.  (py-amqp's TLS transport happens to leave its connect timeout there
    too; this does not rely on it.)"""
    sock = getattr(connection.connection, "sock", None)  # py-amqp's Connection.sock
    if isinstance(sock, ssl.SSLSocket) and connection.connect_timeout:
        sock.settimeout(connection.connect_timeout)


class BrokerLink:
    """Connects to the broker's URLs in turn: round-robin failover across a cluster.

    Each `connect()` tries every URL once, starting after the one used last time, so a
    connection lost with its node moves to the next node at once.
    """

    def __init__(self, broker: BrokerConfig, state_dir: str, *,
                 connection_name: str | None = None,
                 on_blocked: Callable[[str], None] | None = None,
                 on_unblocked: Callable[[], None] | None = None,
                 stopping: Callable[[], bool] = lambda: False,
                 properties: Callable[[], Mapping[str, str]] | None = None) -> None:
        """`properties`: asked at each connect for more client properties (the role a
        replica's new connection announces)."""
        self._broker = broker
        self._properties = properties
        self._stopping = stopping  # ends a host lookup early (a stop request)
        self._state_dir = state_dir
        self._connection_name = connection_name
        self._on_blocked = on_blocked
        self._on_unblocked = on_unblocked
        self._next = 0
        self.where = "embedded spool" if broker.embedded else ""  # masked URL now in use
        self.last_url = ""  # the URL tried last, connected or failed (unmasked)

    def connect(self) -> Connection:
        """A connected kombu Connection; the last URL's error if none answers."""
        urls: tuple[str | None, ...] = self._broker.urls or (None,)
        for attempt in range(len(urls)):
            index = (self._next + attempt) % len(urls)
            url = urls[index]
            connection = open_connection(self._broker, self._state_dir, url=url,
                                         connection_name=self._connection_name,
                                         on_blocked=self._on_blocked,
                                         on_unblocked=self._on_unblocked,
                                         properties=self._properties and self._properties())
            self.last_url = url or ""
            try:
                if url is not None:  # the C resolver has no deadline of its own
                    resolve_host(url, self._broker.connect_timeout_seconds, self._stopping)
                connect_once(connection)
            except Exception as exc:
                drop_connection(connection)
                if attempt == len(urls) - 1:
                    self._next = (index + 1) % len(urls)
                    raise
                log.warning("broker unavailable, trying the next URL", extra={
                    "broker": mask_url(str(url)), "user": user_of(str(url)),
                    "error": describe(exc)})
                continue
            self._next = (index + 1) % len(urls)
            if url is not None:
                self.where = mask_url(url)
            return connection
        raise AssertionError("unreachable: at least one URL is tried")


def drop_connection(connection: Connection) -> None:
    """Abandon the connection at once: close its socket without the AMQP close handshake.

    What a failed connection gets: a frozen or blocked broker never answers the Close, and
    py-amqp's `close()` would wait for its Close-Ok.  kombu's `collect()` (public) closes
    the transport and forgets the channels without sending anything."""
    try:
        connection.collect()
    except Exception:
        log.debug("ignored error while dropping a broker connection", exc_info=True)


def close_connection(connection: Connection, *, within: float) -> None:
    """Close politely (Close, then Close-Ok) if the broker answers within `within` seconds;
    drop the socket either way.  A healthy broker answers at once and logs a clean close
    instead of "client unexpectedly closed TCP connection"."""
    try:
        if connection.connected and within > 0:
            _close_handshake(connection.connection, within)
    except Exception:
        log.debug("the broker did not complete the close; dropping the socket", exc_info=True)
    drop_connection(connection)


def _close_handshake(link: amqp.Connection, within: float) -> None:
    """py-amqp's close() without its unbounded wait: send Connection.Close and read
    (bounded) until Close-Ok, whose handler closes the transport (`connected` turns false).
    Uses only public py-amqp methods (send_method, drain_events, connected)."""
    deadline = time.monotonic() + within
    link.send_method(amqp.spec.Connection.Close, "BsBB", (200, "closing", 0, 0))
    while link.connected:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        link.drain_events(timeout=remaining)


def exchange_for(broker: BrokerConfig) -> Exchange:
    return Exchange(broker.exchange, type="topic", durable=True)


def queue_arguments(broker: BrokerConfig) -> dict[str, Any] | None:
    """`x-` arguments every declaration of the queue must repeat (RabbitMQ compares them)."""
    if broker.queue_type == "quorum" and not broker.embedded:
        return {"x-queue-type": "quorum"}
    return None  # classic: declared without arguments, as before queue_type existed


def named_queue(broker: BrokerConfig, name: str) -> Queue:
    """The durable queue `name` bound to the exchange, declared like the publisher does."""
    return Queue(name, exchange_for(broker), routing_key=broker.binding_key, durable=True,
                 queue_arguments=queue_arguments(broker))


def queue_for(broker: BrokerConfig) -> Queue | None:
    """The durable queue to declare, or None when the user declares their own.

    The embedded spool always needs a queue: its transport drops messages that no
    queue is bound to.
    """
    name = broker.queue
    if name is None and broker.embedded:
        name = DEFAULT_QUEUE
    if name is None:
        return None
    return named_queue(broker, name)
