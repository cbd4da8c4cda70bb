"""A hostile broker: refused logins and vhosts, a clashing exchange, connections closed by the
broker. Each gives a clear logged error, retries with backoff, /readyz 503, and recovery once
fixed. Then secrets: a password never shows up in logs, `check`, /status, /metrics or process
titles, even when the login fails.

TLS with a bad certificate is not covered here: TLS support is being added by another change.
"""

from __future__ import annotations

import functools
import itertools
import json
import urllib.parse
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
from kombu import Connection, Exchange

from tests.support.consumer import collect, vhost_of, wait_for
from tests.support.faults import FAST_BROKER
from tests.support.hostile import (
    broker_user,
    figure,
    http_request,
    instance_view,
    is_log,
    log_text,
    process_tree,
    roster,
    url_with_user,
)
from tests.support.process import LogLine, Multiwatch, free_port, run_cli
from tests.support.rabbitmq import RabbitMQ

RETRYING = "broker unavailable, retrying"


@pytest.fixture(autouse=True)
def _rabbitmqctl(rabbitmq: RabbitMQ) -> None:
    if not rabbitmq.has_rabbitmqctl:
        pytest.skip("needs rabbitmqctl for the test broker")


def _start(tmp_path: Path, url: str, port: int, env: dict[str, str] | None = None,
           **kwargs: Any) -> Multiwatch:
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    path = roster(tmp_path, [{"id": "inbox", "directory": str(inbox)}],
                  broker={"url": url, **FAST_BROKER}, http_port=port, **kwargs)
    return Multiwatch(["-c", str(path)], env=env)


def _retries(mw: Multiwatch) -> list[LogLine]:
    return [x for x in list(mw.lines) if is_log(x, RETRYING, "inbox")]


def _when(line: LogLine) -> float:
    return datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()


def _assert_refused_with_backoff(mw: Multiwatch, port: int, *problem: str) -> None:
    """The watcher logs the broker's reason, retries no sooner than the delay it announced,
    and /readyz answers 503 naming the instance and the reason."""
    wait_for(lambda: len(_retries(mw)) >= 3, timeout=30,
             message=f"fewer than 3 retry lines; last lines: {mw.raw[-5:]}")
    retries = _retries(mw)
    figure(f"broker refusal logged as {retries[0]['message']!r}: {retries[0]['error']}; "
           f"retry_in_seconds {[r['retry_in_seconds'] for r in retries]}")
    for line in retries:
        assert all(word in line["error"] for word in problem), line["error"]
        assert 0 <= line["retry_in_seconds"] <= FAST_BROKER["reconnect_max_seconds"]
    for earlier, later in itertools.pairwise(retries):
        assert _when(later) - _when(earlier) >= earlier["retry_in_seconds"] - 0.05
    def not_ready_because() -> str:
        code, body, _ = http_request(port, "/readyz")
        if code != 503:
            return ""
        reasons = json.loads(body).get("not_ready", [])
        return " | ".join(f"{r['instance_id']}: {r['reason']}" for r in reasons)

    wait_for(lambda: problem[0] in not_ready_because(), timeout=15,
             message=f"/readyz does not say why: {not_ready_because()!r}")
    assert not_ready_because().startswith("inbox: broker not connected: ")


def _recovers_and_delivers(mw: Multiwatch, port: int, tmp_path: Path, url: str) -> None:
    wait_for(lambda: http_request(port, "/readyz")[0] == 200, timeout=30,
             message=f"not ready after the fix; last lines: {mw.raw[-5:]}")
    (tmp_path / "inbox" / "after-fix.mp3").write_bytes(b"delivered")
    messages = collect(url, "file_events", timeout=30, until=lambda ms: any(
        m.body["file_info"]["name"] == "after-fix.mp3" for m in ms))
    assert "after-fix.mp3" in {m.body["file_info"]["name"] for m in messages}


