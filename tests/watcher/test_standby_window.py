"""A standby's in-flight window: the active replica's last events, kept in the standby's
state database until the active replica's settled marker says they were confirmed, and
published again, first and under the same message ids, if the standby takes over."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import amqp

from multiwatch.config import BrokerConfig
from multiwatch.watcher.hashing import FileVersion, Hashed
from multiwatch.watcher.message import FILE_DELETED, FILE_DISCOVERED, Event, build_event
from multiwatch.watcher.publisher import BATCH_SIZE
from multiwatch.watcher.standby import takeover_db, warm_slot
from multiwatch.watcher.standby_feed import StandbyFeed
from multiwatch.watcher.standby_learning import (
    WINDOW_SLACK_SECONDS,
    WarmState,
    event_of,
    in_flight_window_seconds,
    is_settled,
)
from multiwatch.watcher.standby_window import (
    SETTLED_EXCHANGE,
    SETTLED_HEADER,
    WINDOW_KEEP_EVENTS,
    WINDOW_MAX_EVENTS,
    InFlightWindow,
    settled_key,
)
from multiwatch.watcher.state import DurableOutbox, StateStore, iter_files

ID = "music"
V1 = Hashed(version=FileVersion(size=12, mtime_ns=1_700_000_000_123_456_789, inode=77),
            sha256="ab" * 32, xxh128="cd" * 16, ctime_ns=1_700_000_001_000_000_001)


@functools.cache
def _event(n: int, event_type: str = FILE_DISCOVERED, *, resync: str | None = None) -> Event:
    """The same event each time it is asked for (an event carries a new correlation id)."""
    return build_event(event_type=event_type, instance_id=ID, watched_directory="/data/music",
                       relative_path=f"f{n:04}.mp3", hashed=V1, resync_id=resync)


def _ids(events: list[Event]) -> list[str]:
    return [e.message_id for e in events]


def _delivered(event: Event, tag: int, *, decoded: bool = False) -> amqp.Message:
    """The message as the standby's queue hands it over: the very properties the publisher
    sends (watcher/amqp_io.py publish_frames); py-amqp decodes a utf-8 body to str."""
    message = amqp.Message(event.body.decode() if decoded else event.body,
                           content_type="application/json", content_encoding="utf-8",
                           delivery_mode=2, message_id=event.message_id,
                           correlation_id=event.correlation_id,
                           application_headers=event.headers)
    message.delivery_info = {"delivery_tag": tag, "routing_key": event.routing_key,
                             "exchange": "file-events"}
    return message


def _marker(tag: int, instance_id: str = ID) -> amqp.Message:
    """The settled marker as batches.py publishes it, delivered through amq.direct."""
    message = amqp.Message(b"", application_headers={"instance_id": instance_id,
                                                     SETTLED_HEADER: True})
    message.delivery_info = {"delivery_tag": tag, "routing_key": settled_key(instance_id),
                             "exchange": SETTLED_EXCHANGE}
    return message


def _window(path: str, seconds: float = 60.0, **bounds: int) -> tuple[WarmState, InFlightWindow]:
    window = InFlightWindow(seconds, **bounds)
    return WarmState(path, window), window


def _taken(warm: WarmState, now: float) -> list[str]:
    """The message ids a takeover at `now` puts into the (empty) outbox, in order."""
    warm.reannounce(now)
    outbox = DurableOutbox(warm.path)
    try:
        return _ids([event for _seq, event in outbox.peek(100_000)])
    finally:
        outbox.close()


def _feed(path: str, seconds: float = 60.0) -> StandbyFeed:
    return StandbyFeed(instance_id=ID, exchange="file-events", db_path=path,
                       expect=lambda _seconds, _what: None, reply_seconds=1.0,
                       window_seconds=seconds)


def _receive(feed: StandbyFeed, messages: list[amqp.Message]) -> None:
    for message in messages:
        feed._received(message)
    feed._apply(ack=False)


def _outbox(path: str) -> list[Event]:
    outbox = DurableOutbox(path)
    try:
        return [event for _seq, event in outbox.peek(100_000)]
    finally:
        outbox.close()


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


def test_only_the_instances_own_marker_through_amq_direct_is_a_settled_marker() -> None:
    """An event, another instance's marker, or the marker's key on another exchange is not."""
    assert is_settled(_marker(1), ID)
    assert not is_settled(_marker(1, "other"), ID)
    assert not is_settled(_delivered(_event(1), 1), ID)
    wrong = _marker(1)
    wrong.delivery_info["exchange"] = "file-events"
    assert not is_settled(wrong, ID)


def test_the_window_is_the_current_run_and_empty_after_a_quiet_spell(tmp_path: Path) -> None:
    """Without markers (an older active replica), a run ends when nothing came for the
    window's length: what came before was confirmed.  At takeover a run that ended longer
    ago than that gives nothing."""
    warm, _ = _window(str(tmp_path / "state.db"), 10.0)
    warm.apply([], [_event(1)], now=100.0)
    warm.apply([], [_event(2)], now=105.0)
    warm.apply([], [_event(3)], now=116.0)  # 11 s quiet: 1 and 2 were confirmed
    warm.apply([], [_event(4)], now=120.0)
    assert _taken(warm, 125.0) == _ids([_event(3), _event(4)])
    warm.close()
    warm, _ = _window(str(tmp_path / "other.db"), 10.0)
    warm.apply([], [_event(5)], now=200.0)
    assert _taken(warm, 210.5) == []  # the active replica was quiet for longer
    warm.close()


def test_an_event_received_again_keeps_its_first_place(tmp_path: Path) -> None:
    """A held event's retries (and redeliveries) do not move it behind the events published
    after its first publish: re-announced in outbox order, once each."""
    warm, _ = _window(str(tmp_path / "state.db"), 10.0)
    for n, at in ((1, 0.0), (2, 0.1), (3, 0.2), (1, 5.0), (1, 9.0), (2, 12.0)):
        warm.apply([], [_event(n)], now=at)
    assert _taken(warm, 13.0) == _ids([_event(n) for n in (1, 2, 3)])
    warm.close()


def test_a_burst_beyond_the_bounds_keeps_the_newest(tmp_path: Path) -> None:
    """The events the active replica may not have seen confirmed are its last ones (it
    publishes a batch after the previous batch's confirms): over the bound, the oldest go;
    the byte bound never lets go of the newest batch."""
    warm, window = _window(str(tmp_path / "a.db"), 60.0, max_events=100, max_bytes=10**9,
                           keep=10)
    for start in range(0, 250, 30):
        warm.apply([], [_event(n) for n in range(start, min(start + 30, 250))], now=1.0)
    assert window.let_go == 150
    assert _taken(warm, 3.0) == _ids([_event(n) for n in range(150, 250)])
    warm.close()
    size = len(_event(0).body)
    warm, _ = _window(str(tmp_path / "b.db"), 60.0, max_events=100, max_bytes=5 * size,
                      keep=10)
    warm.apply([], [_event(n) for n in range(50)], now=0.0)
    assert _taken(warm, 1.0) == _ids([_event(n) for n in range(40, 50)])
    warm.close()


def test_the_window_bounds_fit_the_publisher() -> None:
    """The byte bound keeps at least one whole batch; the window lasts a confirm wait, a
    held event's retry, three heartbeats and a lease try (no bound without heartbeats)."""
    assert WINDOW_KEEP_EVENTS >= BATCH_SIZE and WINDOW_MAX_EVENTS >= 4 * BATCH_SIZE
    broker = BrokerConfig(heartbeat_seconds=2, confirm_timeout_seconds=3,
                          reconnect_max_seconds=2)
    assert in_flight_window_seconds(broker, 0.5) == 3 + 2 + 3 * 2 + 0.5 + WINDOW_SLACK_SECONDS
    assert in_flight_window_seconds(BrokerConfig(heartbeat_seconds=0), 2) == float("inf")


def test_at_takeover_the_window_goes_to_the_outbox_before_anything_else(
        tmp_path: Path) -> None:
    """The feed applies what it receives and keeps the raw events; taking over, it appends
    them to the outbox of the database the new active replica goes on from, with their
    message ids, so they are published first and consumers drop the ones they had."""
    state_dir = str(tmp_path)
    warm = warm_slot(state_dir, ID, embedded=False)
    assert warm is not None
    feed = _feed(warm.path)
    burst = [_event(n) for n in range(5)] + [_event(0, FILE_DELETED)]
    _receive(feed, [_delivered(event, tag, decoded=tag % 2 == 0)
                    for tag, event in enumerate(burst, start=1)])
    feed.finish(object())  # type: ignore[arg-type]  # (not the connection it consumed on)
    store = StateStore(warm.path)
    assert {f.relative_path for f in iter_files(store.connection)} == {
        f"f{n:04}.mp3" for n in range(1, 5)}
    store.close()
    assert _outbox(takeover_db(state_dir, ID, warm, lambda: False) or "") == burst, \
        "the same rows, in the order published"
    os.close(warm.fd)


def test_a_settled_marker_empties_the_window(tmp_path: Path) -> None:
    """Events received before the active replica's settled marker were confirmed: a
    takeover after it re-publishes none of them, only what came after the marker (also
    within one batch of deliveries); the files they announced stay applied."""
    path = str(tmp_path / "state.db")
    feed = _feed(path)
    _receive(feed, [_delivered(_event(n), n) for n in range(1, 4)])
    assert feed.state.in_flight() == 3
    _receive(feed, [_marker(4)])
    assert feed.state.in_flight() == 0
    _receive(feed, [_delivered(_event(5), 5), _marker(6), _delivered(_event(7), 7)])
    feed.finish(object())  # type: ignore[arg-type]
    assert _outbox(path) == [_event(7)]
    store = StateStore(path)
    assert store.tracked_count() == 5, "every event applied, marker or not"
    store.close()


def test_a_takeover_after_a_quiet_spell_repeats_nothing(tmp_path: Path) -> None:
    """Events received longer than the window before the takeover were confirmed (an
    active replica without markers): the outbox stays empty."""
    path = str(tmp_path / "state.db")
    warm, _ = _window(path, 60.0)
    warm.apply([], [_event(1)], now=1_000.0)
    assert warm.in_flight() == 1
    assert _taken(warm, 1_061.0) == []
    warm.close()


def test_the_window_survives_a_standby_restart(tmp_path: Path) -> None:
    """The window is in the standby's database, written with the changes: a standby that
    restarts (a new process, a new feed on the same database) still re-publishes it at a
    takeover."""
    path = str(tmp_path / "state.db")
    feed = _feed(path)
    _receive(feed, [_delivered(_event(n), n) for n in range(1, 4)])
    feed.state.close()  # the process ends
    again = _feed(path)
    assert again.state.in_flight() == 3
    again.finish(object())  # type: ignore[arg-type]
    assert _outbox(path) == [_event(n) for n in range(1, 4)]


def test_a_window_taken_but_not_published_is_kept_at_the_next_start(tmp_path: Path) -> None:
    """A new active replica that took the window into its outbox and stopped before
    publishing it starts again as a standby: the events go back into its window (not
    dropped), out again at its next takeover; a settled marker lets go of them."""
    path = str(tmp_path / "state.db")
    feed = _feed(path)
    _receive(feed, [_delivered(_event(n), n) for n in range(1, 4)])
    feed.finish(object())  # type: ignore[arg-type]  # taken over; then it dies
    assert len(_outbox(path)) == 3
    restarted = _feed(path)
    assert restarted.state.in_flight() == 3 and _outbox(path) == []
    restarted.finish(object())  # type: ignore[arg-type]
    assert _outbox(path) == [_event(n) for n in range(1, 4)]
    settled = _feed(path)
    _receive(settled, [_marker(1)])
    settled.finish(object())  # type: ignore[arg-type]
    assert _outbox(path) == []
