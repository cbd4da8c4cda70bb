"""A standby replica's warm state: events turned back into file versions, applied to its own
state database, the database it picks, and how its warmth shows in /readyz and status."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from multiwatch.status_view import role_label
from multiwatch.supervisor.http import not_ready_reason
from multiwatch.supervisor.run_lock import take_slot
from multiwatch.watcher.hashing import FileVersion, Hashed
from multiwatch.watcher.message import (
    FILE_DELETED,
    FILE_DISCOVERED,
    FILE_MODIFIED,
    FILE_MOVED,
    build_event,
)
from multiwatch.watcher.standby import replica_db_path, takeover_db, warm_slot
from multiwatch.watcher.standby_learning import Change, WarmState, change_of
from multiwatch.watcher.standby_window import InFlightWindow
from multiwatch.watcher.state import StateStore, iter_files, state_db_path

ID = "music"
V1 = Hashed(version=FileVersion(size=12, mtime_ns=1_700_000_000_123_456_789, inode=77),
            sha256="ab" * 32, xxh128="cd" * 16, ctime_ns=1_700_000_001_000_000_001)
V2 = Hashed(version=FileVersion(size=13, mtime_ns=1_700_000_002_000_000_000, inode=77),
            sha256="ef" * 32, xxh128="01" * 16, ctime_ns=1_700_000_002_000_000_005)


def _body(event_type: str, relative: str, hashed: Hashed = V1, old: str | None = None,
          instance_id: str = ID) -> bytes:
    return build_event(event_type=event_type, instance_id=instance_id,
                       watched_directory="/data/music", relative_path=relative, hashed=hashed,
                       old_relative_path=old).body


def _tracked(path: str) -> dict[str, Hashed]:
    store = StateStore(path)
    try:
        return {f.relative_path: f.hashed for f in iter_files(store.connection)}
    finally:
        store.close()


@pytest.mark.parametrize("event_type", [FILE_DISCOVERED, FILE_MODIFIED])
def test_an_announcement_gives_back_the_exact_file_version(event_type: str) -> None:
    """A discovery or modification carries everything the state needs: size, mtime, inode,
    ctime and both hashes come back exactly as the active replica recorded them."""
    assert change_of(_body(event_type, "a/song.mp3"), ID) == Change("a/song.mp3", V1)


def test_a_deletion_forgets_and_a_move_renames() -> None:
    """file_deleted forgets the path; file_moved forgets the old path and tracks the new."""
    assert change_of(_body(FILE_DELETED, "a/x.mp3"), ID) == Change("a/x.mp3", None)
    assert change_of(_body(FILE_MOVED, "b/y.mp3", old="a/x.mp3"), ID) == \
        Change("b/y.mp3", V1, "a/x.mp3")


def test_a_body_decoded_to_text_by_the_client_is_read_too() -> None:
    """py-amqp hands over a utf-8 body as str: it is read the same way."""
    assert change_of(_body(FILE_DISCOVERED, "x").decode(), ID) == Change("x", V1)


def test_a_name_that_is_not_utf8_comes_back_as_the_pipeline_keeps_it() -> None:
    """A non-UTF-8 name (surrogate escapes) is tracked under the same str the pipeline uses."""
    name = os.fsdecode(b"caf\xe9.mp3")
    assert change_of(_body(FILE_DISCOVERED, name), ID) == Change(name, V1)


@pytest.mark.parametrize("body", [
    b"not json", b"[]", b'{"instance_id": "music"}',
    json.dumps({"instance_id": "music", "event_type": "file_discovered",
                "file_info": {"relative_path": "x", "size_bytes": "1", "sha256_hash": "a",
                              "xxh128_hash": "b"}}).encode(),  # an older multiwatch: no version
])
def test_what_is_not_a_usable_event_is_ignored(body: bytes) -> None:
    """Garbage, or an event without the version fields, changes nothing (the takeover's
    reconcile finds that file)."""
    assert change_of(body, ID) is None


def test_another_instances_event_or_a_path_outside_the_tree_is_ignored() -> None:
    """Only this instance's events, and only relative paths below its directory."""
    assert change_of(_body(FILE_DISCOVERED, "x", instance_id="other"), ID) is None
    for bad in ("../etc/passwd", "/etc/passwd", "a/../../b", "a//b", "."):
        body = json.loads(_body(FILE_DISCOVERED, "x"))
        body["file_info"]["relative_path"] = bad
        assert change_of(json.dumps(body).encode(), ID) is None, bad


