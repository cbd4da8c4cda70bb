"""The supervisor with real processes and signals: backoff, FATAL, hangs, reload, scale."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import psutil

from tests.support.consumer import wait_for
from tests.support.process import LogLine, Multiwatch, write_roster


def _roster(tmp_path: Path, ids: list[str], **supervisor: Any) -> Path:
    for iid in ids:
        (tmp_path / iid).mkdir(exist_ok=True)
    return write_roster(tmp_path / "roster.yaml", {
        "state_dir": str(tmp_path / "state"),
        "defaults": {"settle_seconds": 0.2},
        "supervisor": {"stop_timeout_seconds": 3, "restart_backoff_seconds": 0.5,
                       "restart_backoff_max_seconds": 4, **supervisor},
        "instances": [{"id": iid, "directory": str(tmp_path / iid)} for iid in ids],
    })


def _is(line: LogLine, message: str, instance_id: str) -> bool:
    return line.get("message") == message and line.get("instance_id") == instance_id


def _poison_state(tmp_path: Path, instance_id: str) -> Path:
    """A state database from a 'future' multiwatch: the child refuses it and exits."""
    db = tmp_path / "state" / "instances" / instance_id / "state.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    return db


def test_crashing_child_backs_off_longer_each_time_then_recovers(tmp_path: Path) -> None:
    """A child that keeps failing is restarted with growing delays while the others run on,
    and becomes RUNNING again once the cause is fixed."""
    roster = _roster(tmp_path, ["steady", "flaky"], restart_backoff_seconds=0.4)
    db = _poison_state(tmp_path, "flaky")
    mw = Multiwatch(["-c", str(roster)])
    try:
        steady = mw.wait_watching("steady")
        wait_for(lambda: len(_backoffs(mw, "flaky")) >= 3, timeout=30,
                 message="flaky was not restarted three times")
        delays = [line["restart_in_seconds"] for line in _backoffs(mw, "flaky")[:3]]
        assert delays[0] < delays[1] < delays[2], delays
        db.unlink()  # the fix
        mw.wait_watching("flaky", timeout=30)
        assert mw.wait_watching("steady")["pid"] == steady["pid"]
        assert not _backoffs(mw, "steady")
    finally:
        mw.cleanup()


def _backoffs(mw: Multiwatch, instance_id: str) -> list[LogLine]:
    return [x for x in list(mw.lines) if _is(x, "child exited; restarting after backoff",
                                             instance_id)]


def test_child_failing_before_ready_turns_fatal_and_sighup_revives_it(tmp_path: Path) -> None:
    """After repeated failures before ever becoming ready the child is FATAL (no more
    restarts); fixing the cause and sending SIGHUP starts it again."""
    roster = _roster(tmp_path, ["doomed"], restart_backoff_seconds=0.1,
                     restart_backoff_max_seconds=0.2)
    db = _poison_state(tmp_path, "doomed")
    mw = Multiwatch(["-c", str(roster)])
    try:
        mw.wait_for_log(lambda x: x.get("instance_id") == "doomed"
                        and "giving up" in str(x.get("message")), timeout=30)
        db.unlink()
        mark = len(mw.lines)
        os.kill(mw.pid, signal.SIGHUP)
        mw.wait_watching("doomed", after=mark, timeout=30)
    finally:
        mw.cleanup()


def test_hung_child_is_killed_and_restarted(tmp_path: Path) -> None:
    """A child whose work loop stops (SIGSTOP) is replaced within hang_timeout + a margin."""
    roster = _roster(tmp_path, ["sleepy"], hang_timeout_seconds=2, stop_timeout_seconds=1)
    mw = Multiwatch(["-c", str(roster)])
    try:
        first = mw.wait_watching("sleepy")
        mark = len(mw.lines)
        os.kill(first["pid"], signal.SIGSTOP)
        stopped_at = time.monotonic()
        mw.wait_for_log(lambda x: _is(x, "child stopped heartbeating; terminating it", "sleepy"),
                        after=mark, timeout=15)
        second = mw.wait_watching("sleepy", after=mark, timeout=20)
        took = time.monotonic() - stopped_at
        assert second["pid"] != first["pid"]
        assert took < 2 + 1 + 5, f"replaced after {took:.1f}s"
        wait_for(lambda: not psutil.pid_exists(first["pid"]) or
                 psutil.Process(first["pid"]).status() == psutil.STATUS_ZOMBIE, timeout=10,
                 message="the hung child is still there")
    finally:
        mw.cleanup()


def test_sighup_converges_to_the_new_roster(tmp_path: Path) -> None:
    """SIGHUP: added starts, removed stops, changed restarts, unchanged keeps its pid;
    an invalid roster changes nothing."""
    roster = _roster(tmp_path, ["keep", "drop", "change"])
    mw = Multiwatch(["-c", str(roster)])
    try:
        pids = {iid: mw.wait_watching(iid)["pid"] for iid in ("keep", "drop", "change")}
        (tmp_path / "add").mkdir()
        text = roster.read_text()
        roster.write_text("log_level: [oops\n")
        mark = len(mw.lines)
        os.kill(mw.pid, signal.SIGHUP)
        mw.wait_for_log(lambda x: x.get("message") == "roster reload rejected; the running "
                        "fleet is unchanged", after=mark)
        assert all(psutil.pid_exists(pid) for pid in pids.values())

        new = write_roster(roster, {
            "state_dir": str(tmp_path / "state"),
            "defaults": {"settle_seconds": 0.2},
            "supervisor": {"stop_timeout_seconds": 3, "restart_backoff_seconds": 0.5,
                           "restart_backoff_max_seconds": 4},
            "instances": [
                {"id": "keep", "directory": str(tmp_path / "keep")},
                {"id": "change", "directory": str(tmp_path / "change"), "settle_seconds": 0.5},
                {"id": "add", "directory": str(tmp_path / "add")},
            ],
        })
        assert new.read_text() != text
        mark = len(mw.lines)
        os.kill(mw.pid, signal.SIGHUP)
        added = mw.wait_watching("add", after=mark)
        changed = mw.wait_watching("change", after=mark)
        mw.wait_for_log(lambda x: _is(x, "child stopped", "drop"), after=mark)
        assert changed["pid"] != pids["change"]
        assert added["pid"] not in pids.values()
        assert psutil.pid_exists(pids["keep"])
        assert not [x for x in mw.lines[mark:] if _is(x, "child started", "keep")]
    finally:
        mw.cleanup()


def test_fifty_instances_start_and_stop_within_the_deadline(tmp_path: Path) -> None:
    """A 50-instance roster: every child watching, then SIGTERM stops all in time."""
    ids = [f"w{i:02d}" for i in range(50)]
    roster = _roster(tmp_path, ids, stop_timeout_seconds=8)
    mw = Multiwatch(["-c", str(roster)])
    try:
        for iid in ids:
            mw.wait_watching(iid, timeout=120)
        children = mw.child_pids()
        started = time.monotonic()
        assert mw.terminate(timeout=30) == 0
        assert time.monotonic() - started < 8 + 2
        wait_for(lambda: not [p for p in children if psutil.pid_exists(p)
                              and psutil.Process(p).status() != psutil.STATUS_ZOMBIE],
                 timeout=10, message="children left behind")
    finally:
        mw.cleanup()
