"""The supervisor's HTTP endpoint as probes, scrapers and people meet it, over real HTTP."""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from multiwatch.supervisor import http_server, identity
from multiwatch.supervisor.http import HttpListenError, start_http_server
from tests.support.consumer import wait_for
from tests.support.fleet_view import fleet, get, heartbeat, instance, serve

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _json(url: str) -> tuple[int, object]:
    status, _, body = get(url)
    return status, json.loads(body)


# ---------------------------------------------------------------- probes


def test_healthz_is_ok_while_the_loop_turns() -> None:
    """/healthz answers 200 {"status": "ok"} when the supervisor loop turned recently."""
    with serve(fleet({"a": instance()}, loop_age=0.3)) as (server, _):
        status, body = _json(f"{server.url}/healthz")
    assert status == 200
    assert body == {"status": "ok", "loop_age_seconds": 0.3}


def test_healthz_fails_when_the_loop_stalls() -> None:
    """/healthz answers 503 once the loop has not turned for 10 s, and says so."""
    with serve(fleet({"a": instance()}, loop_age=42.0)) as (server, _):
        status, body = _json(f"{server.url}/healthz")
    assert status == 503
    assert isinstance(body, dict) and body["status"] == "stalled" and "42 s" in body["reason"]


def test_readyz_is_ok_when_every_instance_runs_connected() -> None:
    """/readyz answers 200 when all instances are RUNNING with their broker connected."""
    with serve(fleet({"a": instance(), "b": instance()})) as (server, _):
        status, body = _json(f"{server.url}/readyz")
    assert status == 200
    assert body == {"status": "ready", "instances": 2}


def test_readyz_lists_each_instance_that_is_not_ready_and_why() -> None:
    """/readyz answers 503 naming every not-ready instance with its state or broker problem."""
    view = fleet({
        "ok": instance(),
        "crashing": instance("BACKOFF", pid=None, last_exit="exit status 1"),
        "unmounted": instance("WAITING", reason="directory missing"),
        "offline": instance(heartbeat=heartbeat(broker_connected=False,
                                                last_error="connection refused")),
        "fresh": instance("RUNNING", heartbeat={}),
    })
    with serve(view) as (server, _):
        status, body = _json(f"{server.url}/readyz")
    assert status == 503
    assert isinstance(body, dict) and body["status"] == "not ready"
    assert {item["instance_id"]: item["reason"] for item in body["not_ready"]} == {
        "crashing": "state BACKOFF: exit status 1",
        "unmounted": "state WAITING: directory missing",
        "offline": "broker not connected: connection refused",
        "fresh": "no heartbeat with the broker link yet",
    }


def test_readyz_is_not_ready_while_an_event_is_held_or_the_broker_blocks() -> None:
    """Connected but with an unroutable event held (or blocked by an alarm): 503 with the
    watcher's reason, so an operator sees which routing key nobody binds."""
    held = "publishing held: event m1 (routing key 'file.deleted') is unroutable: NO_ROUTE"
    blocked = "the broker blocked the connection: low on memory"
    view = fleet({"ok": instance(), "held": instance(heartbeat=heartbeat(problem=held)),
                  "blocked": instance(heartbeat=heartbeat(problem=blocked))})
    with serve(view) as (server, _):
        status, body = _json(f"{server.url}/readyz")
    assert status == 503
    assert isinstance(body, dict)
    assert {item["instance_id"]: item["reason"] for item in body["not_ready"]} == {
        "held": held, "blocked": blocked}


def test_readyz_is_not_ready_without_instances() -> None:
    """/readyz answers 503 when there is no instance at all."""
    with serve(fleet({})) as (server, _):
        status, body = _json(f"{server.url}/readyz")
    assert status == 503 and isinstance(body, dict) and body["reason"] == "no instances"


def test_readyz_follows_the_fleet() -> None:
    """/readyz turns 503 when a broker link drops and 200 again when it is back."""
    with serve(fleet({"a": instance()})) as (server, holder):
        assert get(f"{server.url}/readyz")[0] == 200
        holder.view["instances"]["a"]["heartbeat"]["broker_connected"] = False
        assert get(f"{server.url}/readyz")[0] == 503
        holder.view["instances"]["a"]["heartbeat"]["broker_connected"] = True
        assert get(f"{server.url}/readyz")[0] == 200


