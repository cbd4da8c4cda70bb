"""A real supervisor with few file descriptors under a flood of slow HTTP clients."""

from __future__ import annotations

import os
import signal
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
