"""supervisord for real, on the configuration `multiwatch export supervisord` writes."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.consumer import collect, wait_for
from tests.support.faults import FAST_BROKER, names
from tests.support.process import _env, free_port, run_cli, write_roster

IDS = ("watcher-left", "watcher-right")


class Supervisord:
    """A `supervisord -n` we started, and `supervisorctl` against its socket."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.process = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(None),
            start_new_session=True)
        self.seen: dict[int, float] = {}  # pid → create_time of everything it ran

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(self.config), *args],
            capture_output=True, text=True, timeout=60, env=_env(None))

    def status(self) -> dict[str, tuple[str, int | None]]:
        """program → (state, pid) from `supervisorctl status`; {} while it cannot answer."""
        table = {}
        for line in self.ctl("status").stdout.splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0].startswith("multiwatch-"):
                pid = int(fields[3].rstrip(",")) if fields[2:3] == ["pid"] else None
                table[fields[0]] = (fields[1], pid)
        self.remember()
        return table

    def running(self, program: str, not_pid: int | None = None) -> int | None:
        state, pid = self.status().get(program, ("", None))
        return pid if state == "RUNNING" and pid != not_pid else None

    def remember(self) -> None:
        """Record supervisord's descendants (programs set their own process group)."""
        try:
            procs = [psutil.Process(self.process.pid)]
            procs += procs[0].children(recursive=True)
            for proc in procs:
                self.seen.setdefault(proc.pid, proc.create_time())
        except psutil.NoSuchProcess:
            pass

    def alive(self) -> list[int]:
        """Pids we recorded that still belong to a running (non-zombie) process."""
        left = []
        for pid, created in self.seen.items():
            try:
                proc = psutil.Process(pid)
                if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(pid)
            except psutil.NoSuchProcess:
                pass
        return left

    def kill_leftovers(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        for pid in self.alive():
            os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """supervisord's socket directory: short, since a unix socket path has a length limit."""
    path = Path(tempfile.mkdtemp(prefix="mw-sv-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_supervisord_runs_restarts_and_stops_every_instance(
        tmp_path: Path, run_dir: Path, broker_url: str) -> None:
    """Exported programs run, a killed one is restarted, events flow, `multiwatch stop` points
    to supervisorctl (signalling nothing), shutdown leaves nothing."""
    port = free_port()
    dirs = {ident: tmp_path / ident for ident in IDS}
    for directory in dirs.values():
        directory.mkdir()
    roster = write_roster(tmp_path / "roster.yaml", {
        "state_dir": str(tmp_path / "state"),
        "broker": {"url": broker_url, **FAST_BROKER},
        "defaults": {"settle_seconds": 0.1},
        "supervisor": {"stop_timeout_seconds": 3},
        "http": {"listen": f"127.0.0.1:{port}"},  # each program must leave this alone
        "instances": [{"id": ident, "directory": str(d)} for ident, d in dirs.items()],
    })
    config = tmp_path / "supervisord.conf"
    # As root the export runs programs as `multiwatch`, which a fresh machine lacks: name
    # the user that owns this test's state instead (no system user is created and left).
    exported = run_cli("export", "supervisord", "-c", str(roster), "-o", str(config),
                       "--run-dir", str(run_dir), "--user", pwd.getpwuid(os.geteuid()).pw_name)
    assert exported.returncode == 0, exported.stderr

    supervisord = Supervisord(config)
    try:
        programs = [f"multiwatch-{ident}" for ident in IDS]
        pids: dict[str, int] = {
            p: wait_for(lambda p=p: supervisord.running(p), timeout=60,  # type: ignore[misc]
                        message=f"{p} not RUNNING") for p in programs}

        for ident, directory in dirs.items():
            (directory / f"{ident}-1.txt").write_text(ident)
        got = collect(broker_url, "file_events", timeout=30,
                      until=lambda ms: {f"{i}-1.txt" for i in IDS} <= names(ms))
        assert {m.body["instance_id"] for m in got} == set(IDS)
        with pytest.raises(ConnectionRefusedError):  # --http-listen off: no clash on one port
            socket.create_connection(("127.0.0.1", port), timeout=5).close()

        victim = programs[0]
        watchers = psutil.Process(pids[victim]).children(recursive=True)
        os.kill(pids[victim], signal.SIGKILL)
        new_pid = wait_for(lambda: supervisord.running(victim, not_pid=pids[victim]),
                           timeout=60, message=f"{victim} was not restarted")
        assert supervisord.running(programs[1]) == pids[programs[1]]  # the other one untouched
        wait_for(lambda: not any(w.is_running() for w in watchers), timeout=30,
                 message="the killed program's watcher outlived it")
        (dirs[IDS[0]] / f"{IDS[0]}-2.txt").write_text("after the restart")
        got = collect(broker_url, "file_events", timeout=30,
                      until=lambda ms: f"{IDS[0]}-2.txt" in names(ms))
        assert f"{IDS[0]}-2.txt" in names(got) and new_pid != pids[victim]

        # `multiwatch stop` would only see supervisord start it again: it says how instead
        refused = run_cli("stop", "-c", str(roster), "--only", IDS[1])
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert f"supervisorctl -s unix://{run_dir}" in refused.stderr
        assert f"stop {programs[1]}" in refused.stderr
        assert supervisord.running(programs[1]) == pids[programs[1]]

        supervisord.remember()
        done = supervisord.ctl("shutdown")
        assert done.returncode == 0, done.stdout + done.stderr
        assert supervisord.process.wait(timeout=60) == 0
        wait_for(lambda: not supervisord.alive(), timeout=30,
                 message=f"left running: {supervisord.alive()}")
    finally:
        supervisord.kill_leftovers()