# ---------------------------------------------------------------- status and metrics


def test_status_serves_the_fleet_view_as_json() -> None:
    """/status returns exactly the supervisor's fleet view, as JSON."""
    view = fleet({"a": instance(), "b": instance("BACKOFF", last_exit="killed by SIGKILL")})
    with serve(view) as (server, _):
        status, headers, body = get(f"{server.url}/status")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == view


def test_metrics_are_prometheus_text_with_the_heartbeat_counts() -> None:
    """/metrics parses with prometheus-client and counts what each instance reported."""
    view = fleet({"music": instance(heartbeat=heartbeat(events={"file_discovered": 12}))})
    with serve(view) as (server, _):
        status, headers, body = get(f"{server.url}/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {(s.name, s.labels.get("instance_id")): s.value
               for family in text_string_to_metric_families(body.decode())
               for s in family.samples}
    assert samples[("multiwatch_files_discovered_total", "music")] == 12
    assert samples[("multiwatch_instance_up", "music")] == 1
    assert samples[("multiwatch_supervisor_rss_bytes", None)] == 30 * 1048576


# ---------------------------------------------------------------- the page


def test_page_shows_one_escaped_row_per_instance_and_refreshes() -> None:
    """/ is an HTML page refreshing every 5 s with a row per instance; ids are escaped."""
    view = fleet({"<b>": instance(), "books": instance("BACKOFF", last_exit="exit status 3")})
    with serve(view) as (server, _):
        status, headers, body = get(f"{server.url}/")
    page = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert '<meta http-equiv="refresh" content="5">' in page
    assert "&lt;b&gt;" in page and "<b>" not in page
    assert page.count("<tr><td") == 2
    books = next(row for row in page.split("<tr>") if "books" in row)
    assert "BACKOFF" in books and "exit status 3" in books
    assert ">up<" in page and "40.0" in page  # broker link and RSS in MiB
    assert "<script" not in page and "<form" not in page


# ---------------------------------------------------------------- read-only, robust


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "BREW"])
def test_only_get_is_served(method: str) -> None:
    """Every method but GET gets 405 with Allow: GET, on every path."""
    with serve(fleet({"a": instance()})) as (server, _):
        for path in ("/status", "/metrics", "/nowhere"):
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
            connection.request(method, path, body=b"{}")
            response = connection.getresponse()
            response.read()
            connection.close()
            assert (response.status, response.getheader("Allow")) == (405, "GET")


def test_unknown_path_is_404_and_query_strings_are_ignored() -> None:
    """An unknown path answers 404 listing the pages; `?query` does not change the page."""
    with serve(fleet({"a": instance()})) as (server, _):
        status, body = _json(f"{server.url}/admin")
        assert status == 404 and isinstance(body, dict) and "/metrics" in body["pages"]
        assert get(f"{server.url}/healthz?verbose=1")[0] == 200


def test_a_failing_view_answers_500_and_the_server_lives_on() -> None:
    """If the fleet view raises, that request fails (503 on probes) and the next one works."""
    calls = [0]

    def flaky() -> dict[str, object]:
        calls[0] += 1
        if calls[0] <= 2:
            raise RuntimeError("boom")
        return fleet({"a": instance()})

    server = start_http_server("127.0.0.1:0", flaky)
    try:
        assert get(f"{server.url}/status")[0] == 500
        assert get(f"{server.url}/readyz")[0] == 503
        assert get(f"{server.url}/readyz")[0] == 200
    finally:
        server.close()


def test_port_in_use_is_a_clear_error() -> None:
    """Binding a port that is taken raises an OSError naming http.listen and the reason."""
    with serve(fleet({})) as (server, _):
        listen = f"127.0.0.1:{server.port}"
        with pytest.raises(HttpListenError) as info:
            start_http_server(listen, lambda: fleet({}))
    assert isinstance(info.value, OSError)
    assert str(info.value) == f"http.listen {listen}: address already in use"


