"""One child's lifecycle as /status shows it: the reason a watcher gave before exiting."""

from __future__ import annotations

import multiprocessing

from multiwatch.config import BrokerConfig, InstanceConfig, SupervisorConfig
from multiwatch.supervisor.lifecycle import Child, State
from multiwatch.watcher.spec import ChildSpec
from tests.supervisor.fakes import ReportPipe


class _Exited:
    """A watcher process that has already exited with `code`."""

    pid = 4242
    sentinel = -1

    def __init__(self, code: int) -> None:
        self.exitcode = code

    def is_alive(self) -> bool:
        return False

    def join(self, timeout: float | None = None) -> None:
        return None


def _child() -> Child:
    spec = ChildSpec(instance=InstanceConfig(id="music", directory="/data/music"),
                     broker=BrokerConfig(), state_dir="/tmp/state", log_level="INFO",
                     stop_timeout_seconds=8, parent_pid=1)
    return Child(spec, SupervisorConfig(), multiprocessing.get_context("spawn"))


def test_a_watcher_that_exits_on_its_own_shows_the_reason_it_gave() -> None:
    """The watcher said its publisher stopped working, then exited 4: /status shows that
    reason with the exit status, not a bare "exit status 4"."""
    child = _child()
    child.state = State.RUNNING
    child.process = _Exited(4)  # type: ignore[assignment]
    reason = "publisher thread ended: cannot open the outbox in the state database"
    child.reader = ReportPipe([("heartbeat", {"broker_connected": True}),  # type: ignore[assignment]
                               ("exiting", {"reason": reason})], then_eof=True)
    child.receive(10.0)
    assert child.reap(10.0)
    view = child.view(10.0)
    assert view["state"] == "BACKOFF"
    assert view["reason"] == f"{reason} (exit status 4)"


def test_a_running_watcher_shows_what_holds_its_events_as_its_reason() -> None:
    """RUNNING and connected, but an unroutable event is held: that is the instance's reason."""
    child = _child()
    child.state = State.RUNNING
    child.snapshot = {"broker_connected": True, "problem": "publishing held: event m1 ..."}
    assert child.view(5.0)["reason"] == "publishing held: event m1 ..."


def test_an_empty_heartbeat_keeps_the_status_the_last_full_one_gave() -> None:
    """An idle watcher's heartbeat says only "alive, unchanged" ({}): /status keeps showing
    its last figures, and the hang check counts the empty beat."""
    child = _child()
    child.state = State.RUNNING
    child.started_at = 0.0
    child.reader = ReportPipe([("heartbeat", {"broker_connected": True,  # type: ignore[assignment]
                                              "events": {"file_discovered": 3}})])
    child.receive(10.0)
    child.reader = ReportPipe([("heartbeat", {})])  # type: ignore[assignment]
    child.receive(15.0)
    assert child.view(15.0)["heartbeat"] == {"broker_connected": True,
                                             "events": {"file_discovered": 3}}
    assert child.last_heartbeat == 15.0  # (the hang check counts it)
