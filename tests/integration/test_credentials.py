"""Broker credentials: a password file rotated without restart, no secret in any log; TLS.

Each password test gets its own RabbitMQ user on its own vhost (deleted afterwards), changes
its password with `rabbitmqctl change_password` and then forces clients to reconnect with
`rabbitmqctl close_all_user_connections`, as an operator rotating a secret would. The TLS
tests share a private node with a TLS listener and certificates made for them
(tests/support/tls.py).
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from multiwatch.broker import close_connection, connect_once, open_connection
from multiwatch.config import BrokerConfig, TlsConfig
from tests.support.consumer import collect, vhost_of, wait_for
from tests.support.faults import FAST_BROKER, is_message, needs_rabbitmqctl
from tests.support.frozen import FreezableProxy
from tests.support.process import LogLine, Multiwatch, free_port, run_cli, write_roster
from tests.support.rabbitmq import RabbitMQ
from tests.support.tls import Pki, make_pki, start_tls_node

QUEUE = "file_events"


@dataclass
class BrokerUser:
    """A RabbitMQ user of the test's vhost, and the URL to reach it without a password."""

    name: str
    password: str
    url: str  # amqp://name@host:port/vhost — the password comes from the file

    def change_password(self, rabbitmq: RabbitMQ, password: str) -> None:
        rabbitmq.rabbitmqctl("change_password", self.name, password)
        self.password = password

    def disconnect(self, rabbitmq: RabbitMQ) -> None:
        rabbitmq.rabbitmqctl("close_all_user_connections", self.name, "password rotated")


@pytest.fixture
def user(rabbitmq: RabbitMQ, broker_url: str) -> Iterator[BrokerUser]:
    """A fresh user with full rights on the test's vhost; deleted after the test."""
    needs_rabbitmqctl(rabbitmq)
    name, password = f"mw-user-{secrets.token_hex(4)}", f"first-{secrets.token_hex(8)}"
    definitions = {
        "users": [{"name": name, "password": password, "tags": ""}],
        "permissions": [{"user": name, "vhost": vhost_of(broker_url),
                         "configure": ".*", "write": ".*", "read": ".*"}],
    }
    with tempfile.TemporaryDirectory(prefix="mw-user-") as tmp:
        path = Path(tmp) / "definitions.json"
        path.write_text(json.dumps(definitions))
        rabbitmq.rabbitmqctl("import_definitions", str(path))
    parts = urllib.parse.urlsplit(broker_url)
    url = urllib.parse.urlunsplit(
        (parts.scheme, f"{name}@{parts.hostname}:{parts.port}", parts.path, "", ""))
    try:
        yield BrokerUser(name, password, url)
    finally:
        rabbitmq.rabbitmqctl("delete_user", name)


