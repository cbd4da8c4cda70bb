"""The supervisor loop's edges, one per test, in-process on fake watcher processes and a
fake clock: a backed-off watcher started again, the memory-limit restart, a hung watcher in
the loop, and converging on reload (added, removed, changed, unchanged, FATAL, rejected)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from multiwatch.config import ConfigError, InstanceConfig
from multiwatch.config.ha import HaConfig
from multiwatch.supervisor.fleet import SAMPLE_EVERY_SECONDS
from multiwatch.supervisor.lifecycle import START_RETRIES
from multiwatch.supervisor.run_lock import InstanceLocks, RunLockHeld
from multiwatch.watcher.spec import EXIT_LEASE_LOST
from tests.supervisor.fakes import (
    SETTINGS,
    FakeClock,
    FakeFactory,
    Fleet,
    make_instance,
    make_roster,
)


@pytest.fixture
def fleet(tmp_path: Path, factory: FakeFactory, clock: FakeClock) -> Iterator[Fleet]:
    """Instances a and b, both STARTING."""
    roster = make_roster(tmp_path, make_instance("a"), make_instance("b"))
    with Fleet(roster, factory, clock).running() as running:
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
    roster = make_roster(tmp_path, make_instance("a", memory_limit=100_000_000))
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
    roster = make_roster(tmp_path, make_instance("a", memory_limit=100_000_000))
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
    fleet.reload(make_roster(tmp_path, make_instance("a"), make_instance("b"), make_instance("c")))
    assert [iid for iid, _ in factory.started] == ["a", "b", "c"]
    assert fleet.view()["c"]["state"] == "STARTING"
    assert all(w.signals == [] for _, w in factory.started)


def test_reload_stops_a_removedmake_instance(
        tmp_path: Path, fleet: Fleet, factory: FakeFactory) -> None:
    """Converge: an instance gone from the roster gets SIGTERM, is reaped and leaves /status;
    its run lock is let go."""
    fleet.reload(make_roster(tmp_path, make_instance("a")))
    assert factory.of("b")[0].signals == ["SIGTERM"]
    assert list(fleet.view()) == ["a"]
    assert "b" not in fleet.supervisor._locks.held
    assert factory.of("a")[0].signals == []


def test_reload_restarts_a_changedmake_instance(
        tmp_path: Path, fleet: Fleet, factory: FakeFactory) -> None:
    """Converge: an instance whose settings changed is stopped and started with the new
    ones; the unchanged one is left alone."""
    changed = replace(make_instance("a"), directory="/data/elsewhere")
    fleet.reload(make_roster(tmp_path, changed, make_instance("b")))
    old, new = factory.of("a")
    assert (old.signals, new.signals) == (["SIGTERM"], [])
    view = fleet.view()["a"]
    assert (view["pid"], view["directory"]) == (new.pid, "/data/elsewhere")
    assert factory.of("b")[0].signals == [] and len(factory.of("b")) == 1


def test_reload_of_the_same_roster_changes_nothing(
        tmp_path: Path, fleet: Fleet, factory: FakeFactory) -> None:
    """Converge: every instance unchanged: no process started or signalled."""
    before = fleet.view()
    fleet.reload(make_roster(tmp_path, make_instance("a"), make_instance("b")))
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
    fleet.reload(make_roster(tmp_path, make_instance("a"), make_instance("b")))
    assert (fleet.view()["a"]["state"], len(factory.of("a"))) == \
        ("STARTING", START_RETRIES + 1)


def test_a_rejected_reload_leaves_the_fleet_as_it_was(
        tmp_path: Path, fleet: Fleet, factory: FakeFactory) -> None:
    """A roster that fails to load on SIGHUP: nothing started, stopped or signalled."""
    fleet.reload(ConfigError("roster.yaml:3: instances[0].directory: missing"))
    assert len(factory.started) == 2 and all(w.signals == [] for _, w in factory.started)
    assert set(fleet.view()) == {"a", "b"}



def test_the_loop_terminates_then_kills_a_hung_watcher_and_starts_it_again(
        tmp_path: Path, factory: FakeFactory, clock: FakeClock) -> None:
    """No heartbeat for hang_timeout_seconds: SIGTERM; ignored for stop_timeout_seconds:
    SIGKILL; reaped as killed by SIGKILL and started again after its backoff."""
    factory.obeys_sigterm = False
    with Fleet(make_roster(tmp_path, make_instance("a")), factory, clock).running() as fleet:
        hung = factory.of("a")[0]
        factory.obeys_sigterm = True  # (the one started after it)
        hung.report("ready", pid=hung.pid)
        fleet.turn()
        fleet.turn(advance=SETTINGS.hang_timeout_seconds)
        assert hung.signals == ["SIGTERM"]
        fleet.turn(advance=SETTINGS.stop_timeout_seconds)
        assert hung.signals == ["SIGTERM", "SIGKILL"]
        fleet.turn(advance=0.0)
        view = fleet.view()["a"]
        assert (view["state"], view["last_exit"]) == ("BACKOFF", "killed by SIGKILL")
        fleet.turn(advance=1.2 * SETTINGS.restart_backoff_seconds)
        assert fleet.view()["a"]["state"] == "STARTING"
        assert fleet.view()["a"]["pid"] == factory.of("a")[1].pid


def _replica(instance_id: str) -> InstanceConfig:
    return replace(make_instance(instance_id), ha=HaConfig(enabled=True))


def _other_supervisor(tmp_path: Path, instance_id: str, *, replica: bool) -> InstanceLocks | None:
    """Another supervisor on the same state_dir taking the instance's run.lock: its locks, or
    None if refused."""
    other = InstanceLocks(str(tmp_path / "state"), None)
    try:
        other.acquire(instance_id, replica=replica)
    except RunLockHeld:
        return None
    return other


def test_reload_turning_ha_on_holds_run_lock_shared_with_replicas(
        tmp_path: Path, fleet: Fleet, factory: FakeFactory) -> None:
    """ha enabled by SIGHUP: the watcher restarts as a replica and run.lock is held shared,
    so another replica's supervisor may run beside it, and one without ha still may not."""
    assert _other_supervisor(tmp_path, "a", replica=True) is None  # exclusive before
    fleet.reload(make_roster(tmp_path, _replica("a"), make_instance("b")))
    assert [w.signals for w in factory.of("a")] == [["SIGTERM"], []]
    other = _other_supervisor(tmp_path, "a", replica=True)
    assert other is not None
    other.release_all()
    assert _other_supervisor(tmp_path, "a", replica=False) is None


