"""A standby replica's warm state: events turned back into file versions, applied to its own
state database, the database it picks, and how its warmth shows in /readyz and status."""

from __future__ import annotations

import json
import os
from pathlib import Path

import amqp
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
    Event,
    build_event,
)
from multiwatch.watcher.standby import replica_db_path, takeover_db, warm_slot
from multiwatch.watcher.standby_feed import StandbyFeed
from multiwatch.watcher.standby_learning import (
    WINDOW_KEEP_EVENTS,
    WINDOW_MAX_EVENTS,
    WINDOW_SLACK_SECONDS,
    Change,
    InFlightWindow,
    WarmState,
    change_of,
    event_of,
    in_flight_window_seconds,
)
from multiwatch.watcher.state import DurableOutbox, StateStore, iter_files, state_db_path

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
    warm = WarmState(path)
    batch = [Change("a", V1), Change("b", V1), Change("a", V2), Change("c", V1, "b"),
             Change("d", V1), Change("d", None)]
    warm.apply(batch)
    assert _tracked(path) == {"a": V2, "c": V1}
    warm.apply(batch)
    assert _tracked(path) == {"a": V2, "c": V1}
    assert warm.tracked() == 2
    warm.close()


def test_a_standby_takes_the_first_free_database_and_empties_its_outbox(
        tmp_path: Path) -> None:
    """Slot 0 (state.db) when free, else state.<n>.db; events left unsent in it by a replica
    that has since lost the lease are dropped (the active replica's reconcile covers them)."""
    state_dir = str(tmp_path)
    own = state_db_path(state_dir, ID)
    store = StateStore(own)
    store.commit({"x": V1}, [build_event(event_type=FILE_DISCOVERED, instance_id=ID,
                                         watched_directory="/d", relative_path="x",
                                         hashed=V1)])
    store.close()
    first = warm_slot(state_dir, ID, embedded=False)
    assert first is not None and first.slot == 0 and first.path == own
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


# -------------------------------------------------------------------- the in-flight window


def _event(n: int, event_type: str = FILE_DISCOVERED, *, resync: str | None = None) -> Event:
    return build_event(event_type=event_type, instance_id=ID, watched_directory="/data/music",
                       relative_path=f"f{n:04}.mp3", hashed=V1, resync_id=resync)


def _delivered(event: Event, tag: int, *, decoded: bool = False) -> amqp.Message:
    """The message as the standby's queue hands it over: the very properties the publisher
    sends (watcher/amqp_io.py publish_frames); py-amqp decodes a utf-8 body to str."""
    message = amqp.Message(event.body.decode() if decoded else event.body,
                           content_type="application/json", content_encoding="utf-8",
                           delivery_mode=2, message_id=event.message_id,
                           correlation_id=event.correlation_id,
                           application_headers=event.headers)
    message.delivery_info = {"delivery_tag": tag, "routing_key": event.routing_key}
    return message


def test_a_delivered_event_gives_back_the_outbox_row_it_was_published_from() -> None:
    """Routing key, message id, correlation id, headers and body come back exactly, so the
    new active replica publishes the same bytes under the same message id."""
    for event in (_event(1), _event(2, FILE_DELETED), _event(3, resync="r1")):
        for decoded in (False, True):
            assert event_of(_delivered(event, 1, decoded=decoded), ID) == event
    other = build_event(event_type=FILE_DISCOVERED, instance_id="other", watched_directory="/d",
                        relative_path="x", hashed=V1)
    assert event_of(_delivered(other, 1), ID) is None
    bare = amqp.Message(b"{}", application_headers={"instance_id": ID})
    bare.delivery_info = {"delivery_tag": 1, "routing_key": "file.discovered"}
    assert event_of(bare, ID) is None


def test_the_window_is_the_current_run_and_empty_after_a_quiet_spell() -> None:
    """A run ends when nothing came for the window's length: what came before was
    confirmed.  At takeover a run that ended longer ago than that gives nothing."""
    window = InFlightWindow(10.0)
    window.add(_event(1), 100.0)
    window.add(_event(2), 105.0)
    window.add(_event(3), 116.0)  # 11 s quiet: 1 and 2 were confirmed
    window.add(_event(4), 120.0)
    assert [e.message_id for e in window.take(125.0)] == [_event(3).message_id,
                                                          _event(4).message_id]
    assert window.take(125.0) == []  # taken once
    window.add(_event(5), 200.0)
    assert window.take(210.5) == []  # the active replica was quiet for longer


