"""A real supervisor with few file descriptors under a flood of slow HTTP clients."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

from tests.support.consumer import wait_for
from tests.support.process import Multiwatch, free_port, write_roster
from tests.support.slow_clients import SlowFlood, measure_get

OPEN_FILES_LIMIT = 40  # what the issue reproduced with
SLOW_CLIENTS = 60
STOP_TIMEOUT = 3


def _start(tmp_path: Path) -> tuple[Multiwatch, int, int]:
    """A supervisor with one watcher and an endpoint: (process, port, watcher pid)."""
    (tmp_path / "data").mkdir()
    port = free_port()
    roster = write_roster(tmp_path / "roster.yaml", {
        "state_dir": str(tmp_path / "state"),
        "supervisor": {"stop_timeout_seconds": STOP_TIMEOUT, "restart_backoff_seconds": 0.2,
                       "report_interval_seconds": 1},
        "http": {"listen": f"127.0.0.1:{port}"},
        "instances": [{"id": "data", "directory": str(tmp_path / "data")}],
    })
    mw = Multiwatch(["-c", str(roster)])
    watcher = mw.wait_watching("data")["pid"]
    mw.wait_for_log(lambda line: line.get("message") == "HTTP endpoint listening")
    limit = OPEN_FILES_LIMIT
    psutil.Process(mw.pid).rlimit(psutil.RLIMIT_NOFILE, (limit, limit))
    return mw, port, watcher


def _cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def test_slow_clients_cannot_take_the_supervisor_down(tmp_path: Path) -> None:
    """With 40 open files allowed and 60 trickling clients, /healthz still answers quickly,
    the loop does not spin, a killed watcher is restarted, and SIGTERM stops it in time."""
    mw, port, watcher = _start(tmp_path)
    try:
        with SlowFlood("127.0.0.1", port, SLOW_CLIENTS) as flood:
            wait_for(lambda: flood.opened >= SLOW_CLIENTS, timeout=30,
                     message="the flood never opened all its connections")
            time.sleep(2)  # the server has had a few trickles and resource samples to choke on
            cpu_before, wall_before = _cpu_seconds(mw.pid), time.monotonic()
            healthz = measure_get("127.0.0.1", port, "/healthz", samples=10, timeout=5)
            cpu = (_cpu_seconds(mw.pid) - cpu_before) / (time.monotonic() - wall_before)
            assert not healthz.failures and healthz.max < 3.0, healthz.describe()
            assert cpu < 0.5, f"the supervisor used {cpu:.0%} of a core under the flood"

            mark = len(mw.lines)
            os.kill(watcher, signal.SIGKILL)
            again = mw.wait_watching("data", after=mark, timeout=30)
            assert again["pid"] != watcher

            started = time.monotonic()
            assert mw.terminate(timeout=STOP_TIMEOUT + 10) == 0
            took = time.monotonic() - started
        assert took < STOP_TIMEOUT + 5, f"SIGTERM took {took:.1f} s"
    finally:
        mw.cleanup()


_HOARDER = textwrap.dedent("""
    import logging, os, resource, signal, sys, threading
    from multiwatch.supervisor.http import start_http_server
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(message)s")
    server = start_http_server("127.0.0.1:0", lambda: {
        "supervisor": {"loop_age_seconds": 0.1}, "instances": {}})
    hoard = []
    release = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: release.set())
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, 4096))
    try:
        while True:
            hoard.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass  # EMFILE: not one descriptor left for accept()
    print(server.port, flush=True)
    release.wait()
    for fd in hoard:
        os.close(fd)
    print("released", flush=True)
    threading.Event().wait()
""")


def test_accept_out_of_descriptors_backs_off_and_recovers(tmp_path: Path) -> None:
    """With every file descriptor taken, pending connections make accept() fail (EMFILE):
    the endpoint pauses instead of spinning, says so once, and answers once descriptors
    are free again."""
    with open(tmp_path / "stderr", "w") as stderr:
        process = subprocess.Popen([sys.executable, "-c", _HOARDER], stdout=subprocess.PIPE,
                                   stderr=stderr, text=True)
    clients: list[socket.socket] = []
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(5)]
        time.sleep(0.5)  # accept() is failing now
        cpu_before, wall_before = _cpu_seconds(process.pid), time.monotonic()
        time.sleep(2.0)
        cpu = (_cpu_seconds(process.pid) - cpu_before) / (time.monotonic() - wall_before)
        assert cpu < 0.2, f"the endpoint used {cpu:.0%} of a core while accept() failed"
        process.send_signal(signal.SIGUSR1)
        assert process.stdout.readline().strip() == "released"
        healthz = wait_for(lambda: measure_get("127.0.0.1", port, "/healthz", samples=1,
                                               timeout=5, pause=0).seconds, timeout=10,
                           message="/healthz did not answer once descriptors were free")
        assert healthz[0] < 5
        log = (tmp_path / "stderr").read_text()
        assert log.count("HTTP endpoint cannot accept connections; pausing") == 1, log
    finally:
        for client in clients:
            client.close()
        process.kill()
        process.wait(timeout=10)