def write_secret(path: Path, password: str) -> None:
    """Replace the file atomically, as Kubernetes and Docker update a mounted secret."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secret-")
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    os.replace(tmp, path)


def _roster(tmp_path: Path, url: str, secret: Path, *, http_port: int | None = None) -> Path:
    (tmp_path / "in").mkdir()
    roster: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "log_level": "DEBUG",  # kombu's and py-amqp's own records too: none may leak
        "broker": {"url": url, "password_file": str(secret), **FAST_BROKER},
        "defaults": {"settle_seconds": 0.1},
        "supervisor": {"stop_timeout_seconds": 5},
        "instances": [{"id": "creds", "directory": str(tmp_path / "in")}],
    }
    if http_port is not None:
        roster["http"] = {"listen": f"127.0.0.1:{http_port}"}
    return write_roster(tmp_path / "roster.yaml", roster)


def _connected(line: LogLine) -> bool:
    return is_message(line, "connected to broker", "creds")


def _refused(line: LogLine) -> bool:
    return is_message(line, "broker unavailable, retrying", "creds") and \
        "access refused (wrong user or password)" in str(line.get("error"))


def _names(broker_url: str, *wanted: str) -> set[str]:
    got = collect(broker_url, QUEUE, timeout=30, until=lambda ms: set(wanted) <= {
        m.body["file_info"]["name"] for m in ms})
    return {m.body["file_info"]["name"] for m in got}


def _assert_no_secret(text: str, *passwords: str) -> None:
    for password in passwords:
        assert password not in text, "a password appeared in multiwatch's output"


def test_rotated_password_is_used_without_restart(
        tmp_path: Path, broker_url: str, rabbitmq: RabbitMQ, user: BrokerUser) -> None:
    """After the password changes in RabbitMQ and in the file, events flow on, same process."""
    secret = tmp_path / "rabbitmq-password"
    write_secret(secret, user.password)
    stale_in_url = f"stale-{secrets.token_hex(6)}"  # the file overrides a password in the URL
    url = user.url.replace(f"{user.name}@", f"{user.name}:{stale_in_url}@")
    mw = Multiwatch(["-c", str(_roster(tmp_path, url, secret))])
    try:
        mw.wait_for_log(_connected, timeout=30)
        (tmp_path / "in" / "before.txt").write_text("before the rotation")
        assert "before.txt" in _names(broker_url, "before.txt")
        first, pid = user.password, mw.pid

        mark = len(mw.lines)
        user.change_password(rabbitmq, f"second-{secrets.token_hex(8)}")
        write_secret(secret, user.password)
        user.disconnect(rabbitmq)
        mw.wait_for_log(lambda line: is_message(line, "broker unavailable, retrying", "creds"),
                        timeout=30, after=mark)
        mw.wait_for_log(_connected, timeout=30, after=mark)
        (tmp_path / "in" / "after.txt").write_text("after the rotation")
        assert "after.txt" in _names(broker_url, "after.txt")
        assert mw.process.poll() is None and mw.pid == pid  # never restarted
        assert mw.terminate() == 0
    finally:
        mw.cleanup()
    _assert_no_secret("\n".join(mw.raw), first, user.password, stale_in_url)


def test_wrong_password_is_logged_and_retried_until_the_file_is_fixed(
        tmp_path: Path, broker_url: str, user: BrokerUser) -> None:
    """A refused login is logged clearly and retried; a corrected file is picked up."""
    secret = tmp_path / "rabbitmq-password"
    wrong = f"wrong-{secrets.token_hex(8)}"
    write_secret(secret, wrong)
    port = free_port()
    mw = Multiwatch(["-c", str(_roster(tmp_path, user.url, secret, http_port=port))])
    try:
        (tmp_path / "in" / "waiting.txt").write_text("announced once the login works")
        first = mw.wait_for_log(_refused, timeout=30)
        mw.wait_for_log(_refused, timeout=30, after=mw.lines.index(first) + 1)  # a retry
        assert first["broker"] == user.url and first["user"] == user.name
        assert "Error" not in first["error"]  # words, not Python exception names
        status = wait_for(lambda: _get_status(port), timeout=30, message="no /status")
        assert "access refused (wrong user or password)" in status
        assert f"as user '{user.name}'" in status and user.url in status

        write_secret(secret, user.password)
        mw.wait_for_log(_connected, timeout=30)
        assert "waiting.txt" in _names(broker_url, "waiting.txt")
        status = _get_status(port)
        assert mw.terminate() == 0
    finally:
        mw.cleanup()
    _assert_no_secret("\n".join(mw.raw) + status, wrong, user.password)


def _get_status(port: int) -> str:
    """The /status body once the instance reports a broker error or link, else ""."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/status", timeout=5) as response:
            body = response.read().decode()
    except OSError:
        return ""
    heartbeat = json.loads(body).get("instances", {}).get("creds", {}).get("heartbeat") or {}
    return body if heartbeat.get("last_error") or heartbeat.get("broker_connected") else ""


def test_vanished_password_file_is_retried_until_it_returns(
        tmp_path: Path, broker_url: str, rabbitmq: RabbitMQ, user: BrokerUser) -> None:
    """A secret that disappears at runtime is a logged connection error, not a crash."""
    secret = tmp_path / "rabbitmq-password"
    write_secret(secret, user.password)
    mw = Multiwatch(["-c", str(_roster(tmp_path, user.url, secret))])
    try:
        mw.wait_for_log(_connected, timeout=30)
        mark = len(mw.lines)
        secret.unlink()
        user.disconnect(rabbitmq)
        missing = mw.wait_for_log(
            lambda line: is_message(line, "broker unavailable, retrying", "creds")
            and "cannot read the broker password file" in str(line.get("error")),
            timeout=30, after=mark)
        assert str(secret) in missing["error"] and "No such file" in missing["error"]
        (tmp_path / "in" / "meanwhile.txt").write_text("written while the secret was gone")
        write_secret(secret, user.password)
        mw.wait_for_log(_connected, timeout=30, after=mw.lines.index(missing))
        assert "meanwhile.txt" in _names(broker_url, "meanwhile.txt")
        assert mw.terminate() == 0
    finally:
        mw.cleanup()
    _assert_no_secret("\n".join(mw.raw), user.password)