def test_close_frees_the_port() -> None:
    """After close() nothing listens any more and the port can be bound again."""
    server = start_http_server("127.0.0.1:0", lambda: fleet({}))
    port = server.port
    server.close()
    server.close()  # twice is harmless
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    again = start_http_server(f"127.0.0.1:{port}", lambda: fleet({}))
    again.close()


def _wakeups(thread: threading.Thread) -> int:
    """Voluntary context switches of one thread (each sleep it wakes from counts one)."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    return int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.MULTILINE)[1])  # type: ignore[index]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_an_idle_endpoint_sleeps_and_still_closes_at_once() -> None:
    """Between requests the accepting thread does not wake (no shutdown polling), it still
    answers, and close() returns at once."""
    with serve(fleet({"a": instance()})) as (server, _):
        assert get(f"{server.url}/healthz")[0] == 200
        thread = next(t for t in threading.enumerate() if t.name == "multiwatch-http")
        before = _wakeups(thread)
        time.sleep(1.0)  # the window in which a 0.2 s shutdown poll would wake 5 times
        assert _wakeups(thread) - before <= 1
        assert get(f"{server.url}/healthz")[0] == 200
        started = time.monotonic()
        server.close()
        assert time.monotonic() - started < 0.5
        assert not thread.is_alive()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_listen_address() -> None:
    """`[::1]:port` listens on IPv6 loopback and the URL carries the brackets."""
    server = start_http_server("[::1]:0", lambda: fleet({"a": instance()}))
    try:
        assert server.url == f"http://[::1]:{server.port}"
        assert get(f"{server.url}/healthz")[0] == 200
    finally:
        server.close()


# ---------------------------------------------------------------- bounds against slow clients


def _raw(port: int, data: bytes, host: str = "127.0.0.1") -> socket.socket:
    """A connection that has sent `data` and nothing more."""
    sock = socket.create_connection((host, port), timeout=5)
    sock.sendall(data)
    return sock


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes `sock` within `within` seconds (the client keeps quiet)."""
    sock.settimeout(within)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_trickling_client_is_cut_off_at_the_request_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A client sending its request one byte at a time is closed when the whole-request
    deadline passes, however often it sends (a per-read timeout would be renewed)."""
    monkeypatch.setattr(http_server, "REQUEST_DEADLINE_SECONDS", 1.0)
    with serve(fleet({"a": instance()})) as (server, _):
        sock = _raw(server.port, b"GET /status HTTP/1.1\r\nX-Slow: ")
        started = time.monotonic()
        try:
            while time.monotonic() - started < 4:
                sock.sendall(b"a")
                time.sleep(0.2)
            closed_after = None
        except OSError:  # the server closed it: a reset or a broken pipe
            closed_after = time.monotonic() - started
        finally:
            sock.close()
    assert closed_after is not None and closed_after < 2.5, closed_after


def test_beyond_the_connection_bound_the_oldest_is_closed_and_a_probe_gets_in(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With the bound reached by unfinished requests, a new probe is answered at once and
    the oldest unfinished connections are the ones closed."""
    monkeypatch.setattr(http_server, "MAX_CONNECTIONS", 4)
    with serve(fleet({"a": instance()})) as (server, _):
        idle = [_raw(server.port, b"GET /status HTTP/1.1\r\n") for _ in range(8)]
        started = time.monotonic()
        assert get(f"{server.url}/healthz")[0] == 200
        assert time.monotonic() - started < 1.0
        closed = [_closed_by_server(sock, within=0.5) for sock in idle]
        for sock in idle:
            sock.close()
    assert all(closed[:5]) and not any(closed[5:]), closed  # 8 + the probe, bound 4


