"""A real supervisor's endpoint against DNS rebinding, and `status` believing only it."""

from __future__ import annotations

import http.client
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from multiwatch.supervisor.identity import identity_path
from tests.support.process import Multiwatch, free_port, run_cli, write_roster


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Multiwatch, Path, int]]:
    """A supervisor with one watcher, http.allowed_hosts [monitor.example]: (it, roster, port)."""
    (tmp_path / "data").mkdir()
    port = free_port()
    roster = write_roster(tmp_path / "roster.yaml", {
        "state_dir": str(tmp_path / "state"),
        "supervisor": {"stop_timeout_seconds": 3},
        "http": {"listen": f"127.0.0.1:{port}", "allowed_hosts": ["Monitor.Example"]},
        "instances": [{"id": "data", "directory": str(tmp_path / "data")}],
    })
    mw = Multiwatch(["-c", str(roster)])
    try:
        mw.wait_watching("data")
        mw.wait_for_log(lambda line: line.get("message") == "HTTP endpoint listening")
        yield mw, roster, port
    finally:
        mw.cleanup()


def _get(port: int, path: str, host: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1.nip.io",
                                  "localhost.evil.example:{port}", "10.0.0.1:{port}",
                                  "127.0.0.1:{port}@evil.example"])
def test_a_rebound_host_name_is_refused(running: tuple[Multiwatch, Path, int],
                                        host: str) -> None:
    """A request naming another host (what a DNS-rebinding web page sends) gets 421 and a
    short body, never the fleet's directories."""
    _, _, port = running
    status, body = _get(port, "/status", host.format(port=port))
    assert status == 421
    assert b"http.allowed_hosts" in body and len(body) < 200 and b"instances" not in body


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "127.0.0.1", "localhost:{port}",
                                  "LOCALHOST", "monitor.example:{port}", "monitor.example.",
                                  "localhost:8080"])
def test_the_listen_address_localhost_and_allowed_names_are_answered(
    running: tuple[Multiwatch, Path, int], host: str
) -> None:
    """The listen address, localhost and a name in http.allowed_hosts (any case, any port:
    port forwarding changes it) get the fleet."""
    _, _, port = running
    status, body = _get(port, "/status", host.format(port=port))
    assert status == 200 and b'"data"' in body


def test_status_believes_the_real_supervisor_and_its_identity_goes_with_it(
    running: tuple[Multiwatch, Path, int], tmp_path: Path
) -> None:
    """`multiwatch status -c` shows the running fleet; the identity file is 0600 and is
    removed when the supervisor stops."""
    mw, roster, port = running
    result = run_cli("status", "-c", str(roster))
    assert result.returncode == 0, result.stderr
    assert f"supervisor pid {mw.pid}" in result.stdout and "data" in result.stdout
    published = Path(identity_path(str(tmp_path / "state"), f"127.0.0.1:{port}"))
    assert stat.S_IMODE(published.stat().st_mode) == 0o600
    assert published.stat().st_uid == os.geteuid()
    assert mw.terminate() == 0
    assert not published.exists()
