"""How multiwatch reaches its broker: password files, TLS options, queue arguments, failover."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest

from multiwatch.broker import (
    BrokerLink,
    PasswordFile,
    PasswordFileError,
    open_connection,
    queue_arguments,
    queue_for,
    ssl_options,
)
from multiwatch.config import BrokerConfig, TlsConfig
from tests.support.rabbitmq import free_ports


def test_password_file_is_read_at_every_call(tmp_path: Path) -> None:
    """The password callable sees a rewritten file at once, without its trailing newline."""
    secret = tmp_path / "secret"
    secret.write_text("first\n")
    password = PasswordFile(str(secret))
    assert password() == "first"
    secret.write_text("second\r\n")
    assert password() == "second"
    assert "second" not in repr(password)


def test_vanished_password_file_says_which_file(tmp_path: Path) -> None:
    """A missing secret at connect time is an OSError naming the file, not the password."""
    with pytest.raises(PasswordFileError, match=r"cannot read the broker password file .*gone"):
        PasswordFile(str(tmp_path / "gone"))()


def test_password_file_replaces_the_password_in_the_url(tmp_path: Path) -> None:
    """With a password file, the URL's password is dropped and never shown by kombu."""
    secret = tmp_path / "secret"
    secret.write_text("from-file")
    broker = BrokerConfig(url="amqp://bob:in-url@rabbit:5672/v", password_file=str(secret))
    connection = open_connection(broker, str(tmp_path))
    assert isinstance(connection.password, PasswordFile)
    assert connection.password() == "from-file" and connection.userid == "bob"
    assert "in-url" not in repr(connection) and "from-file" not in repr(connection)


def test_ssl_options_for_py_amqp() -> None:
    """broker.tls becomes py-amqp's ssl dict; verification is on unless switched off."""
    tls = TlsConfig(ca_file="/ca.pem", cert_file="/c.pem", key_file="/c.key",
                    server_hostname="rabbit.internal")
    assert ssl_options(tls) == {
        "cert_reqs": ssl.CERT_REQUIRED, "server_hostname": "rabbit.internal",
        "ca_certs": "/ca.pem", "certfile": "/c.pem", "keyfile": "/c.key"}
    # No tls section: the system CAs, and the URL's host name checked (kombu fills it in).
    assert ssl_options(None) == {"cert_reqs": ssl.CERT_REQUIRED, "server_hostname": None}
    # verify: false must not send a host name, or py-amqp would check it after all.
    assert ssl_options(TlsConfig(verify=False)) == {"cert_reqs": ssl.CERT_NONE}


def test_amqps_urls_get_the_ssl_options(tmp_path: Path) -> None:
    """An amqps:// URL connects with the TLS options; an amqp:// URL with none."""
    tls = TlsConfig(ca_file="/ca.pem")
    secure = open_connection(BrokerConfig(url="amqps://h/", tls=tls), str(tmp_path))
    assert secure.ssl == {"cert_reqs": ssl.CERT_REQUIRED, "server_hostname": None,
                          "ca_certs": "/ca.pem"}
    assert not open_connection(BrokerConfig(url="amqp://h/"), str(tmp_path)).ssl


def test_quorum_queue_arguments_are_declared_everywhere() -> None:
    """queue_type quorum adds x-queue-type; classic and the embedded spool add nothing."""
    quorum = BrokerConfig(url="amqp://h/", queue_type="quorum")
    assert queue_arguments(quorum) == {"x-queue-type": "quorum"}
    queue = queue_for(quorum)
    assert queue is not None
    assert queue.queue_arguments == {"x-queue-type": "quorum"}  # type: ignore[attr-defined]
    assert queue.durable and not queue.exclusive and not queue.auto_delete
    assert queue_arguments(BrokerConfig(url="amqp://h/")) is None
    assert queue_arguments(BrokerConfig(url=None, queue_type="quorum")) is None


def test_broker_link_fails_over_to_the_next_url(
        tmp_path: Path, broker_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A URL that refuses is logged (masked) and the next is used, password file and all."""
    [dead] = free_ports(1)
    dead_url = f"amqp://guest:dead-secret@127.0.0.1:{dead}/"
    live_url = broker_url.replace("guest:guest@", "guest@")  # the password is in the file
    secret = tmp_path / "secret"
    secret.write_text("guest\n")
    broker = BrokerConfig(url=f"{dead_url};{live_url}", connect_timeout_seconds=2,
                          password_file=str(secret))
    link = BrokerLink(broker, str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="multiwatch.broker"):
        connection = link.connect()
    try:
        assert connection.connected
        assert link.where == live_url
    finally:
        connection.release()
    [record] = caplog.records
    assert record.getMessage() == "broker unavailable, trying the next URL"
    assert record.broker == f"amqp://guest:****@127.0.0.1:{dead}/"  # type: ignore[attr-defined]
    assert "dead-secret" not in caplog.text


def test_broker_link_raises_the_last_error_when_no_url_answers(tmp_path: Path) -> None:
    """With every URL down, connect() fails at once (no hidden sleeps) with the last error."""
    first, second = free_ports(2)
    broker = BrokerConfig(url=f"amqp://127.0.0.1:{first}/;amqp://127.0.0.1:{second}/",
                          connect_timeout_seconds=2)
    with pytest.raises(ConnectionRefusedError):
        BrokerLink(broker, str(tmp_path)).connect()