def test_a_full_work_queue_answers_503_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """While every worker is stuck in a slow view and the queue is full, a further request
    gets 503 immediately instead of waiting."""
    monkeypatch.setattr(http_server, "WORK_QUEUE", 1)
    release = threading.Event()
    entered: list[int] = []

    def stuck() -> dict[str, object]:
        entered.append(1)
        release.wait(10)
        return fleet({"a": instance()})

    server = start_http_server("127.0.0.1:0", stuck)
    request = b"GET /status HTTP/1.0\r\n\r\n"
    waiting: list[socket.socket] = []
    try:
        for taken in range(1, http_server.WORKERS + 1):  # one by one: the queue holds one
            waiting.append(_raw(server.port, request))
            wait_for(lambda: len(entered) == taken, timeout=10,  # noqa: B023 - awaited here
                     message="a worker did not take its request")
        waiting.append(_raw(server.port, request))
        work = server._server._work  # peeking: the queue must be full before the probe
        wait_for(work.full, timeout=10, message="the third request was not queued")
        started = time.monotonic()
        status, _, _ = get(f"{server.url}/status")
        assert status == 503 and time.monotonic() - started < 1.0
    finally:
        release.set()
        for sock in waiting:
            sock.close()
        server.close()


# ---------------------------------------------------------------- Host header (DNS rebinding)


def _status_with_headers(port: int, headers: list[tuple[str, str]]) -> int:
    """The status of GET /healthz sent with exactly these headers (no Host added)."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
    sock = _raw(port, f"GET /healthz HTTP/1.1\r\n{lines}\r\n".encode())
    with sock:
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    return int(answer.split()[1])


@pytest.mark.parametrize(("listen", "headers", "status"), [
    ("127.0.0.1:0", [("Host", "evil.example")], 421),
    ("127.0.0.1:0", [("Host", "127.0.0.2")], 421),  # a loopback IP, but not ours
    ("127.0.0.1:0", [("Host", "127.0.0.1"), ("Host", "evil.example")], 421),
    ("127.0.0.1:0", [("Host", "[::1")], 421),
    ("127.0.0.1:0", [], 200),  # HTTP/1.0 tools send none; browsers always do
    ("127.0.0.1:0", [("Host", "localhost.")], 200),
    ("0.0.0.0:0", [("Host", "10.1.2.3:9120")], 200),  # a wildcard answers on every address
    ("0.0.0.0:0", [("Host", "[fd00::1]:9120")], 200),
    ("0.0.0.0:0", [("Host", "pod.cluster.example")], 421),
])
def test_host_header_policy(listen: str, headers: list[tuple[str, str]], status: int) -> None:
    """Which Host headers are answered: the listen address (any on a wildcard), localhost,
    or none; a name, another address, a malformed or a second Host get 421."""
    server = start_http_server(listen, lambda: fleet({"a": instance()}))
    try:
        assert _status_with_headers(server.port, headers) == status
    finally:
        server.close()


def test_an_allowed_host_name_is_answered() -> None:
    """A name listed in http.allowed_hosts is answered whatever its case and port."""
    server = start_http_server("0.0.0.0:0", lambda: fleet({"a": instance()}),
                               allowed_hosts=["pod.cluster.example"])
    try:
        assert _status_with_headers(server.port, [("Host", "Pod.Cluster.Example:80")]) == 200
    finally:
        server.close()


# ---------------------------------------------------------------- identity proof


def test_the_proof_answers_a_challenge_and_covers_the_body() -> None:
    """With a secret, a challenge is answered with the HMAC of challenge, path and body;
    without a challenge (or a malformed one) no proof is sent."""
    secret = identity.new_secret()
    with serve(fleet({"a": instance()}), secret=secret) as (server, _):
        challenge = identity.new_challenge()
        request = urllib.request.Request(f"{server.url}/status",
                                         headers={identity.CHALLENGE_HEADER: challenge})
        with _NO_PROXY.open(request, timeout=5) as response:
            body, given = response.read(), response.headers[identity.PROOF_HEADER]
        assert identity.proof_matches(secret, challenge, "/status", body, given)
        assert not identity.proof_matches(secret, challenge, "/status", body + b" ", given)
        assert identity.PROOF_HEADER not in get(f"{server.url}/status")[1]
        bad = urllib.request.Request(f"{server.url}/status",
                                     headers={identity.CHALLENGE_HEADER: "zz"})
        with _NO_PROXY.open(bad, timeout=5) as response:
            assert response.headers[identity.PROOF_HEADER] is None
