"""Broker failures in words, and a host lookup with a deadline.

An operator reading "broker unavailable" needs to know which URL, as whom, and what went
wrong in words ("access refused (wrong user or password)", "host not found"), not a Python
exception name (`gaierror: [Errno -2] …`).  `describe` turns the exceptions py-amqp, the
socket layer and ssl raise into such words; anything unknown keeps its own text.

`resolve_host` runs getaddrinfo in a daemon thread so the caller waits at most its deadline:
the C resolver has no timeout of its own (a dead DNS server can hold it for tens of
seconds), and a thread blocked in it cannot be interrupted, only abandoned.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable
from urllib.parse import unquote

import amqp.exceptions
from kombu.utils.url import parse_url

from multiwatch.config.broker import mask_url

DEFAULT_USER = "guest"  # what py-amqp logs in as when the URL names no user
# What py-amqp's heartbeat_check raises (as ConnectionForced, with no method: the broker sent
# nothing) when the broker has been silent for two heartbeats: a frozen node, a cut path.
HEARTBEATS_MISSED = "Too many heartbeats missed"
RESOLVE_POLL_SECONDS = 0.1


class HostLookupTimeout(OSError):
    """The broker host's name did not resolve within the deadline."""


# What py-amqp raises (a bare OSError) when the server hangs up on a read.
CLOSED_BY_SERVER = "Server unexpectedly closed connection"


class HandshakeClosed(OSError):
    """The server hung up before the AMQP handshake was done (broker.connect_once): not an
    AMQP port (HTTP, a TLS-only listener reached with amqp://), or a broker refusing."""


def user_of(url: str) -> str:
    """The user a URL logs in as (py-amqp's default when it names none)."""
    userid = parse_url(url).get("userid")
    return unquote(userid) if userid else DEFAULT_USER


def where(url: str) -> str:
    """`at URL as user NAME`, the password masked: for log lines and status reasons."""
    return f"{mask_url(url)} as user {user_of(url)!r}"


def describe(exc: BaseException) -> str:
    """What went wrong, in words an operator acts on."""
    if isinstance(exc, amqp.exceptions.ConnectionForced) and exc.method_sig is None \
            and _reply_text(exc) == HEARTBEATS_MISSED:
        return ("no heartbeat from the broker in time (a frozen or paused node, or a cut "
                "network path)")
    if isinstance(exc, amqp.exceptions.AMQPError):
        return f"{_amqp_words(exc)}; the broker said: {_reply_text(exc)}"
    if isinstance(exc, HostLookupTimeout):
        return str(exc)
    if isinstance(exc, HandshakeClosed):
        return ("the server closed the connection during the AMQP handshake (is it an AMQP "
                "port? a TLS-only port needs amqps://; else the broker's log says why)")
    if isinstance(exc, socket.gaierror):
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            return "host not found"
        if exc.errno == socket.EAI_AGAIN:
            return "host lookup failed (the DNS server did not answer)"
        return f"host lookup failed: {exc.strerror or exc}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted ({exc.verify_message}): {exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens on that host and port)"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the broker"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no answer in time (timed out)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    text = str(exc)
    return text if text else type(exc).__name__


def _amqp_words(exc: amqp.exceptions.AMQPError) -> str:
    """The broker's reply code in words (its reply text follows, for the details)."""
    if isinstance(exc, amqp.exceptions.AccessRefused):
        if "login was refused" in _reply_text(exc).lower():
            return "access refused (wrong user or password)"
        return "access refused (the user lacks a permission)"
    if isinstance(exc, amqp.exceptions.NotAllowed):
        return "access refused to the virtual host (no permission, or no such vhost)"
    if isinstance(exc, amqp.exceptions.NotFound):
        return "not found on the broker"
    if isinstance(exc, amqp.exceptions.PreconditionFailed):
        return "declared differently on the broker"
    if isinstance(exc, amqp.exceptions.ResourceLocked):
        return "in use by another connection (exclusive)"
    if isinstance(exc, amqp.exceptions.ConnectionForced):  # an operator, or the node stopping
        return "the broker closed the connection"
    return "the broker refused"


def _reply_text(exc: amqp.exceptions.AMQPError) -> str:
    return str(getattr(exc, "reply_text", "") or exc)


def resolve_host(url: str, within: float,
                 stopping: Callable[[], bool] = lambda: False) -> None:
    """Look up the URL's host; raise socket.gaierror if it does not exist and
    HostLookupTimeout if no answer comes within `within` seconds (or `stopping()` turns
    true first).  IP literals and the embedded spool need no lookup."""
    parts = parse_url(url)
    host = parts.get("hostname")
    if not host or _is_ip(host):
        return
    port = parts.get("port") or 5672
    outcome: list[BaseException | None] = []
    done = threading.Event()

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
            outcome.append(exc)
        done.set()

    threading.Thread(target=lookup, name=f"resolve-{host}", daemon=True).start()
    started = time.monotonic()
    deadline = started + within
    while not done.wait(min(RESOLVE_POLL_SECONDS, max(0.0, deadline - time.monotonic()))):
        if stopping():
            raise HostLookupTimeout(f"host lookup of {host!r} abandoned after "
                                    f"{time.monotonic() - started:.1f}s without an answer: "
                                    "stopping")
        if time.monotonic() >= deadline:
            raise HostLookupTimeout(f"host lookup of {host!r} gave no answer within "
                                    f"{within:g}s (is the DNS server reachable?)")
    if outcome and outcome[0] is not None:
        raise outcome[0]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
