"""What a standby learns from one of the active replica's events: the change it applies to
its warm state database (Change, WarmState), and the raw event it keeps while it may still
be in flight (InFlightWindow).  Used by the feed on the publisher thread (standby_feed.py);
the standby's invariants are in standby.py's docstring.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import amqp

from multiwatch.config import BrokerConfig
from multiwatch.watcher.hashing import FileVersion, Hashed
from multiwatch.watcher.message import (
    FILE_DELETED,
    FILE_MOVED,
    RESYNC_HEADER,
    ROUTING_KEYS,
    Event,
)
from multiwatch.watcher.state import StateStore

log = logging.getLogger("multiwatch.watcher.standby")  # (the logger these lines always had)




@dataclass(frozen=True)
class Change:
    """What one announced event does to the tracked files."""

    relative_path: str
    hashed: Hashed | None  # the announced version; None: the path is forgotten
    old_relative_path: str | None = None  # a rename: this path is forgotten first


def change_of(body: bytes | str, instance_id: str) -> Change | None:
    """The change an event body describes, or None if it is not a usable event of this
    instance (another instance's, not JSON, or without the version fields an older
    multiwatch did not send: that file is then found by the takeover's reconcile).
    py-amqp hands a body over decoded (str) when its content_encoding says utf-8."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("instance_id") != instance_id:
        return None
    event_type = doc.get("event_type")
    info = doc.get("file_info")
    if event_type not in ROUTING_KEYS or not isinstance(info, dict):
        return None
    relative = info.get("relative_path")
    if not _inside(relative):
        return None
    assert isinstance(relative, str)
    if event_type == FILE_DELETED:
        return Change(relative, None)
    try:
        hashed = Hashed(version=FileVersion(size=int(info["size_bytes"]),
                                            mtime_ns=int(info["mtime_ns"]),
                                            inode=int(info["inode"])),
                        sha256=str(info["sha256_hash"]), xxh128=str(info["xxh128_hash"]),
                        ctime_ns=int(info["ctime_ns"]))
    except (KeyError, TypeError, ValueError):
        return None
    old = info.get("old_relative_path") if event_type == FILE_MOVED else None
    if old is not None and not _inside(old):
        return None
    return Change(relative, hashed, old)


def _inside(relative: object) -> bool:
    """A path below the watched directory, as the pipeline records them."""
    return (isinstance(relative, str) and bool(relative) and "\0" not in relative
            and not relative.startswith("/")
            and not any(part in ("", ".", "..") for part in relative.split("/")))


class WarmState:
    """The standby's state database, written by the publisher thread (its own connection)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._store: StateStore | None = None

    def apply(self, changes: Sequence[Change]) -> None:
        """Commit the changes in one transaction, in order (the last one per path wins)."""
        files: dict[str, Hashed | None] = {}
        for change in changes:
            if change.old_relative_path is not None:
                files[change.old_relative_path] = None
            files[change.relative_path] = change.hashed
        if files:
            self._open().commit(files, [])

    def tracked(self) -> int:
        return self._open().tracked_count()

    def reannounce(self, events: Sequence[Event]) -> None:
        """Append the in-flight window to the outbox, in one transaction (at takeover: the
        outbox is empty, so they go out before anything the pipeline announces)."""
        if events:
            self._open().commit({}, events)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def _open(self) -> StateStore:
        if self._store is None:
            self._store = StateStore(self.path)
        return self._store


# The in-flight window's bounds.  Its length in time (in_flight_window_seconds) follows
# from the broker settings; its size is bounded in events and bytes, keeping the newest:
# the active replica publishes a batch (publisher.BATCH_SIZE events, from the head of its
# outbox) only once the previous batch's confirms are settled, so the events it may not
# have seen confirmed are the last ones it published, never older ones.  Dropping the
# oldest could only repeat fewer confirmed events; dropping the newest could lose files.
WINDOW_MAX_EVENTS = 2048  # 8 batches: an event nacked behind a held one rides a few batches
WINDOW_MAX_BYTES = 8 * 1024 * 1024
WINDOW_KEEP_EVENTS = 256  # publisher.BATCH_SIZE: never let go for the byte bound
# A peer that stops answering is dropped by the broker after 2 to 3 missed heartbeats.
WINDOW_HEARTBEATS = 3
WINDOW_SLACK_SECONDS = 5.0  # the standby's own stalls (a commit, a lease try)


def in_flight_window_seconds(broker: BrokerConfig, lease_retry_seconds: float) -> float:
    """How long after the active replica's last publish one of its events may still be
    unconfirmed when the lease passes: it waits for a confirm up to confirm_timeout (then
    resets the connection, which frees the lease), retries a held event at least every
    reconnect_max; a connection gone silent (frozen, cut off) frees the lease once the
    broker has missed WINDOW_HEARTBEATS heartbeats; the standby tries the lease every
    lease_retry.  Without heartbeats a silent connection is dropped only by TCP: no bound
    in time (the window is bounded by its size alone)."""
    if broker.heartbeat_seconds <= 0:
        return float("inf")
    return (broker.confirm_timeout_seconds + broker.reconnect_max_seconds
            + WINDOW_HEARTBEATS * broker.heartbeat_seconds + lease_retry_seconds
            + WINDOW_SLACK_SECONDS)


def event_of(message: amqp.Message, instance_id: str) -> Event | None:
    """The outbox row an event delivered to the standby was published from (the publisher
    sends nothing else: watcher/amqp_io.py publish_frames), or None if it is not one of
    this instance's events."""
    properties = message.properties
    headers = properties.get("application_headers") or {}
    event_type = headers.get("event_type")
    message_id = properties.get("message_id")
    routing_key = message.delivery_info.get("routing_key")
    if (headers.get("instance_id") != instance_id or event_type not in ROUTING_KEYS
            or not isinstance(message_id, str) or not message_id
            or routing_key != ROUTING_KEYS[event_type]):
        return None
    body = message.body
    return Event(instance_id=instance_id, event_type=str(event_type),
                 routing_key=str(routing_key), message_id=message_id,
                 correlation_id=str(properties.get("correlation_id") or ""),
                 body=body.encode("utf-8") if isinstance(body, str) else bytes(body),
                 resync=bool(headers.get(RESYNC_HEADER, False)))


class InFlightWindow:
    """The raw events the active replica published last (the publisher thread's feed).

    A run of events ends when nothing came for `seconds`: a replica with an event not yet
    confirmed publishes again within that time (a batch after a reset, a held event's
    retry), so what came before such a quiet spell was confirmed.  At takeover the window
    is the current run, unless it ended more than `seconds` ago (then it is empty).  An
    event received again (a retry, a redelivery) keeps its first place: the active replica
    always publishes from the head of its outbox, so first receipts are in outbox order."""

    def __init__(self, seconds: float, *, max_events: int = WINDOW_MAX_EVENTS,
                 max_bytes: int = WINDOW_MAX_BYTES, keep: int = WINDOW_KEEP_EVENTS) -> None:
        self.seconds = seconds
        self._max_events, self._max_bytes, self._keep = max_events, max_bytes, keep
        self._events: OrderedDict[str, Event] = OrderedDict()
        self._bytes = 0
        self._last = -float("inf")
        self.let_go = 0  # the run's oldest events let go for the bounds

    def __len__(self) -> int:
        return len(self._events)

    def add(self, event: Event, now: float) -> None:
        if now - self._last > self.seconds:
            self._clear()
        self._last = now
        if event.message_id in self._events:
            return
        self._events[event.message_id] = event
        self._bytes += len(event.body)
        while len(self._events) > self._max_events or (
                self._bytes > self._max_bytes and len(self._events) > self._keep):
            _id, oldest = self._events.popitem(last=False)
            self._bytes -= len(oldest.body)
            if not self.let_go:
                log.warning("the in-flight window is full; letting go of its oldest events "
                            "(the active replica had their confirms before publishing the "
                            "newer ones)", extra={"events": len(self._events),
                                                  "bytes": self._bytes})
            self.let_go += 1

    def take(self, now: float) -> list[Event]:
        """The window's events, oldest first, at takeover; the window is empty after."""
        events = list(self._events.values()) if now - self._last <= self.seconds else []
        self._clear()
        return events

    def _clear(self) -> None:
        self._events.clear()
        self._bytes = 0
        self.let_go = 0
