"""Watchers are forked from one template process that `multiwatch run` starts before it
reads the roster: each is still its own process (a crash costs one directory), in the
supervisor's process group, gone with the supervisor, and never left behind."""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Iterator
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil
import pytest

from multiwatch.cli import main
from multiwatch.config import BrokerConfig
from multiwatch.supervisor.lifecycle import START_RETRIES, Child, State, WatcherProcess
from multiwatch.supervisor.template import template_pid
from multiwatch.watcher.spec import ChildSpec
from tests.supervisor.fakes import SETTINGS, FakeClock, make_instance
from tests.support.consumer import wait_for
from tests.support.process import Multiwatch, write_roster

TEMPLATE_TITLE = "multiwatch: template"
IDS = ("first", "second")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Multiwatch]:
    """`multiwatch run` with two instances (embedded spool), both watching; every process
    it started is killed afterwards (its session)."""
    for name in IDS:
        (tmp_path / name).mkdir()
    roster = write_roster(tmp_path / "roster.yaml", {
        "state_dir": str(tmp_path / "state"),
        "defaults": {"settle_seconds": 0.1},
        "supervisor": {"restart_backoff_seconds": 0.2},
        "instances": [{"id": name, "directory": str(tmp_path / name)} for name in IDS],
    })
    # Each process of the run prints "import time: ..." per module it imports (shared stderr).
    mw = Multiwatch(["-c", str(roster)], env={"PYTHONPROFILEIMPORTTIME": "1"})
    try:
        for name in IDS:
            mw.wait_watching(name)
        yield mw
    finally:
        mw.cleanup()


def _title(process: psutil.Process) -> str:
    return " ".join(process.cmdline()).strip()


def _watchers(mw: Multiwatch) -> dict[str, psutil.Process]:
    """The running watcher of each instance, by the pid its latest "watching" line gave."""
    pids = {line["instance_id"]: line["pid"] for line in mw.lines
            if line.get("message") == "watching"}
    return {name: psutil.Process(pid) for name, pid in pids.items()}


def _discovered_by(instance_id: str, line: dict[str, Any]) -> bool:
    return line.get("message") == "file discovered" and line.get("instance_id") == instance_id


def test_every_watcher_is_forked_from_the_one_template(fleet: Multiwatch, tmp_path: Path) -> None:
    """Both watchers are children of one `multiwatch: template` process (threadless),
    itself the supervisor's child; the watcher's modules were imported once, by the template, not by
    each watcher; all share the supervisor's process group (Ctrl-C, killpg); and each
    announces what lands in its directory."""
    supervisor = psutil.Process(fleet.pid)
    watchers = _watchers(fleet)
    parents = {watcher.ppid() for watcher in watchers.values()}
    assert len(parents) == 1
    template = psutil.Process(parents.pop())
    assert _title(template) == TEMPLATE_TITLE
    assert template.ppid() == supervisor.pid
    assert template.num_threads() == 1  # forking is safe only without threads
    assert sorted(_title(w) for w in watchers.values()) == [f"multiwatch: watcher {name}"
                                                            for name in sorted(IDS)]
    groups = {os.getpgid(p.pid) for p in [supervisor, template, *watchers.values()]}
    assert groups == {os.getpgid(fleet.pid)}
    imported = [line.rsplit("|", 1)[1].strip() for line in fleet.raw
                if line.startswith("import time:") and line.count("|") == 2]
    assert imported.count("multiwatch.watcher.main") == 1  # spawned watchers: once each
    for name in IDS:
        (tmp_path / name / f"{name}.txt").write_text(name)
        fleet.wait_for_log(partial(_discovered_by, name))
    assert fleet.terminate() == 0


def test_a_killed_watcher_is_forked_again_and_costs_only_its_directory(
        fleet: Multiwatch, tmp_path: Path) -> None:
    """kill -9 of one watcher: the supervisor starts it again from the same template; the
    other watcher keeps running, untouched."""
    before = _watchers(fleet)
    template = before["first"].ppid()
    mark = len(fleet.lines)
    before["first"].kill()
    again = fleet.wait_watching("first", after=mark)
    assert again["pid"] != before["first"].pid
    assert psutil.Process(again["pid"]).ppid() == template
    assert before["second"].is_running() and _watchers(fleet)["second"] == before["second"]
    (tmp_path / "first" / "after.txt").write_text("again")
    fleet.wait_for_log(partial(_discovered_by, "first"), after=mark)


