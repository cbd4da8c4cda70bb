"""`multiwatch status` and `multiwatch health` against an endpoint served in this process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from multiwatch.cli import main
from multiwatch.cli.status import endpoint_url
from multiwatch.supervisor.identity import identity_path, new_secret, publish_identity
from tests.support.consumer import wait_for
from tests.support.fleet_view import fleet, get, heartbeat, instance, serve


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `multiwatch ARGV` run in-process."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_status_prints_one_aligned_row_per_instance(capsys: pytest.CaptureFixture[str]) -> None:
    """`status` shows a summary and a table: state, pid, restarts, outbox, broker, exit reason."""
    view = fleet({
        "watcher-music": instance(restarts=2),
        "watcher-books": instance("BACKOFF", pid=None, uptime_seconds=None, resources=None,
                                  last_exit="exit status 1",
                                  heartbeat=heartbeat(broker_connected=False,
                                                      last_error="connection refused")),
    })
    with serve(view) as (server, _):
        code, out, err = run(capsys, "status", "--url", server.url)
    assert code == 0 and err == ""
    summary, header, books, music, *details = out.splitlines()
    assert "supervisor pid 100" in summary and "2 instances" in summary and "up 1h01m" in summary
    assert header.split()[:4] == ["ID", "STATE", "PID", "RESTARTS"]
    assert books.split()[:3] == ["watcher-books", "BACKOFF", "-"]
    assert "down" in books and "exit status 1; broker: connection refused" in books
    assert music.split()[:5] == ["watcher-music", "RUNNING", "4242", "2", "2m05s"]
    # files, events/min, last event (none yet), outbox, broker, role, CPU %, RSS MiB, directory
    assert music.split()[5:] == ["-", "-", "-", "3", "up", "active", "1.5", "40.0",
                                 "/data/music"]
    assert header.index("STATE") == books.index("BACKOFF") == music.index("RUNNING")
    assert details[1:3] == ["watcher-books: discovered 7, modified 2, deleted 1",
                            "watcher-music: discovered 7, modified 2, deleted 1"]


def test_status_shows_what_a_person_looks_for(capsys: pytest.CaptureFixture[str]) -> None:
    """`status` names the directory, files tracked, events per minute, the last event and
    when, events per type, the masked broker, the role and the endpoint's pages."""
    beat = heartbeat(files_tracked=1234, last_event={
        "event_type": "file_modified", "path": "/data/music/a b.flac", "at": 1_700_000_000.0})
    view = fleet({"music": instance(heartbeat=beat, events_per_minute=12.5)})
    view["supervisor"].update(broker="amqp://watcher:****@rabbit:5672/%2F", role="active")
    with serve(view) as (server, _):
        code, out, _ = run(capsys, "status", "--url", server.url)
    summary, header, row, *details = out.splitlines()
    assert code == 0
    assert "role active" in summary and "broker amqp://watcher:****@rabbit:5672/%2F" in summary
    for column, value in (("DIRECTORY", "/data/music"), ("LAST EVENT", "modified")):
        assert header.index(column) == row.index(value), column  # left-aligned
    for column, value in (("FILES", "1234"), ("EV/MIN", "12.5")):
        assert header.index(column) + len(column) == row.index(value) + len(value), column
    assert "ago" in row
    text = "\n".join(details)
    assert "music: discovered 7, modified 2, deleted 1" in text
    assert "last modified /data/music/a b.flac at 2023-11-14 22:13:20 UTC" in text
    for page in ("/status", "/metrics", "/healthz"):
        assert f"{server.url}{page}" in text, page


def test_status_json_prints_the_raw_view(capsys: pytest.CaptureFixture[str]) -> None:
    """`status --json` prints the /status document unchanged."""
    view = fleet({"a": instance()})
    with serve(view) as (server, _):
        code, out, _ = run(capsys, "status", "--json", "--url", server.url)
    assert code == 0 and json.loads(out) == view


def _roster(tmp_path: Path, port: int) -> Path:
    roster = tmp_path / "roster.yaml"
    roster.write_text(f"state_dir: {tmp_path / 'state'}\nhttp:\n  listen: 127.0.0.1:{port}\n"
                      f"instances: [{{id: watcher-music, directory: {tmp_path / 'gone'}}}]\n")
    (tmp_path / "state").mkdir(exist_ok=True)
    return roster