def test_wrong_credentials(tmp_path: Path, broker_url: str, rabbitmq: RabbitMQ) -> None:
    """Wrong password: ACCESS_REFUSED logged, retried with backoff, /readyz 503; once the
    broker accepts the password, ready again and files are delivered."""
    port = free_port()
    with broker_user(rabbitmq, broker_url, "the-right-one") as user:
        mw = _start(tmp_path, url_with_user(broker_url, user, "used-by-multiwatch"), port)
        try:
            mw.wait_watching("inbox")
            _assert_refused_with_backoff(mw, port, "ACCESS_REFUSED")
            rabbitmq.rabbitmqctl("change_password", user, "used-by-multiwatch")
            _recovers_and_delivers(mw, port, tmp_path, broker_url)
        finally:
            mw.cleanup()


@pytest.mark.parametrize("permissions", [None, ("", "", "")], ids=["no-entry", "empty-regex"])
def test_vhost_without_permission(tmp_path: Path, broker_url: str, rabbitmq: RabbitMQ,
                                  permissions: tuple[str, str, str] | None) -> None:
    """A user with no rights on the vhost (no permission entry, or empty regexes): the refusal
    is logged naming the vhost or the exchange, retried, /readyz 503; granting the rights
    makes it ready and deliver."""
    port = free_port()
    vhost = vhost_of(broker_url)
    with broker_user(rabbitmq, broker_url, "pw", permissions=permissions) as user:
        mw = _start(tmp_path, url_with_user(broker_url, user, "pw"), port)
        try:
            mw.wait_watching("inbox")
            if permissions is None:
                _assert_refused_with_backoff(mw, port, "access to vhost", vhost, "refused")
            else:
                _assert_refused_with_backoff(mw, port, "ACCESS_REFUSED", "file_events")
            rabbitmq.rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
            _recovers_and_delivers(mw, port, tmp_path, broker_url)
        finally:
            mw.cleanup()


def test_exchange_declared_with_another_type(tmp_path: Path, broker_url: str) -> None:
    """file_events already declared as a direct exchange: the type clash is logged
    (PRECONDITION_FAILED, inequivalent type), retried, /readyz 503; once the exchange is
    deleted the watcher declares its own and delivers."""
    port = free_port()
    with Connection(broker_url, connect_timeout=10) as conn:
        Exchange("file_events", type="direct", durable=True)(conn.default_channel).declare()
    mw = _start(tmp_path, broker_url, port)
    try:
        mw.wait_watching("inbox")
        _assert_refused_with_backoff(mw, port, "PRECONDITION_FAILED", "type")
        with Connection(broker_url, connect_timeout=10) as conn:
            conn.default_channel.exchange_delete("file_events")
        _recovers_and_delivers(mw, port, tmp_path, broker_url)
    finally:
        mw.cleanup()


def test_connection_closed_by_the_broker(tmp_path: Path, broker_url: str,
                                        rabbitmq: RabbitMQ) -> None:
    """An operator closes the watcher's connection with a reason: the reason is logged, the
    watcher reconnects on its own, and files dropped afterwards are delivered."""
    port = free_port()
    mw = _start(tmp_path, broker_url, port)
    try:
        wait_for(lambda: http_request(port, "/readyz")[0] == 200, timeout=30)
        connected = len([x for x in mw.lines if is_log(x, "connected to broker", "inbox")])
        reason = f"hostile-test maintenance {uuid.uuid4().hex[:8]}"
        rabbitmq.rabbitmqctl("close_all_connections", "-p", vhost_of(broker_url),
                             "--limit", "10", reason)
        line = mw.wait_for_log(lambda x: is_log(x, RETRYING, "inbox"), timeout=30)
        figure(f"connection closed by the broker logged as {line['message']!r}: {line['error']}")
        assert "CONNECTION_FORCED" in line["error"] and reason in line["error"]
        assert line["error"].startswith("the broker closed the connection"), line["error"]
        wait_for(lambda: len([x for x in mw.lines if is_log(x, "connected to broker", "inbox")])
                 > connected, timeout=30, message="did not reconnect after being closed")
        _recovers_and_delivers(mw, port, tmp_path, broker_url)
    finally:
        mw.cleanup()


# ---- secrets ------------------------------------------------------------------------------


def _forms(secret: str) -> list[str]:
    return [secret, urllib.parse.quote(secret, safe=""), secret[::-1]]


