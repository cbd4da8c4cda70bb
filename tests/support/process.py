"""Run `multiwatch` as a real process and follow its JSON log lines.

The process gets its own session, so teardown can stop exactly the process group it
started (supervisor and children) and nothing else.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
import yaml

LogLine = dict[str, Any]


def write_roster(path: Path, roster: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(roster), sort_keys=False))
    return path


def multiwatch_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "multiwatch", *args]


def run_cli(*args: str, env: Mapping[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run one short multiwatch command to completion."""
    return subprocess.run(multiwatch_command(*args), capture_output=True, text=True,
                          timeout=timeout, env=_env(env))


def _env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RABBITMQ_") and k not in ("MULTIWATCH_CONFIG", "DATA_DIR",
                                                           "INSTANCE_ID")}
    # No HTTP endpoint unless a test's roster asks for one: the default port is shared.
    env["MULTIWATCH_HTTP_LISTEN"] = "off"
    env.update(extra or {})
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Multiwatch:
    """A running `multiwatch run` with its log lines collected as they appear."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str] | None = None,
                 program: Sequence[str] | None = None) -> None:
        """program: how `multiwatch` is started (default `python -m multiwatch`)."""
        command = [*program, "run", *args] if program else multiwatch_command("run", *args)
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=_env(env), start_new_session=True,
        )
        self.lines: list[LogLine] = []
        self.raw: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            text = raw.decode("utf-8", "replace").rstrip("\n")
            with self._changed:
                self.raw.append(text)
                try:
                    self.lines.append(json.loads(text))
                except ValueError:
                    pass
                self._changed.notify_all()

    def wait_for_log(self, predicate: Callable[[LogLine], bool], timeout: float = 30,
                     after: int = 0) -> LogLine:
        """The first log line (from index `after`) matching predicate; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[after:]:
                    if predicate(line):
                        return line
                remaining = deadline - time.monotonic()
                exited = self.process.poll() is not None and not self._reader.is_alive()
                if remaining <= 0 or exited:
                    tail = "\n".join(self.raw[-30:])
                    raise AssertionError(f"log line not seen in {timeout}s; last lines:\n{tail}")
                self._changed.wait(min(remaining, 0.2))

    def wait_watching(self, instance_id: str, timeout: float = 30, after: int = 0) -> LogLine:
        """Wait until the watcher for instance_id logs that it is watching."""
        return self.wait_for_log(
            lambda line: line.get("message") == "watching"
            and line.get("instance_id") == instance_id,
            timeout=timeout, after=after)

    def child_pids(self) -> list[int]:
        """Every process below the supervisor: the template process, the watchers forked
        from it (its children) and multiprocessing's resource tracker."""
        try:
            return [p.pid for p in psutil.Process(self.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def terminate(self, timeout: float = 15) -> int:
        """SIGTERM the supervisor and return its exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def cleanup(self) -> None:
        """Kill whatever is left of the process group this object started."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait(timeout=10)
        self._reader.join(timeout=5)
