"""A real supervisor's endpoint against DNS rebinding, and `status` believing only it."""

from __future__ import annotations

import http.client
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from multiwatch.supervisor.identity import identity_path
from tests.support.process import (
    Multiwatch,
    free_port,
    multiwatch_command,
    run_cli,
    write_roster,
)


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
    short body on every page, never the fleet's directories."""
    _, _, port = running
    for path in ("/", "/status", "/metrics", "/healthz", "/readyz"):
        status, body = _get(port, path, host.format(port=port))
        assert status == 421, path
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


# In a new network namespace: bring `lo` up (SIOCSIFFLAGS, IFF_UP|IFF_LOOPBACK), then become
# `python -m multiwatch ARGS` (same pid, so the test signals multiwatch itself).
_LOOPBACK_UP_THEN_MULTIWATCH = """
import fcntl, os, socket, struct, sys
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    fcntl.ioctl(sock, 0x8914, struct.pack("16sH", b"lo", 0x1 | 0x8))
os.execv(sys.executable, [sys.executable, "-m", "multiwatch", *sys.argv[1:]])
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace needs root (CI runs as root)")
def test_status_believes_each_replica_in_its_own_network_namespace(tmp_path: Path) -> None:
    """Replicas in two containers share a state_dir and the same listen address (compose
    --scale): `status` in each network namespace believes its own supervisor, and one
    replica stopping leaves the other's proof in place."""
    (tmp_path / "data").mkdir()
    port = free_port()
    roster = write_roster(tmp_path / "roster.yaml", {
        "state_dir": str(tmp_path / "state"),
        "supervisor": {"stop_timeout_seconds": 3},
        "http": {"listen": f"127.0.0.1:{port}"},
        "instances": [{"id": "data", "directory": str(tmp_path / "data"),
                       "ha": {"enabled": True}}],
    })
    listening = lambda line: line.get("message") == "HTTP endpoint listening"  # noqa: E731
    here = Multiwatch(["-c", str(roster)])
    there: Multiwatch | None = None
    try:
        here.wait_for_log(listening)
        there = Multiwatch(["-c", str(roster)], program=[
            "unshare", "--net", "--", sys.executable, "-c", _LOOPBACK_UP_THEN_MULTIWATCH])
        there.wait_for_log(listening)
        for pid, enter in ((here.pid, []), (there.pid, [f"--net=/proc/{there.pid}/ns/net"])):
            result = subprocess.run(
                ["nsenter", *enter, "--", *multiwatch_command("status", "-c", str(roster))],
                capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            assert f"supervisor pid {pid}," in result.stdout
        assert there.terminate() == 0
        result = run_cli("status", "-c", str(roster))
        assert result.returncode == 0 and f"supervisor pid {here.pid}," in result.stdout, (
            result.stderr)
    finally:
        if there is not None:
            there.cleanup()
        here.cleanup()
