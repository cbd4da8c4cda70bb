"""Every edge of a watcher's lifecycle, one per test, in-process: a fake watcher process
(its reports sent down a real pipe, its exit status set by the test) and a fake clock.
The same edges with real processes and signals are in tests/integration/test_supervisor.py."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from multiwatch.config import (
    BrokerConfig,
    ConfigError,
    HttpConfig,
    InstanceConfig,
    Roster,
    SupervisorConfig,
)
from multiwatch.supervisor.fleet import HOUSEKEEPING_SECONDS, SAMPLE_EVERY_SECONDS, Supervisor
from multiwatch.supervisor.lifecycle import START_RETRIES, Child, State
from multiwatch.supervisor.resources import ResourceMeter, Usage
from multiwatch.watcher.spec import EXIT_DIRECTORY_GONE, ChildSpec

FIRST_FAKE_PID = 5_000_000  # above any pid_max: a fake never names a real process
SETTINGS = SupervisorConfig(restart_backoff_seconds=1.0, restart_backoff_max_seconds=4.0,
                            backoff_reset_seconds=60.0, hang_timeout_seconds=60.0,
                            stop_timeout_seconds=8.0)


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


@pytest.fixture
def factory() -> Iterator[FakeFactory]:
    made = FakeFactory()
    yield made
    made.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# ---------------------------------------------------------------- one Child


def _instance(instance_id: str = "music", **fields: Any) -> InstanceConfig:
    return InstanceConfig(id=instance_id, directory=f"/data/{instance_id}", **fields)


def _child(factory: FakeFactory, settings: SupervisorConfig = SETTINGS) -> Child:
    spec = ChildSpec(instance=_instance(), broker=BrokerConfig(),
                     state_dir="/tmp/state", log_level="INFO", stop_timeout_seconds=8,
                     parent_pid=1)
    return Child(spec, settings, spawn=factory)


def _started(child: Child, factory: FakeFactory, clock: FakeClock) -> FakeWatcher:
    child.start(clock())
    return factory.started[-1][1]


def _running(child: Child, factory: FakeFactory, clock: FakeClock) -> FakeWatcher:
    watcher = _started(child, factory, clock)
    watcher.report("ready", pid=watcher.pid)
    child.receive(clock())
    assert child.state is State.RUNNING
    return watcher


def _exit(child: Child, watcher: FakeWatcher, clock: FakeClock, code: int) -> float:
    """The watcher exits with `code` and is reaped: the delay before its next start."""
    watcher.exit(code)
    assert child.reap(clock())
    return child.next_start_at - clock()


def test_a_started_watcher_is_starting_until_it_reports_ready(
        factory: FakeFactory, clock: FakeClock) -> None:
    """STARTING → RUNNING when the watcher says "ready"; /status shows its pid and no reason."""
    child = _child(factory)
    watcher = _started(child, factory, clock)
    assert child.view(clock())["state"] == "STARTING"
    watcher.report("ready", pid=watcher.pid)
    child.receive(clock.advance(2))
    view = child.view(clock())
    assert (view["state"], view["pid"], view["reason"]) == ("RUNNING", watcher.pid, "")


def test_a_starting_watcher_whose_directory_is_absent_is_waiting(
        factory: FakeFactory, clock: FakeClock) -> None:
    """STARTING → WAITING on "waiting" (optional directory absent), with the reason it gave;
    → RUNNING once it reports ready."""
    child = _child(factory)
    watcher = _started(child, factory, clock)
    watcher.report("waiting", reason="directory missing")
    child.receive(clock.advance(1))
    assert (child.view(clock())["state"], child.reason) == ("WAITING", "directory missing")
    watcher.report("ready", pid=watcher.pid)
    child.receive(clock.advance(30))
    assert (child.view(clock())["state"], child.view(clock())["reason"]) == ("RUNNING", "")


def test_a_running_watcher_whose_mount_went_away_waits_then_runs_again(
        factory: FakeFactory, clock: FakeClock) -> None:
    """RUNNING → WAITING on "waiting" (unmounted) → RUNNING on "ready", same process."""
    child = _child(factory)
    watcher = _running(child, factory, clock)
    watcher.report("waiting", reason="directory unmounted")
    child.receive(clock.advance(10))
    assert (child.state, child.reason) == (State.WAITING, "directory unmounted")
    watcher.report("ready", pid=watcher.pid)
    child.receive(clock.advance(10))
    assert (child.state, child.pid, child.restarts) == (State.RUNNING, watcher.pid, 0)


def test_a_watcher_that_exits_backs_off_for_the_first_delay(
        factory: FakeFactory, clock: FakeClock) -> None:
    """RUNNING → BACKOFF on exit: restarts counted, the exit shown, next start after
    restart_backoff_seconds (±20 % jitter)."""
    child = _child(factory)
    watcher = _running(child, factory, clock)
    clock.advance(5)
    delay = _exit(child, watcher, clock, 1)
    view = child.view(clock())
    assert (view["state"], view["restarts"], view["last_exit"], view["pid"]) == \
        ("BACKOFF", 1, "exit status 1", None)
    assert 0.8 <= delay <= 1.2


def test_backoff_doubles_with_each_quick_crash_up_to_its_cap(
        factory: FakeFactory, clock: FakeClock) -> None:
    """Crashes after short runs wait about 1, 2, 4, 4, 4 s (doubling, capped at
    restart_backoff_max_seconds)."""
    child = _child(factory)
    delays = []
    for _ in range(5):
        watcher = _running(child, factory, clock)
        clock.advance(5)  # well under backoff_reset_seconds
        delays.append(_exit(child, watcher, clock, 1))
        clock.now = child.next_start_at
    for delay, base in zip(delays, [1, 2, 4, 4, 4], strict=True):
        assert 0.8 * base <= delay <= 1.2 * base, delays


def test_backoff_starts_over_after_a_run_of_backoff_reset_seconds(
        factory: FakeFactory, clock: FakeClock) -> None:
    """After the delay has grown to its cap, a watcher that then ran for
    backoff_reset_seconds waits only the first delay after its next crash."""
    child = _child(factory)
    for _ in range(3):
        watcher = _running(child, factory, clock)
        clock.advance(5)
        _exit(child, watcher, clock, 1)
        clock.now = child.next_start_at
    watcher = _running(child, factory, clock)
    clock.advance(SETTINGS.backoff_reset_seconds + 1)
    assert 0.8 <= _exit(child, watcher, clock, 1) <= 1.2


def test_a_watcher_failing_before_ready_turns_fatal_after_the_retry_limit(
        factory: FakeFactory, clock: FakeClock) -> None:
    """START_RETRIES exits in a row without ever reporting ready: FATAL, no next start;
    one exit fewer still backs off."""
    child = _child(factory)
    for attempt in range(1, START_RETRIES + 1):
        watcher = _started(child, factory, clock)
        clock.advance(0.5)
        _exit(child, watcher, clock, 2)
        assert child.state is (State.FATAL if attempt == START_RETRIES else State.BACKOFF)
        clock.now = max(clock.now, child.next_start_at)
    assert (child.view(clock())["state"], child.reason) == ("FATAL", "exit status 2")


def test_reaching_ready_forgives_the_failures_before(
        factory: FakeFactory, clock: FakeClock) -> None:
    """START_RETRIES - 1 failures before ready, a start that reports ready (and exits), then
    START_RETRIES - 1 failures more: still backing off, not FATAL."""
    child = _child(factory)
    for attempt in range(2 * START_RETRIES - 1):
        if attempt == START_RETRIES - 1:
            watcher = _running(child, factory, clock)
        else:
            watcher = _started(child, factory, clock)
        _exit(child, watcher, clock, 2)
        assert child.state is State.BACKOFF, attempt
        clock.now = child.next_start_at


def test_a_watched_directory_that_is_gone_is_retried_forever_never_fatal(
        factory: FakeFactory, clock: FakeClock) -> None:
    """Exits with EXIT_DIRECTORY_GONE before ready, many more than START_RETRIES: always
    BACKOFF (at the capped delay), reason "directory missing"."""
    child = _child(factory)
    delays = []
    for _ in range(START_RETRIES * 3):
        delays.append(_exit(child, _started(child, factory, clock), clock, EXIT_DIRECTORY_GONE))
        assert (child.state, child.reason) == (State.BACKOFF, "directory missing")
        clock.now = child.next_start_at
    cap = SETTINGS.restart_backoff_max_seconds
    assert all(0.8 * cap <= delay <= 1.2 * cap for delay in delays[2:]), delays
    assert child.view(clock())["last_exit"] == "watched directory missing"


def test_a_watcher_that_stops_heartbeating_gets_sigterm_then_sigkill(
        factory: FakeFactory, clock: FakeClock) -> None:
    """Silent for hang_timeout_seconds: SIGTERM; still there stop_timeout_seconds later:
    SIGKILL; then it backs off like any crash, shown as killed by SIGKILL."""
    factory.obeys_sigterm = False
    child = _child(factory)
    watcher = _running(child, factory, clock)
    child.check_hung(clock.advance(SETTINGS.hang_timeout_seconds - 1))
    assert watcher.signals == []
    child.check_hung(clock.advance(1))
    assert watcher.signals == ["SIGTERM"]
    child.check_hung(clock.advance(SETTINGS.stop_timeout_seconds - 1))
    assert watcher.signals == ["SIGTERM"]
    child.check_hung(clock.advance(1))
    assert watcher.signals == ["SIGTERM", "SIGKILL"]
    assert child.reap(clock())
    assert (child.state, child.last_exit) == (State.BACKOFF, "killed by SIGKILL")


def test_a_heartbeat_keeps_a_watcher_from_being_taken_for_hung(
        factory: FakeFactory, clock: FakeClock) -> None:
    """A heartbeat within every hang_timeout_seconds: never signalled."""
    child = _child(factory)
    watcher = _running(child, factory, clock)
    for _ in range(5):
        clock.advance(SETTINGS.hang_timeout_seconds - 1)
        watcher.report("heartbeat", events={})
        child.receive(clock())
        child.check_hung(clock())
    assert (watcher.signals, child.state) == ([], State.RUNNING)


def test_the_reason_a_watcher_gave_before_exiting_is_shown(
        factory: FakeFactory, clock: FakeClock) -> None:
    """"exiting" with a reason, then exit 4: /status shows that reason with the exit status."""
    child = _child(factory)
    watcher = _running(child, factory, clock)
    watcher.report("exiting", reason="publisher thread ended: broker refused the login")
    _exit(child, watcher, clock, 4)
    assert child.view(clock())["reason"] == \
        "publisher thread ended: broker refused the login (exit status 4)"


def test_a_watcher_asked_to_stop_is_stopped_not_restarted(
        factory: FakeFactory, clock: FakeClock) -> None:
    """terminate(): SIGTERM, STOPPING; its exit makes it STOPPED, with no restart counted."""
    child = _child(factory)
    watcher = _running(child, factory, clock)
    child.terminate()
    assert watcher.signals == ["SIGTERM"]
    assert child.reap(clock())
    assert (child.state, child.restarts, child.pid) == (State.STOPPED, 0, None)


# ---------------------------------------------------------------- the Supervisor loop


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
            self.supervisor._shutdown()  # (the fakes obey SIGTERM)
            self.supervisor._locks.release_all()
            os.close(self._wake_fd)
            os.close(wake_write)


def _roster(tmp_path: Path, *instances: InstanceConfig) -> Roster:
    return Roster(state_dir=str(tmp_path / "state"), supervisor=SETTINGS, instances=instances,
                  http=HttpConfig(listen=None), source=str(tmp_path / "roster.yaml"))


@pytest.fixture
def fleet(tmp_path: Path, factory: FakeFactory, clock: FakeClock) -> Iterator[Fleet]:
    """Instances a and b, both STARTING."""
    with Fleet(_roster(tmp_path, _instance("a"), _instance("b")), factory, clock).running() \
            as running:
        yield running


def test_a_backed_off_watcher_is_started_again_once_its_delay_is_over(
        fleet: Fleet, factory: FakeFactory) -> None:
    """BACKOFF → STARTING: the loop starts a new process once the delay has passed, not
    before; the other instance is untouched."""
    first = factory.of("a")[0]
    first.exit(1)
    fleet.turn(advance=0.1)
    assert fleet.view()["a"]["state"] == "BACKOFF"
    delay = fleet.supervisor._children["a"].next_start_at - fleet.clock()
    fleet.turn(advance=delay - 0.01)
    assert (fleet.view()["a"]["state"], len(factory.of("a"))) == ("BACKOFF", 1)
    fleet.turn(advance=0.02)
    second = factory.of("a")[-1]
    assert (fleet.view()["a"]["state"], fleet.view()["a"]["pid"]) == ("STARTING", second.pid)
    assert len(factory.of("b")) == 1 and factory.of("b")[0].signals == []


def test_a_watcher_over_its_memory_limit_is_restarted_at_once(
        tmp_path: Path, factory: FakeFactory, clock: FakeClock) -> None:
    """RSS above memory_limit while RUNNING: SIGTERM, then a new process at once (no
    backoff), the reason shown in /status."""
    roster = _roster(tmp_path, _instance("a", memory_limit=100_000_000))
    with Fleet(roster, factory, clock).running() as fleet:
        first = factory.of("a")[0]
        first.report("ready", pid=first.pid)
        fleet.turn()
        assert fleet.view()["a"]["state"] == "RUNNING"
        fleet.meter.rss[first.pid] = 150_000_000
        fleet.turn(advance=SAMPLE_EVERY_SECONDS)  # a resource sample
        assert first.signals == ["SIGTERM"]
        fleet.turn(advance=0.0)  # its exit is reaped, and it is started again in that turn
        second = factory.of("a")[-1]
        view = fleet.view()["a"]
        assert (view["state"], view["pid"], view["restarts"]) == ("STARTING", second.pid, 1)
        assert view["reason"] == ("memory limit exceeded: RSS 150000000 bytes > memory_limit "
                                  "100000000 bytes")


def test_a_watcher_under_its_memory_limit_is_left_running(
        tmp_path: Path, factory: FakeFactory, clock: FakeClock) -> None:
    """RSS at memory_limit (not above) while RUNNING: no signal, no restart."""
    roster = _roster(tmp_path, _instance("a", memory_limit=100_000_000))
    with Fleet(roster, factory, clock).running() as fleet:
        first = factory.of("a")[0]
        first.report("ready", pid=first.pid)
        fleet.meter.rss[first.pid] = 100_000_000
        for _ in range(3):
            fleet.turn(advance=SAMPLE_EVERY_SECONDS)
        assert (first.signals, len(factory.of("a"))) == ([], 1)
        assert fleet.view()["a"]["state"] == "RUNNING"


def test_reload_starts_an_added_instance_and_leaves_the_others_running(
        tmp_path: Path, fleet: Fleet, factory: FakeFactory) -> None:
    """Converge: an instance added to the roster is started; unchanged ones keep their
    process, unsignalled."""
    fleet.reload(_roster(tmp_path, _instance("a"), _instance("b"), _instance("c")))
    assert [iid for iid, _ in factory.started] == ["a", "b", "c"]
    assert fleet.view()["c"]["state"] == "STARTING"
    assert all(w.signals == [] for _, w in factory.started)


def test_reload_stops_a_removed_instance(
        tmp_path: Path, fleet: Fleet, factory: FakeFactory) -> None:
    """Converge: an instance gone from the roster gets SIGTERM, is reaped and leaves /status;
    its run lock is let go."""
    fleet.reload(_roster(tmp_path, _instance("a")))
    assert factory.of("b")[0].signals == ["SIGTERM"]
    assert list(fleet.view()) == ["a"]
    assert "b" not in fleet.supervisor._locks.held
    assert factory.of("a")[0].signals == []


def test_reload_restarts_a_changed_instance(
        tmp_path: Path, fleet: Fleet, factory: FakeFactory) -> None:
    """Converge: an instance whose settings changed is stopped and started with the new
    ones; the unchanged one is left alone."""
    changed = replace(_instance("a"), directory="/data/elsewhere")
    fleet.reload(_roster(tmp_path, changed, _instance("b")))
    old, new = factory.of("a")
    assert (old.signals, new.signals) == (["SIGTERM"], [])
    view = fleet.view()["a"]
    assert (view["pid"], view["directory"]) == (new.pid, "/data/elsewhere")
    assert factory.of("b")[0].signals == [] and len(factory.of("b")) == 1


def test_reload_of_the_same_roster_changes_nothing(
        tmp_path: Path, fleet: Fleet, factory: FakeFactory) -> None:
    """Converge: every instance unchanged: no process started or signalled."""
    before = fleet.view()
    fleet.reload(_roster(tmp_path, _instance("a"), _instance("b")))
    assert len(factory.started) == 2 and all(w.signals == [] for _, w in factory.started)
    assert {iid: v["pid"] for iid, v in fleet.view().items()} == \
        {iid: v["pid"] for iid, v in before.items()}


def test_reload_revives_a_fatal_instance_even_if_unchanged(
        tmp_path: Path, fleet: Fleet, factory: FakeFactory) -> None:
    """A FATAL instance is started afresh by a reload of the same roster (SIGHUP after
    fixing the cause)."""
    for _ in range(START_RETRIES):
        factory.of("a")[-1].exit(2)
        fleet.turn()  # reaped: BACKOFF (or FATAL)
        fleet.turn(advance=SETTINGS.restart_backoff_max_seconds * 1.2)  # started again
    assert fleet.view()["a"]["state"] == "FATAL"
    assert len(factory.of("a")) == START_RETRIES
    fleet.reload(_roster(tmp_path, _instance("a"), _instance("b")))
    assert (fleet.view()["a"]["state"], len(factory.of("a"))) == \
        ("STARTING", START_RETRIES + 1)


def test_a_rejected_reload_leaves_the_fleet_as_it_was(
        tmp_path: Path, fleet: Fleet, factory: FakeFactory) -> None:
    """A roster that fails to load on SIGHUP: nothing started, stopped or signalled."""
    fleet.reload(ConfigError("roster.yaml:3: instances[0].directory: missing"))
    assert len(factory.started) == 2 and all(w.signals == [] for _, w in factory.started)
    assert set(fleet.view()) == {"a", "b"}
