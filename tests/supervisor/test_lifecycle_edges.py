"""Every edge of one watcher's lifecycle (Child), one per test, in-process: a fake watcher
process (its reports sent down a real pipe, its exit status set by the test) and a fake clock.
The same edges with real processes and signals are in tests/integration/test_supervisor.py;
the supervisor loop's edges (restart after backoff, memory limit, reload) in
test_fleet_edges.py."""

from __future__ import annotations

from multiwatch.config import BrokerConfig, SupervisorConfig
from multiwatch.supervisor.lifecycle import START_RETRIES, Child, State
from multiwatch.watcher.spec import EXIT_DIRECTORY_GONE, EXIT_LEASE_LOST, ChildSpec
from tests.supervisor.fakes import SETTINGS, FakeClock, FakeFactory, FakeWatcher, make_instance


def _child(factory: FakeFactory, settings: SupervisorConfig = SETTINGS) -> Child:
    spec = ChildSpec(instance=make_instance(), broker=BrokerConfig(),
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



def test_a_replica_that_lost_the_lease_starts_again_at_once_uncounted(
        factory: FakeFactory, clock: FakeClock) -> None:
    """A demoted replica (exit EXIT_LEASE_LOST after "exiting") is started again at once,
    without a restart counted or its backoff grown, and never turns FATAL however often."""
    child = _child(factory)
    _exit(child, _running(child, factory, clock), clock, 1)  # one real crash first
    clock.advance(child.next_start_at - clock())
    backoff_after_crash = child._backoff
    for _ in range(START_RETRIES + 1):
        child.start(clock())
        watcher = factory.started[-1][1]
        watcher.report("ready", pid=watcher.pid)
        child.receive(clock())
        watcher.report("exiting", reason="another replica took over the instance; "
                       "restarting as a standby")
        assert _exit(child, watcher, clock, EXIT_LEASE_LOST) == 0
        assert child.state is State.BACKOFF
    view = child.view(clock())
    assert (view["restarts"], view["last_exit"]) == (1, "lost the lease to another replica")
    assert view["reason"].startswith("another replica took over the instance")
    assert child._backoff == backoff_after_crash