def test_check_refuses_a_missing_password_file(tmp_path: Path) -> None:
    """`multiwatch check` with an unreadable RABBITMQ_PASS_FILE: exit 2, one clear message."""
    (tmp_path / "in").mkdir()
    result = run_cli("check", env={
        "DATA_DIR": str(tmp_path / "in"), "MULTIWATCH_STATE_DIR": str(tmp_path / "state"),
        "RABBITMQ_HOST": "rabbit", "RABBITMQ_PASS_FILE": str(tmp_path / "absent")})
    assert result.returncode == 2
    assert result.stderr.startswith("multiwatch: error: environment: RABBITMQ_PASS_FILE: ")
    assert str(tmp_path / "absent") in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pki, RabbitMQ, int]]:
    """A private node with a TLS listener that wants a client certificate from our CA."""
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    node, port = start_tls_node(pki)
    try:
        yield pki, node, port
    finally:
        node.stop()


def _tls_roster(tmp_path: Path, port: int, tls: dict[str, str]) -> Path:
    (tmp_path / "in").mkdir()
    return write_roster(tmp_path / "roster.yaml", {
        "state_dir": str(tmp_path / "state"),
        "broker": {"url": f"amqps://guest:guest@localhost:{port}/", "tls": tls, **FAST_BROKER},
        "defaults": {"settle_seconds": 0.1},
        "supervisor": {"stop_timeout_seconds": 5},
        "instances": [{"id": "creds", "directory": str(tmp_path / "in")}],
    })


def test_events_arrive_over_tls_with_a_client_certificate(
        tmp_path: Path, tls_node: tuple[Pki, RabbitMQ, int]) -> None:
    """amqps:// with our CA, a client certificate and key: connected, events delivered."""
    pki, node, port = tls_node
    roster = _tls_roster(tmp_path, port, {
        "ca_file": str(pki.ca), "cert_file": str(pki.client_cert),
        "key_file": str(pki.client_key)})
    mw = Multiwatch(["-c", str(roster)])
    try:
        connected = mw.wait_for_log(_connected, timeout=30)
        assert connected["broker"] == f"amqps://guest:****@localhost:{port}/"
        (tmp_path / "in" / "over-tls.txt").write_text("encrypted on the wire")
        assert "over-tls.txt" in _names(node.amqp_url, "over-tls.txt")  # read back in plain
        assert mw.terminate() == 0
    finally:
        mw.cleanup()


def test_untrusted_broker_certificate_is_logged_and_retried(
        tmp_path: Path, tls_node: tuple[Pki, RabbitMQ, int]) -> None:
    """A broker certificate the configured CA did not sign: a clear logged error, retries."""
    pki, _, port = tls_node
    roster = _tls_roster(tmp_path, port, {
        "ca_file": str(pki.other_ca), "cert_file": str(pki.client_cert),
        "key_file": str(pki.client_key)})
    mw = Multiwatch(["-c", str(roster)])

    def untrusted(line: LogLine) -> bool:
        return is_message(line, "broker unavailable, retrying", "creds") and \
            "CERTIFICATE_VERIFY_FAILED" in str(line.get("error"))

    try:
        first = mw.wait_for_log(untrusted, timeout=30)
        mw.wait_for_log(untrusted, timeout=30, after=mw.lines.index(first) + 1)
        assert not [line for line in mw.lines if _connected(line)]
        assert mw.terminate() == 0
    finally:
        mw.cleanup()


def _ends_within(seconds: float, call: Callable[[], object]) -> BaseException | None:
    """Run `call` on a daemon thread: what it raised (None: returned), or AssertionError
    if it is still waiting after `seconds`."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still waiting after {seconds}s"
    return outcome[0]


def test_a_tls_node_that_freezes_gives_every_read_a_deadline(
        tmp_path: Path, tls_node: tuple[Pki, RabbitMQ, int]) -> None:
    """amqps:// through a node that freezes after the handshake: opening a channel (a reply
    py-amqp waits for with no timeout of its own) fails within connect_timeout, as over
    plain TCP, and the close returns (SO_RCVTIMEO alone does not end a TLS read)."""
    pki, _, port = tls_node
    proxy = FreezableProxy(("127.0.0.1", port))
    try:
        broker = BrokerConfig(
            url=f"amqps://guest:guest@127.0.0.1:{proxy.port}/", connect_timeout_seconds=1.0,
            tls=TlsConfig(ca_file=str(pki.ca), cert_file=str(pki.client_cert),
                          key_file=str(pki.client_key)))
        connection = connect_once(open_connection(broker, str(tmp_path)))
        proxy.freeze()
        failed = _ends_within(10, connection.channel)
        assert isinstance(failed, OSError), failed
        assert _ends_within(10, lambda: close_connection(connection, within=1.0)) is None
    finally:
        proxy.close()