def test_an_event_received_again_keeps_its_first_place() -> None:
    """A held event's retries (and redeliveries) do not move it behind the events published
    after its first publish: re-announced in outbox order, once each."""
    window = InFlightWindow(10.0)
    for n, at in ((1, 0.0), (2, 0.1), (3, 0.2), (1, 5.0), (1, 9.0), (2, 12.0)):
        window.add(_event(n), at)
    assert [e.message_id for e in window.take(13.0)] == [_event(n).message_id
                                                         for n in (1, 2, 3)]


def test_a_burst_beyond_the_bounds_keeps_the_newest() -> None:
    """The events the active replica may not have seen confirmed are its last ones (it
    publishes a batch after the previous batch's confirms): over the bound, the oldest go;
    the byte bound never lets go of the newest batch."""
    window = InFlightWindow(60.0, max_events=100, max_bytes=10**9, keep=10)
    for n in range(250):
        window.add(_event(n), n * 0.01)
    assert window.let_go == 150
    assert [e.message_id for e in window.take(3.0)] == [_event(n).message_id
                                                        for n in range(150, 250)]
    size = len(_event(0).body)
    window = InFlightWindow(60.0, max_events=100, max_bytes=5 * size, keep=10)
    for n in range(50):
        window.add(_event(n), 0.0)
    assert [e.message_id for e in window.take(1.0)] == [_event(n).message_id
                                                        for n in range(40, 50)]


def test_the_window_bounds_fit_the_publisher() -> None:
    """The byte bound keeps at least one whole batch; the window lasts a confirm wait, a
    held event's retry, three heartbeats and a lease try (no bound without heartbeats)."""
    from multiwatch.config import BrokerConfig
    from multiwatch.watcher.publisher import BATCH_SIZE

    assert WINDOW_KEEP_EVENTS >= BATCH_SIZE and WINDOW_MAX_EVENTS >= 4 * BATCH_SIZE
    broker = BrokerConfig(heartbeat_seconds=2, confirm_timeout_seconds=3,
                          reconnect_max_seconds=2)
    assert in_flight_window_seconds(broker, 0.5) == 3 + 2 + 3 * 2 + 0.5 + WINDOW_SLACK_SECONDS
    assert in_flight_window_seconds(BrokerConfig(heartbeat_seconds=0), 2) == float("inf")


def _feed(path: str, seconds: float = 60.0) -> StandbyFeed:
    return StandbyFeed(instance_id=ID, exchange="file-events", db_path=path,
                       expect=lambda _seconds, _what: None, reply_seconds=1.0,
                       window_seconds=seconds)


def test_at_takeover_the_window_goes_to_the_outbox_before_anything_else(
        tmp_path: Path) -> None:
    """The feed applies what it receives and keeps the raw events; taking over, it appends
    them to the (emptied) outbox of the database the new active replica goes on from, with
    their message ids, so they are published first and consumers drop the ones they had."""
    state_dir = str(tmp_path)
    warm = warm_slot(state_dir, ID, embedded=False)
    assert warm is not None
    feed = _feed(warm.path)
    burst = [_event(n) for n in range(5)] + [_event(0, FILE_DELETED)]
    for tag, event in enumerate(burst, start=1):
        feed._received(_delivered(event, tag, decoded=tag % 2 == 0))
    feed._apply(ack=False)
    feed.finish(object())  # type: ignore[arg-type]  # (not the connection it consumed on)
    assert set(_tracked(warm.path)) == {f"f{n:04}.mp3" for n in range(1, 5)}
    outbox = DurableOutbox(takeover_db(state_dir, ID, warm, lambda: False) or "")
    rows = [event for _seq, event in outbox.peek(100)]
    outbox.close()
    assert rows == burst, "the same rows, in the order published"
    os.close(warm.fd)


def test_a_takeover_after_a_quiet_spell_repeats_nothing(tmp_path: Path) -> None:
    """Events received longer than the window before the takeover were confirmed: the
    outbox stays empty (a takeover over unchanged files announces nothing)."""
    path = str(tmp_path / "state.db")
    feed = _feed(path, seconds=60.0)
    feed._received(_delivered(_event(1), 1))
    feed._apply(ack=False)
    assert len(feed.window) == 1
    feed.window._last -= 61.0  # received a window's length before the takeover
    feed.finish(object())  # type: ignore[arg-type]
    outbox = DurableOutbox(path)
    assert outbox.peek(10) == []
    outbox.close()