def test_status_finds_the_endpoint_from_the_roster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With -c, the URL comes from http.listen, even if a watched directory has vanished,
    and the endpoint proves it holds the secret published under state_dir."""
    secret = new_secret()
    with serve(fleet({"watcher-music": instance()}), secret=secret) as (server, _):
        roster = _roster(tmp_path, server.port)
        publish_identity(str(tmp_path / "state"), f"127.0.0.1:{server.port}", os.getpid(),
                         secret)
        code, out, _ = run(capsys, "status", "-c", str(roster))
        assert code == 0 and "watcher-music" in out
        code, out, _ = run(capsys, "health", "-c", str(roster))
        assert code == 0 and out.startswith("ready:")


def test_status_believes_a_supervisor_started_before_per_namespace_identity_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A supervisor still running from before the upgrade published endpoint-<host>_<port>.json
    (no -net<N>): status after the upgrade still finds and believes it."""
    secret = new_secret()
    with serve(fleet({"watcher-music": instance()}), secret=secret) as (server, _):
        roster = _roster(tmp_path, server.port)
        listen = f"127.0.0.1:{server.port}"
        publish_identity(str(tmp_path / "state"), listen, os.getpid(), secret)
        current = Path(identity_path(str(tmp_path / "state"), listen))
        current.rename(current.with_name(f"endpoint-127.0.0.1_{server.port}.json"))
        code, out, _ = run(capsys, "status", "-c", str(roster))
    assert code == 0 and "watcher-music" in out


def test_health_exits_0_when_ready_and_1_when_not(capsys: pytest.CaptureFixture[str]) -> None:
    """`health` mirrors /readyz: exit 0 with "ready", exit 1 naming each not-ready instance."""
    with serve(fleet({"a": instance(), "b": instance()})) as (server, holder):
        code, out, _ = run(capsys, "health", "--url", server.url)
        assert (code, out) == (0, "ready: 2 instances running, broker connected\n")
        holder.view["instances"]["b"] = instance("WAITING", reason="directory missing")
        code, out, _ = run(capsys, "health", "--url", server.url)
        assert (code, out) == (1, "not ready: b: state WAITING: directory missing\n")


def test_health_live_checks_the_supervisor_loop(capsys: pytest.CaptureFixture[str]) -> None:
    """`health --live` mirrors /healthz: 0 while the loop turns, 1 once it stalls."""
    with serve(fleet({}, loop_age=0.5)) as (server, holder):
        code, out, _ = run(capsys, "health", "--live", "--url", server.url)
        assert code == 0 and out.startswith("alive:")
        holder.view["supervisor"]["loop_age_seconds"] = 30.0
        code, out, _ = run(capsys, "health", "--live", "--url", server.url)
        assert code == 1 and out.startswith("not alive:") and "30 s" in out


@pytest.mark.parametrize("command", [["status"], ["health"], ["health", "--live"]])
def test_unreachable_endpoint_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """Nothing listening: one clear line on stderr naming the URL, exit 1, no traceback."""
    url = f"127.0.0.1:{closed_port()}"
    code, out, err = run(capsys, *command, "--url", url)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and f"cannot reach http://{url}/" in err
    assert "Traceback" not in err


def test_http_off_in_roster_asks_for_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With http.listen off, both commands explain there is no endpoint; health still exits 1."""
    roster = tmp_path / "roster.yaml"
    roster.write_text("http: {listen: off}\ninstances: []\n")
    code, _, err = run(capsys, "health", "-c", str(roster))
    assert code == 1 and "http.listen is off" in err and "--url" in err
    code, _, err = run(capsys, "status", "-c", str(roster))
    assert code == 2 and "http.listen is off" in err


def test_a_foreign_server_is_reported_plainly(capsys: pytest.CaptureFixture[str]) -> None:
    """An endpoint that is not multiwatch (404, not JSON where expected) is a one-line error."""
    with serve(fleet({})) as (server, _):
        code, _, err = run(capsys, "status", "--url", f"{server.url}/nowhere")
    assert code == 1 and "unexpected answer" in err and "HTTP 404" in err


@pytest.mark.parametrize(("listen", "url"), [
    ("127.0.0.1:9120", "http://127.0.0.1:9120"),
    ("0.0.0.0:9000", "http://127.0.0.1:9000"),
    ("[::]:9120", "http://[::1]:9120"),
    ("[fd00::5]:80", "http://[fd00::5]:80"),
    ("monitor.local:9120", "http://monitor.local:9120"),
])
def test_endpoint_url_reaches_wildcards_on_loopback(listen: str, url: str) -> None:
    """A wildcard listen address is asked on loopback; IPv6 hosts get brackets."""
    assert endpoint_url(listen) == url


@pytest.mark.parametrize(("command", "words"), [
    ("status", ["--config", "--url", "--json", "http.listen", "files tracked",
                "events per minute", "last event"]),
    ("health", ["--config", "--url", "--live", "/readyz", "HEALTHCHECK"]),
])
def test_help_describes_status_and_health(
    capsys: pytest.CaptureFixture[str], command: str, words: list[str]
) -> None:
    """`--help` of each command exits 0 and names its options and what it asks."""
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    for word in words:
        assert word in out, word


# ---------------------------------------------------------------- who answers on the port

_IMPOSTOR = textwrap.dedent("""
    import http.server, json, sys
    class Fake(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"supervisor": {"pid": 1}, "instances": {
                "evil-1": {"state": "RUNNING"}}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Fake).serve_forever()