def test_kill_9_of_the_supervisor_leaves_no_template_or_watcher(fleet: Multiwatch) -> None:
    """kill -9 of the supervisor: the template exits (its alive pipe closed) and each
    watcher, told by the kernel, stops cleanly (it logs "stopped"); nothing is orphaned."""
    below = [psutil.Process(pid) for pid in fleet.child_pids()]
    assert len(below) >= 1 + len(IDS)  # template, watchers (and the resource tracker)
    mark = len(fleet.lines)
    os.kill(fleet.pid, signal.SIGKILL)
    fleet.process.wait(timeout=10)
    wait_for(lambda: not [p for p in below if _alive(p)], timeout=20,
             message=f"left running: {[p.pid for p in below if _alive(p)]}")
    stopped = {line.get("instance_id") for line in fleet.lines[mark:]
               if line.get("message") == "stopped"}
    assert stopped == set(IDS)


def test_a_killed_template_takes_its_watchers_which_are_started_again(
        fleet: Multiwatch) -> None:
    """kill -9 of the template: its watchers stop (they die with their parent), and the
    supervisor starts each again from a new template."""
    before = _watchers(fleet)
    template = psutil.Process(before["first"].ppid())
    mark = len(fleet.lines)
    template.kill()
    for name in IDS:
        fleet.wait_watching(name, after=mark, timeout=60)
    after = _watchers(fleet)
    new_templates = {watcher.ppid() for watcher in after.values()}
    assert len(new_templates) == 1 and template.pid not in new_templates
    assert _title(psutil.Process(new_templates.pop())) == TEMPLATE_TITLE
    wait_for(lambda: not any(_alive(p) for p in before.values()), timeout=20,
             message="the old template's watchers are still running")


def test_ctrl_c_to_the_group_stops_everything_cleanly(fleet: Multiwatch) -> None:
    """SIGINT to the whole process group (Ctrl-C in a terminal): the supervisor leads the
    stop, exit status 0; the template and the watchers ignore it, so no traceback."""
    below = [psutil.Process(pid) for pid in fleet.child_pids()]
    os.killpg(fleet.pid, signal.SIGINT)
    assert fleet.process.wait(timeout=30) == 0
    wait_for(lambda: not [p for p in below if _alive(p)], timeout=20,
             message="processes left behind")
    assert not [line for line in fleet.raw if "Traceback" in line or "KeyboardInterrupt" in line]


def test_sigterm_to_the_group_is_led_by_the_supervisor(fleet: Multiwatch) -> None:
    """SIGTERM to the whole process group (killpg, an init forwarding to the group): the
    template outlives the watchers, so the supervisor waits for each watcher's clean stop
    (its exit status relayed by the template) before it says it stopped, and exits 0."""
    os.killpg(fleet.pid, signal.SIGTERM)
    assert fleet.process.wait(timeout=30) == 0
    fleet.wait_for_log(lambda line: line.get("message") == "supervisor stopped")
    messages = [(line.get("instance_id"), line.get("message")) for line in fleet.lines]
    last = messages.index(("supervisor", "supervisor stopped"))
    for name in IDS:
        assert (name, "stopped") in messages[:last], messages  # the watcher's own last line


def test_an_invalid_roster_leaves_no_template_behind(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The template is started before the roster is read, and stopped when the roster is
    rejected: the command exits 2 with the reason, and no template of ours is left."""
    roster = tmp_path / "roster.yaml"
    roster.write_text("instances:\n  - {id: x}\n")  # no directory
    assert main(["run", "-c", str(roster)]) == 2
    assert "directory" in capsys.readouterr().err
    assert template_pid() is None
    assert not [p for p in psutil.Process().children(recursive=True)
                if _alive(p) and _title(p) == TEMPLATE_TITLE]


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_start_that_makes_no_process_is_retried_then_fatal(clock: FakeClock) -> None:
    """When no watcher process can be made (no process to spare, no template), the instance
    says why, is retried after its backoff, and turns FATAL after START_RETRIES in a row;
    the supervisor goes on."""
    def cannot(_spec: ChildSpec) -> tuple[WatcherProcess, Connection]:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    child = Child(ChildSpec(instance=make_instance(), broker=BrokerConfig(),
                            state_dir="/tmp/state", log_level="INFO", stop_timeout_seconds=8,
                            parent_pid=1), SETTINGS, spawn=cannot)
    child.start(clock())
    assert child.state is State.BACKOFF and child.process is None
    assert "cannot start the watcher: " in child.reason and "temporarily" in child.reason
    assert child.next_start_at > clock()
    for _ in range(START_RETRIES - 1):
        clock.advance(child.next_start_at - clock())
        child.start(clock())
    assert child.state is State.FATAL
