"""Fakes for unit-testing the supervisor in-process: a watcher process whose reports go down
a real pipe and whose exit the test decides, the factory that makes them, a clock that moves
when told, a resource meter reporting set figures, and a Supervisor driven turn by turn."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from multiwatch.config import ConfigError, HttpConfig, InstanceConfig, Roster, SupervisorConfig
from multiwatch.supervisor.fleet import HOUSEKEEPING_SECONDS, Supervisor
from multiwatch.supervisor.resources import ResourceMeter, Usage
from multiwatch.watcher.spec import ChildSpec

FIRST_FAKE_PID = 5_000_000  # above any pid_max: a fake never names a real process
SETTINGS = SupervisorConfig(restart_backoff_seconds=1.0, restart_backoff_max_seconds=4.0,
                            backoff_reset_seconds=60.0, hang_timeout_seconds=60.0,
                            stop_timeout_seconds=8.0)


def make_instance(instance_id: str = "music", **fields: Any) -> InstanceConfig:
    return InstanceConfig(id=instance_id, directory=f"/data/{instance_id}", **fields)


def make_roster(tmp_path: Path, *instances: InstanceConfig) -> Roster:
    return Roster(state_dir=str(tmp_path / "state"), supervisor=SETTINGS, instances=instances,
                  http=HttpConfig(listen=None), source=str(tmp_path / "roster.yaml"))



class ReportPipe:
    """The child's end of the pipe as the supervisor reads it: these reports, then nothing
    more (or, with `then_eof`, EOF: the child has gone)."""

    def __init__(self, reports: list[tuple[str, dict[str, Any]]], *,
                 then_eof: bool = False) -> None:
        self.reports = list(reports)
        self._then_eof = then_eof

    def poll(self) -> bool:
        return bool(self.reports) or self._then_eof

    def recv(self) -> tuple[str, dict[str, Any]]:
        if not self.reports:
            raise EOFError
        return self.reports.pop(0)

    def close(self) -> None:
        pass


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class FakeWatcher:
    """A started watcher process: it reports what the test tells it to and exits when told,
    or when signalled (SIGTERM only if it obeys it)."""

    def __init__(self, pid: int, writer: Connection, *, obeys_sigterm: bool) -> None:
        self.pid = pid
        self.exitcode: int | None = None
        self.signals: list[str] = []
        self.obeys_sigterm = obeys_sigterm
        self._writer = writer
        self.sentinel, self._sentinel_writer = os.pipe()  # readable once it has exited

    def report(self, kind: str, **payload: Any) -> None:
        self._writer.send((kind, payload))

    def exit(self, code: int) -> None:
        if self.exitcode is None:
            self.exitcode = code
            self._writer.close()  # the parent's reader sees EOF, as when a process ends
            os.close(self._sentinel_writer)

    def is_alive(self) -> bool:
        return self.exitcode is None

    def join(self, timeout: float | None = None) -> None:
        return None

    def terminate(self) -> None:
        self.signals.append("SIGTERM")
        if self.obeys_sigterm:
            self.exit(-signal.SIGTERM)

    def kill(self) -> None:
        self.signals.append("SIGKILL")
        self.exit(-signal.SIGKILL)

    def close(self) -> None:
        self.exit(0)  # (a no-op if it has exited)
        os.close(self.sentinel)


class FakeFactory:
    """The WatcherFactory of these tests: every start makes a FakeWatcher on a real pipe."""

    def __init__(self) -> None:
        self.started: list[tuple[str, FakeWatcher]] = []
        self.obeys_sigterm = True
        self._readers: list[Connection] = []

    def __call__(self, spec: ChildSpec) -> tuple[FakeWatcher, Connection]:
        reader, writer = multiprocessing.Pipe(duplex=False)
        watcher = FakeWatcher(FIRST_FAKE_PID + len(self.started), writer,
                              obeys_sigterm=self.obeys_sigterm)
        self.started.append((spec.instance.id, watcher))
        self._readers.append(reader)
        return watcher, reader

    def of(self, instance_id: str) -> list[FakeWatcher]:
        """The processes started for `instance_id`, oldest first."""
        return [w for iid, w in self.started if iid == instance_id]

    def close(self) -> None:
        for reader in self._readers:
            reader.close()  # (idempotent: the Child may have closed it)
        for _, watcher in self.started:
            watcher.close()


class FakeMeter(ResourceMeter):
    """Resource use as the test sets it: RSS per pid, 0 for any other."""

    def __init__(self) -> None:
        super().__init__()
        self.rss: dict[int, int] = {}

    def sample(self, pid: int, *, count_files: bool = True) -> Usage | None:
        return Usage(cpu_percent=0.0, rss_bytes=self.rss.get(pid, 0), open_files=0,
                     threads=1, read_bytes=None)


class Fleet:
    """A Supervisor on fakes, driven turn by turn; SIGHUP reads `next_roster`."""

    def __init__(self, roster: Roster, factory: FakeFactory, clock: FakeClock) -> None:
        self.next_roster: Roster | ConfigError = roster
        self.clock = clock
        self.factory = factory
        self.meter = FakeMeter()
        self.supervisor = Supervisor(roster, reload=self._read_roster, spawn=factory,
                                     clock=clock, meter=self.meter)

    def _read_roster(self) -> Roster:
        if isinstance(self.next_roster, ConfigError):
            raise self.next_roster
        return self.next_roster

    def turn(self, advance: float = HOUSEKEEPING_SECONDS) -> None:
        self.clock.advance(advance)
        self.supervisor._turn(self._wake_fd)

    def reload(self, roster: Roster | ConfigError) -> None:
        """SIGHUP with `roster` (or a roster that fails to load) on disk, then a turn."""
        self.next_roster = roster
        self.supervisor.handle_hup()
        self.turn()

    def view(self) -> dict[str, Any]:
        instances: dict[str, Any] = self.supervisor.fleet_view()["instances"]
        return instances

    @contextmanager
    def running(self) -> Iterator[Fleet]:
        """Converged to its roster and one turn in; stopped and its locks let go after."""
        self._wake_fd, wake_write = os.pipe()
        try:
            self.supervisor._converge(self.supervisor.roster)
            self.turn()
            yield self
        finally:
            for _, watcher in self.factory.started:
                watcher.obeys_sigterm = True  # the shutdown's deadline is on the fake clock
            self.supervisor._shutdown()
            self.supervisor._locks.release_all()
            os.close(self._wake_fd)
            os.close(wake_write)

