"""`multiwatch state`, `resync` and `explain` for a replica (ha) address the state database the
watcher of this host uses (state.db or state.<n>.db), in process: the watchers' slot locks
are held here on separate open files, as watchers hold them."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from multiwatch.cli import main
from multiwatch.replica_slots import (
    ACTIVE,
    STANDBY,
    current_db,
    mark_active,
    slot_db_path,
    slot_is_held,
)
from multiwatch.supervisor.run_lock import open_watcher_lock, take_slot
from multiwatch.watcher.state import DurableOutbox
from tests.support.process import write_roster
from tests.support.tracked_state import track_written

AMQP = "amqp://guest:guest@127.0.0.1:1/%2F"  # never connected to: only its kind matters


@pytest.fixture
def held() -> Iterator[list[int]]:
    """Descriptors of slot locks taken by the test (a watcher's), closed after it."""
    fds: list[int] = []
    yield fds
    for fd in fds:
        os.close(fd)


def _take(state: Path, slot: int, held: list[int]) -> None:
    fd = take_slot(str(state), "inbox", slot)
    assert fd is not None
    held.append(fd)


def _db(state: Path, slot: int, inbox: Path, names: list[str]) -> str:
    """state.db (slot 0) or state.<n>.db tracking `names` at their current versions."""
    db = slot_db_path(str(state), "inbox", slot)
    track_written(db, inbox, names)
    return db


def _roster(tmp_path: Path, inbox: Path, *, ha: bool, url: str | None = AMQP) -> Path:
    roster: dict[str, object] = {
        "state_dir": str(tmp_path / "state"), "ha": {"enabled": ha},
        "instances": [{"id": "inbox", "directory": str(inbox)}]}
    if url:
        roster["broker"] = {"url": url}
    return write_roster(tmp_path / "roster.yaml", roster)


def _queued(db: str) -> list[str]:
    outbox = DurableOutbox(db)
    try:
        return [json.loads(event.body)["file_info"]["name"] for _seq, event in outbox.peek(100)]
    finally:
        outbox.close()


def test_the_active_replicas_slot_is_found_among_held_ones(
        tmp_path: Path, held: list[int]) -> None:
    """A standby holds state.db, the active replica state.1.db (recorded by mark_active): the
    active one's is addressed; without ha, state.db always."""
    state = tmp_path / "state"
    _take(state, 0, held)
    _take(state, 1, held)
    mark_active(str(state), "inbox", slot_db_path(str(state), "inbox", 1))
    chosen = current_db(str(state), "inbox", ha=True)
    assert (chosen.slot, chosen.running, chosen.role) == (1, True, ACTIVE)
    assert chosen.describe() == "state.1.db, the active replica's"
    lone = current_db(str(state), "inbox", ha=False)
    assert (lone.slot, lone.running, lone.describe()) == (0, True, "")


def test_a_held_slot_without_a_record_is_a_standby_and_a_new_holder_clears_a_record(
        tmp_path: Path, held: list[int]) -> None:
    """A record left by a replica that exited does not make the next holder of its slot
    active: taking a slot empties its record."""
    state = tmp_path / "state"
    mark_active(str(state), "inbox", slot_db_path(str(state), "inbox", 0))  # (then exited)
    _take(state, 0, held)
    chosen = current_db(str(state), "inbox", ha=True)
    assert (chosen.slot, chosen.running, chosen.role) == (0, True, STANDBY)


def test_with_no_watcher_running_the_last_active_replicas_database_is_read(
        tmp_path: Path, inbox: Path) -> None:
    """Nobody holds a slot: the newest record whose database exists names it; none: state.db."""
    state = tmp_path / "state"
    assert current_db(str(state), "inbox", ha=True).slot == 0  # nothing there yet
    _db(state, 0, inbox, [])
    _db(state, 2, inbox, [])
    mark_active(str(state), "inbox", slot_db_path(str(state), "inbox", 0))
    mark_active(str(state), "inbox", slot_db_path(str(state), "inbox", 2))
    chosen = current_db(str(state), "inbox", ha=True)
    assert (chosen.slot, chosen.running, chosen.role) == (2, False, ACTIVE)
    assert "last active replica" in chosen.describe()


def test_looking_does_not_take_a_free_slot(tmp_path: Path) -> None:
    """slot_is_held on a free lock leaves it free (a watcher taking it then is not refused)."""
    state = tmp_path / "state"
    fd = open_watcher_lock(str(state), "inbox", 0)
    try:
        assert not slot_is_held(fd)
        taken = take_slot(str(state), "inbox", 0)
        assert taken is not None
        assert slot_is_held(fd)
        os.close(taken)
    finally:
        os.close(fd)


def test_state_export_and_resync_address_the_active_replicas_database(
        tmp_path: Path, inbox: Path, held: list[int],
        capsys: pytest.CaptureFixture[str]) -> None:
    """The active replica goes on from state.1.db beside a standby's state.db: export reads
    it and says so on stderr, resync queues into its outbox and names it."""
    state = tmp_path / "state"
    roster = _roster(tmp_path, inbox, ha=True)
    _db(state, 0, inbox, ["old.txt"])
    active_db = _db(state, 1, inbox, ["old.txt", "new.txt"])
    _take(state, 0, held)
    _take(state, 1, held)
    mark_active(str(state), "inbox", active_db)
    assert main(["state", "export", "-c", str(roster)]) == 0
    out, err = capsys.readouterr()
    assert sorted(json.loads(line)["relative_path"] for line in out.splitlines()) == \
        ["new.txt", "old.txt"]
    assert "inbox: reading state.1.db, the active replica's" in err
    assert main(["resync", "-c", str(roster), "inbox", "new.txt"]) == 0
    assert "in state.1.db, the active replica's" in capsys.readouterr().err
    assert _queued(active_db) == ["new.txt"]
    assert main(["explain", "-c", str(roster), str(inbox / "new.txt")]) in (0, 1)
    assert "state.1.db, the active replica's" in capsys.readouterr().out


def test_resync_is_refused_on_a_standby_and_with_no_replica_running(
        tmp_path: Path, inbox: Path, held: list[int],
        capsys: pytest.CaptureFixture[str]) -> None:
    """A standby publishes nothing, nor a replica starting (it stands by first): resync says
    where to run it instead of queueing events that would never go out."""
    state = tmp_path / "state"
    roster = _roster(tmp_path, inbox, ha=True)
    standby_db = _db(state, 0, inbox, ["a.txt"])
    assert main(["resync", "-c", str(roster), "inbox"]) == 2
    assert "no replica of it runs on this host" in capsys.readouterr().err
    _take(state, 0, held)
    assert main(["resync", "-c", str(roster), "inbox"]) == 2
    err = capsys.readouterr().err
    assert "is a standby" in err and "Traceback" not in err
    assert _queued(standby_db) == []


def test_resync_with_the_embedded_spool_and_no_replica_running_queues_into_state_db(
        tmp_path: Path, inbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Embedded spool: the next replica to take the lease goes on from state.db, so an
    offline resync queues there."""
    state = tmp_path / "state"
    roster = _roster(tmp_path, inbox, ha=True, url=None)
    own = _db(state, 0, inbox, ["a.txt"])
    assert main(["resync", "-c", str(roster), "inbox"]) == 0
    assert _queued(own) == ["a.txt"]
