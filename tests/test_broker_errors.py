"""Broker failures in words, and a host lookup that keeps its deadline."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import amqp.exceptions
import pytest

from multiwatch.broker import BrokerLink
from multiwatch.broker_errors import HostLookupTimeout, describe, resolve_host, user_of, where
from multiwatch.config import BrokerConfig
from tests.support.process import free_port


@pytest.fixture
def dead_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """getaddrinfo blocks, as with an unreachable DNS server, until the test ends."""
    release = threading.Event()
    real = socket.getaddrinfo

    def hanging(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "hangs.example":
            release.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    yield release
    release.set()


def test_a_dead_dns_server_costs_the_connect_timeout_not_more(
        tmp_path: Path, dead_dns: threading.Event) -> None:
    """A host lookup that never answers ends after connect_timeout with a sentence."""
    broker = BrokerConfig(url="amqp://bob:pw@hangs.example:5672/", connect_timeout_seconds=1)
    started = time.monotonic()
    with pytest.raises(HostLookupTimeout) as raised:
        BrokerLink(broker, str(tmp_path)).connect()
    assert time.monotonic() - started < 2.5
    assert "hangs.example" in describe(raised.value) and "within 1s" in describe(raised.value)


def test_a_stop_request_ends_a_hanging_lookup_at_once(dead_dns: threading.Event) -> None:
    """A stop during a hanging lookup returns within a poll, not after the timeout."""
    started = time.monotonic()
    with pytest.raises(HostLookupTimeout) as raised:
        resolve_host("amqp://hangs.example/", 30, stopping=lambda: True)
    assert time.monotonic() - started < 1.0
    # what the log line of the stop says: not the 30 s it did not wait
    assert "stopping" in str(raised.value) and "within 30s" not in str(raised.value)


def test_real_failures_are_described_in_words(tmp_path: Path) -> None:
    """A closed port and an unknown host fail with words, not exception names."""
    for url, words in [(f"amqp://127.0.0.1:{free_port()}//", "connection refused"),
                       ("amqp://nonexistent.invalid:5672//", "host not found")]:
        broker = BrokerConfig(url=url, connect_timeout_seconds=2)
        with pytest.raises(Exception) as raised:  # the words are the point
            BrokerLink(broker, str(tmp_path)).connect()
        assert describe(raised.value).startswith(words), describe(raised.value)


def test_access_refused_reads_as_wrong_user_or_password() -> None:
    """py-amqp's 403 says what to check."""
    refused = amqp.exceptions.AccessRefused("ACCESS_REFUSED - Login was refused")
    assert describe(refused).startswith("access refused (wrong user or password); the broker")


def test_where_names_the_user_and_masks_the_password() -> None:
    """The URL and user are named; the password never is."""
    assert where("amqp://bob:s3cret@h:5672/v") == "amqp://bob:****@h:5672/v as user 'bob'"
    assert user_of("amqp://h:5672/") == "guest"


def test_a_port_that_is_not_amqp_is_described_in_words(tmp_path: Path) -> None:
    """A server that answers the AMQP header with something else and hangs up (an HTTP port,
    a TLS-only listener reached with amqp://) reads as such, not "Server unexpectedly
    closed connection"."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)

        def answer_http() -> None:
            client, _ = server.accept()
            with client:
                client.recv(8)
                client.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        threading.Thread(target=answer_http, daemon=True).start()
        port = server.getsockname()[1]
        broker = BrokerConfig(url=f"amqp://127.0.0.1:{port}//", connect_timeout_seconds=2)
        with pytest.raises(OSError) as raised:
            BrokerLink(broker, str(tmp_path)).connect()
    words = describe(raised.value)
    assert words.startswith("the server closed the connection during the AMQP handshake"), words
    assert "amqps://" in words