def _leaks(secret: str, **texts: str) -> dict[str, str]:
    """Which of `texts` contain the secret (or its URL-quoted or reversed form)."""
    found = {}
    for name, text in texts.items():
        for form in _forms(secret):
            at = text.find(form)
            if at >= 0:
                found[name] = text[max(0, at - 80):at + 80]
    return found


def _process_titles(pid: int) -> str:
    parts = []
    for process in process_tree(pid):
        try:
            parts.append(" ".join(process.cmdline()))
            parts.append(process.name())
            with open(f"/proc/{process.pid}/comm") as comm:
                parts.append(comm.read())
        except (psutil.NoSuchProcess, FileNotFoundError):
            continue
    return "\n".join(parts)


def _ready(port: int) -> bool:
    return http_request(port, "/readyz")[0] == 200


def _retried(mw: Multiwatch, times: int) -> bool:
    return len(_retries(mw)) >= times


def _heartbeat(port: int) -> bool:
    return bool(instance_view(port, "inbox").get("heartbeat"))


def _endpoint_texts(port: int) -> dict[str, str]:
    return {path: http_request(port, path)[1]
            for path in ("/status", "/metrics", "/readyz", "/healthz", "/")}


def test_password_never_appears_anywhere(tmp_path: Path, broker_url: str,
                                         rabbitmq: RabbitMQ) -> None:
    """With RABBITMQ_PASS a distinctive secret, it appears in no log line (DEBUG, kombu's and
    amqp's own included), no `check` or `status` output, no /status, /metrics, /readyz or /
    answer and no process title or command line: neither while connected nor when a wrong
    secret makes every login fail."""
    secret = f"Hush{uuid.uuid4().hex[:16]}Zq"
    wrong = f"Nope{uuid.uuid4().hex[:16]}Xw"
    parts = urllib.parse.urlsplit(broker_url)
    with broker_user(rabbitmq, broker_url, secret) as user:
        url = f"amqp://{user}:${{RABBITMQ_PASS}}@{parts.hostname}:{parts.port}{parts.path}"
        for password, connects in ((secret, True), (wrong, False)):
            run_dir = tmp_path / ("right" if connects else "wrong")
            run_dir.mkdir()
            port = free_port()
            env = {"RABBITMQ_PASS": password}
            mw = _start(run_dir, url, port, env=env, log_level="DEBUG")
            texts: dict[str, str] = {}
            try:
                mw.wait_watching("inbox")
                if connects:
                    wait_for(functools.partial(_ready, port), timeout=30)
                    (run_dir / "inbox" / "song.mp3").write_bytes(b"la la")
                    collect(broker_url, "file_events", timeout=30, until=lambda ms: len(ms) >= 1)
                else:
                    wait_for(functools.partial(_retried, mw, 2), timeout=30)
                    assert "ACCESS_REFUSED" in _retries(mw)[0]["error"]
                wait_for(functools.partial(_heartbeat, port), timeout=15)
                texts |= _endpoint_texts(port)
                texts["titles"] = _process_titles(mw.pid)
                texts["status-command"] = run_cli("status", "-c", str(run_dir / "roster.yaml"),
                                                  env=env).stdout
                check = run_cli("check", "-c", str(run_dir / "roster.yaml"), env=env)
                assert check.returncode == 0, check.stderr
                texts["check"] = check.stdout + check.stderr
            finally:
                mw.cleanup()
            texts["logs"] = log_text(mw)
            assert any("amqp" in x.get("logger", "") or "kombu" in x.get("logger", "")
                       for x in mw.lines), "no kombu/amqp debug lines to look through"
            assert _leaks(password, **texts) == {}
            assert _leaks(secret, **texts) == {}

    literal = roster(tmp_path / "right", [{"id": "inbox",
                                           "directory": str(tmp_path / "right" / "inbox")}],
                     broker={"url": f"amqp://{user}:{secret}@{parts.hostname}:{parts.port}/"})
    check = run_cli("check", "-c", str(literal))
    assert check.returncode == 0, check.stderr
    assert _leaks(secret, check=check.stdout + check.stderr) == {}
