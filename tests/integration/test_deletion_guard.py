"""The mass-deletion guard on a real RabbitMQ: a tree gone at start is held, not announced,
until the operator releases it; files back announce nothing; `rm` while running is announced.

Slow (several starts over 1,000 files each): kept in a file of its own."""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path
from typing import Any

from tests.integration.test_operator import _get, _status
from tests.support.consumer import Received, collect, declare_queue, wait_for
from tests.support.process import Multiwatch, free_port, run_cli, write_roster

QUEUE = "deletion-guard"
FILES = 1000
DIRECTORIES = 10


def _roster(tmp_path: Path, broker_url: str, inbox: Path, port: int) -> Path:
    return write_roster(tmp_path / "roster.yaml", {
        "state_dir": str(tmp_path / "state"),
        "broker": {"url": broker_url},
        "http": {"listen": f"127.0.0.1:{port}"},
        "defaults": {"settle_seconds": 0.1},
        "supervisor": {"stop_timeout_seconds": 5},
        "instances": [{"id": "inbox", "directory": str(inbox)}],
    })


def _tree(inbox: Path) -> None:
    for d in range(DIRECTORIES):
        (inbox / f"d{d}").mkdir()
        for f in range(FILES // DIRECTORIES):
            (inbox / f"d{d}" / f"f{f}.txt").write_bytes(b"%d/%d" % (d, f))


def _move_tree(source: Path, target: Path) -> None:
    """Move every directory of the tree (what an unmount or a mount back looks like)."""
    target.mkdir(exist_ok=True)
    for entry in sorted(source.iterdir()):
        os.rename(entry, target / entry.name)


def _kinds(messages: list[Received]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for message in messages:
        counts[message.body["event_type"]] = counts.get(message.body["event_type"], 0) + 1
    return counts


def _heartbeat(port: int) -> dict[str, Any]:
    beat: dict[str, Any] = _status(port).get("instances", {}).get("inbox", {}).get(
        "heartbeat") or {}
    return beat


def _start(roster: Path, port: int) -> Multiwatch:
    """Start multiwatch and wait until its startup scan is complete."""
    mw = Multiwatch(["-c", str(roster)])
    mw.wait_for_log(lambda line: line.get("message") == "startup scan complete", timeout=60)
    wait_for(lambda: _heartbeat(port), timeout=30, message="no heartbeat in /status")
    return mw


def _announced(roster: Path, port: int, broker_url: str, inbox: Path) -> None:
    """A first run announces the tree, then stops."""
    declare_queue(broker_url, QUEUE)
    _tree(inbox)
    mw = _start(roster, port)
    try:
        found = collect(broker_url, QUEUE, until=lambda r: len(r) >= FILES, timeout=60)
        assert _kinds(found) == {"file_discovered": FILES}
        assert mw.terminate() == 0
    finally:
        mw.cleanup()


def _held(port: int, count: int) -> None:
    wait_for(lambda: _heartbeat(port).get("deletions_held") == count, timeout=30,
             message=f"/status never showed {count} deletions held: {_heartbeat(port)}")


def test_a_tree_gone_at_start_is_held_then_released_once(
        tmp_path: Path, inbox: Path, broker_url: str) -> None:
    """1,000 tracked files gone at start: 0 deletions delivered, the count held in /status,
    /metrics and the command, kept across a restart; --release delivers 1,000 file_deleted,
    each once."""
    port = free_port()
    roster = _roster(tmp_path, broker_url, inbox, port)
    _announced(roster, port, broker_url, inbox)
    _move_tree(inbox, tmp_path / "away")

    mw = Multiwatch(["-c", str(roster)])
    try:
        warning = mw.wait_for_log(lambda line: "deletions held" in line.get("message", ""),
                              timeout=60)
        assert warning["level"] == "WARNING"
        assert "1000 deletions held" in warning["message"]
        assert "more than 1000 or more than 50%" in warning["message"]
        # The command to run, with the roster it needs (copied from the log, it works).
        assert f"multiwatch deletions -c {shlex.quote(str(roster))} inbox --release" in (
            warning["message"])
        _held(port, FILES)
        code, metrics = _get(port, "/metrics")
        assert code == 200
        assert 'multiwatch_deletions_held{instance_id="inbox"} 1000.0' in metrics
        shown = run_cli("deletions", "-c", str(roster), "inbox")
        assert shown.returncode == 0, shown.stderr
        assert "instance inbox: 1000 deletions held" in shown.stdout
        listed = run_cli("deletions", "-c", str(roster), "inbox", "--list")
        assert listed.stdout.splitlines()[0] == str(inbox / "d0" / "f0.txt")
        assert len(listed.stdout.splitlines()) == FILES
        assert mw.terminate() == 0
    finally:
        mw.cleanup()

    mw = _start(roster, port)  # held across a restart, still nothing announced
    try:
        _held(port, FILES)
        assert collect(broker_url, QUEUE, until=lambda r: False, timeout=2) == []
        released = run_cli("deletions", "-c", str(roster), "inbox", "--release")
        assert released.returncode == 0, released.stderr
        assert "1000 held deletions released" in released.stdout
        assert "0 deletions held" in released.stdout
        deleted = collect(broker_url, QUEUE, until=lambda r: len(r) >= FILES, timeout=60)
        assert _kinds(deleted) == {"file_deleted": FILES}
        assert len({m.body["file_info"]["relative_path"] for m in deleted}) == FILES
        assert collect(broker_url, QUEUE, until=lambda r: False, timeout=2) == []
        _held(port, 0)
        assert mw.terminate() == 0
    finally:
        mw.cleanup()


def test_files_back_are_no_longer_held_and_announce_nothing(
        tmp_path: Path, inbox: Path, broker_url: str) -> None:
    """The share back before the operator acts: the next start un-holds all 1,000 files and
    announces nothing at all; a recheck with nothing held says so."""
    port = free_port()
    roster = _roster(tmp_path, broker_url, inbox, port)
    _announced(roster, port, broker_url, inbox)
    _move_tree(inbox, tmp_path / "away")
    mw = _start(roster, port)
    try:
        _held(port, FILES)
        assert mw.terminate() == 0
    finally:
        mw.cleanup()
    _move_tree(tmp_path / "away", inbox)

    mw = _start(roster, port)
    try:
        _held(port, 0)
        assert collect(broker_url, QUEUE, until=lambda r: False, timeout=2) == []
        recheck = run_cli("deletions", "-c", str(roster), "inbox", "--recheck")
        assert recheck.returncode == 0, recheck.stderr
        assert "no deletions held; nothing to recheck" in recheck.stdout
        assert mw.terminate() == 0
    finally:
        mw.cleanup()


def test_recheck_while_running_keeps_what_is_still_gone(
        tmp_path: Path, inbox: Path, broker_url: str) -> None:
    """--recheck on a running watcher rescans: one directory back is un-held (nothing
    announced), the 900 files still gone stay held."""
    port = free_port()
    roster = _roster(tmp_path, broker_url, inbox, port)
    _announced(roster, port, broker_url, inbox)
    away = tmp_path / "away"
    _move_tree(inbox, away)
    mw = _start(roster, port)
    try:
        _held(port, FILES)
        recheck = run_cli("deletions", "-c", str(roster), "inbox", "--recheck")
        assert recheck.returncode == 0, recheck.stderr
        assert "0 no longer held" in recheck.stdout and "1000 deletions held" in recheck.stdout
        os.rename(away / "d3", inbox / "d3")  # (its own rescan may un-hold it first)
        recheck = run_cli("deletions", "-c", str(roster), "inbox", "--recheck")
        assert recheck.returncode == 0, recheck.stderr
        _held(port, FILES - FILES // DIRECTORIES)
        shown = run_cli("deletions", "-c", str(roster), "inbox")
        assert "900 deletions held" in shown.stdout
        assert collect(broker_url, QUEUE, until=lambda r: False, timeout=2) == []
        assert mw.terminate() == 0
    finally:
        mw.cleanup()


def test_deletions_reported_by_the_kernel_and_a_few_found_at_start_are_announced(
        tmp_path: Path, inbox: Path, broker_url: str) -> None:
    """5 files deleted while stopped are announced at start; `rm` of the other 995 while
    running is announced file by file; nothing is ever held."""
    port = free_port()
    roster = _roster(tmp_path, broker_url, inbox, port)
    _announced(roster, port, broker_url, inbox)
    for f in range(5):
        (inbox / "d0" / f"f{f}.txt").unlink()
    mw = _start(roster, port)
    try:
        first = collect(broker_url, QUEUE, until=lambda r: len(r) >= 5, timeout=30)
        assert _kinds(first) == {"file_deleted": 5}
        for entry in sorted(inbox.iterdir()):
            shutil.rmtree(entry)
        rest = collect(broker_url, QUEUE, until=lambda r: len(r) >= FILES - 5, timeout=60)
        assert _kinds(rest) == {"file_deleted": FILES - 5}
        assert collect(broker_url, QUEUE, until=lambda r: False, timeout=1.5) == []
        assert _heartbeat(port).get("deletions_held") == 0
        assert not any("deletions held" in line.get("message", "") for line in mw.lines)
        assert mw.terminate() == 0
    finally:
        mw.cleanup()