def test_changes_are_applied_in_order_and_applying_twice_changes_nothing(
        tmp_path: Path) -> None:
    """A batch is committed in order (the last change per path wins); delivered again
    (at-least-once), it leaves the same state."""
    path = str(tmp_path / "state.db")
    warm = WarmState(path, InFlightWindow(60.0))
    batch = [Change("a", V1), Change("b", V1), Change("a", V2), Change("c", V1, "b"),
             Change("d", V1), Change("d", None)]
    warm.apply(batch, [])
    assert _tracked(path) == {"a": V2, "c": V1}
    warm.apply(batch, [])
    assert _tracked(path) == {"a": V2, "c": V1}
    assert warm.tracked() == 2
    warm.close()


def test_a_standby_takes_the_first_free_database_and_keeps_its_outbox_as_its_window(
        tmp_path: Path) -> None:
    """Slot 0 (state.db) when free, else state.<n>.db; events left unsent in it (by a
    replica that has since lost the lease) leave the outbox for the in-flight window when
    the feed opens it: re-published only if this replica takes over before a marker."""
    state_dir = str(tmp_path)
    own = state_db_path(state_dir, ID)
    store = StateStore(own)
    store.commit({"x": V1}, [build_event(event_type=FILE_DISCOVERED, instance_id=ID,
                                         watched_directory="/d", relative_path="x",
                                         hashed=V1)])
    store.close()
    first = warm_slot(state_dir, ID, embedded=False)
    assert first is not None and first.slot == 0 and first.path == own
    warm = WarmState(first.path, InFlightWindow(60.0))
    assert warm.tracked() == 1 and warm.in_flight() == 1
    warm.close()
    store = StateStore(own)
    assert store.outbox_usage() == (0, 0) and store.tracked_count() == 1
    store.close()
    second = warm_slot(state_dir, ID, embedded=False)
    assert second is not None and second.slot == 1
    assert second.path == replica_db_path(state_dir, ID, 1) == os.path.join(
        os.path.dirname(own), "state.1.db")
    assert warm_slot(state_dir, ID, embedded=True) is None  # the spool: replicas share state.db
    os.close(first.fd)
    os.close(second.fd)


def test_a_warm_standby_goes_on_from_its_own_database_at_takeover(tmp_path: Path) -> None:
    """Taking over, a warm standby keeps its database, whether the instance's own is still
    held (a frozen active replica) or free (a killed one); a cold one takes the first free."""
    state_dir = str(tmp_path)
    active = take_slot(state_dir, ID, 0)
    assert active is not None
    warm = warm_slot(state_dir, ID, embedded=False)
    assert warm is not None and warm.slot == 1
    assert takeover_db(state_dir, ID, warm, lambda: False) == warm.path  # frozen: 0 held
    os.close(active)
    assert takeover_db(state_dir, ID, warm, lambda: False) == warm.path  # killed: 0 free
    assert takeover_db(state_dir, ID, None, lambda: False) == state_db_path(state_dir, ID)
    os.close(warm.fd)


def _standby(**heartbeat: object) -> dict[str, object]:
    return {"state": "RUNNING", "role": "standby",
            "heartbeat": {"role": "standby", "broker_connected": True, **heartbeat}}


def test_a_standby_is_ready_once_warm() -> None:
    """/readyz: a standby catching up is not ready (with how many events wait); once warm,
    or without a warm database (the embedded spool), it is."""
    assert "standby not warm yet" in not_ready_reason(_standby(standby_warm=False))
    assert "(40 waiting)" in not_ready_reason(_standby(standby_warm=False,
                                                       standby_lag_events=40))
    assert not_ready_reason(_standby(standby_warm=True)) == ""
    assert not_ready_reason(_standby()) == ""


def test_status_shows_whether_a_standby_is_warm() -> None:
    """The ROLE column and the page say standby (warm) or standby (catching up)."""
    assert role_label(_standby(standby_warm=True)) == "standby (warm)"
    assert role_label(_standby(standby_warm=False)) == "standby (catching up)"
    assert role_label(_standby()) == "standby"
    assert role_label({"role": "active"}) == "active"