def test_reload_turning_ha_off_beside_other_replicas_is_refused_until_they_stop(
        tmp_path: Path, factory: FakeFactory, clock: FakeClock,
        caplog: pytest.LogCaptureFixture) -> None:
    """ha disabled by SIGHUP while another replica runs on this state_dir: refused with an
    error saying why and what to do, the replica runs on untouched; once the other has
    stopped, the same reload applies: restarted without ha, run.lock exclusive again."""
    with Fleet(make_roster(tmp_path, _replica("a")), factory, clock).running() as fleet:
        other = _other_supervisor(tmp_path, "a", replica=True)
        assert other is not None
        fleet.reload(make_roster(tmp_path, make_instance("a")))
        assert [w.signals for w in factory.of("a")] == [[]]
        (refusal,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert "ha turned off for instance a" in refusal and "goes on as a replica" in refusal
        assert "a" in fleet.supervisor._locks.held
        other.release_all()
        fleet.reload(make_roster(tmp_path, make_instance("a")))
        assert [w.signals for w in factory.of("a")] == [["SIGTERM"], []]
        assert _other_supervisor(tmp_path, "a", replica=True) is None


def test_a_demoted_replica_is_started_again_on_the_next_turn_uncounted(
        tmp_path: Path, factory: FakeFactory, clock: FakeClock) -> None:
    """A replica exiting with EXIT_LEASE_LOST is started again as soon as it is reaped, with
    no backoff, and /status counts no restart."""
    with Fleet(make_roster(tmp_path, _replica("a")), factory, clock).running() as fleet:
        first = factory.of("a")[0]
        first.report("ready", pid=first.pid)
        fleet.turn()
        first.exit(EXIT_LEASE_LOST)
        fleet.turn(advance=0.01)  # reaped
        fleet.turn(advance=0.01)  # started again, well within any backoff
        assert len(factory.of("a")) == 2
        view = fleet.view()["a"]
        assert (view["state"], view["restarts"]) == ("STARTING", 0)