""")


@contextmanager
def impostor(port: int) -> Iterator[None]:
    """Another program serving fake fleet ids on the roster's port."""
    process = subprocess.Popen([sys.executable, "-c", _IMPOSTOR, str(port)])
    try:
        wait_for(lambda: _listening(port), timeout=10, message="the impostor did not listen")
        yield
    finally:
        process.kill()
        process.wait(timeout=10)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    return child.pid


def test_status_refuses_an_impostor_holding_the_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The supervisor is gone (its identity file left behind) and another program took the
    port: `status` refuses its made-up fleet with one line saying why, exit 1."""
    port = closed_port()
    roster = _roster(tmp_path, port)
    publish_identity(str(tmp_path / "state"), f"127.0.0.1:{port}", _dead_pid(), new_secret())
    with impostor(port):
        fake = json.loads(get(f"http://127.0.0.1:{port}/status")[2])
        assert fake["instances"] == {"evil-1": {"state": "RUNNING"}}  # it does answer
        code, out, err = run(capsys, "status", "-c", str(roster))
    assert code == 1 and out == "" and "evil" not in err
    assert err.startswith(f"multiwatch: refusing the answer from http://127.0.0.1:{port}/status")
    assert "which is not running" in err and "another program may hold the port" in err
    assert err.count("\n") == 1


def test_status_refuses_when_no_supervisor_published_an_identity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No identity file under state_dir: `status` does not ask whoever holds the port."""
    port = closed_port()
    roster = _roster(tmp_path, port)
    with impostor(port):
        code, out, err = run(capsys, "status", "-c", str(roster))
    assert code == 1 and out == ""
    assert "does not exist" in err and "is `multiwatch run` running?" in err


@pytest.mark.parametrize("tamper", ["readable by others", "owned by another user"])
def test_status_distrusts_an_identity_file_others_could_have_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tamper: str
) -> None:
    """An identity file other users can read (so could have copied the secret) or that
    belongs to another user is refused, even with the real supervisor answering."""
    if tamper == "owned by another user" and os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root (CI runs as root)")
    secret = new_secret()
    with serve(fleet({"watcher-music": instance()}), secret=secret) as (server, _):
        roster = _roster(tmp_path, server.port)
        listen = f"127.0.0.1:{server.port}"
        publish_identity(str(tmp_path / "state"), listen, os.getpid(), secret)
        path = identity_path(str(tmp_path / "state"), listen)
        if tamper == "readable by others":
            os.chmod(path, 0o644)
        else:
            os.chown(path, 65534, 65534)
        code, out, err = run(capsys, "status", "-c", str(roster))
    assert code == 1 and out == "" and "not trusting it" in err and path in err


def test_status_with_url_asks_the_named_endpoint_as_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--url` names the endpoint explicitly: no identity is looked for (remote endpoints)."""
    port = closed_port()
    with impostor(port):
        code, out, _ = run(capsys, "status", "--url", f"127.0.0.1:{port}")
    assert code == 0 and "evil-1" in out


def test_status_never_prints_terminal_controls_from_file_names(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A watched file named with escape sequences reaches the terminal as \\u001b text."""
    beat = heartbeat(last_event={"event_type": "file_discovered",
                                 "path": "/data/music/\x1b]0;pwned\x07\x1b[2J.mp3", "at": 1.7e9})
    view = fleet({"music\x1b[31m": instance(heartbeat=beat, reason="bad\x9bname")})
    with serve(view) as (server, _):
        code, out, _ = run(capsys, "status", "--url", server.url)
    assert code == 0
    assert not any(c in out for c in "\x1b\x07\x9b")
    assert "\\u001b]0;pwned\\u0007\\u001b[2J.mp3" in out
