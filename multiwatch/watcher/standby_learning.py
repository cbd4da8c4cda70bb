"""What a standby learns from one of the active replica's messages: the change an event
applies to its warm state database (Change, WarmState), the raw event it keeps while it
may still be in flight (event_of; the window itself: standby_window.py), and the active
replica's settled marker (is_settled).  Used by the feed on the publisher thread
(standby_feed.py); the standby's invariants are in standby.py's docstring.
"""

from __future__ import annotations

import json
import logging
import time
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
from multiwatch.watcher.standby_window import SETTLED_EXCHANGE, InFlightWindow, settled_key
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
    """The standby's state database and its in-flight window (standby_window.py), written by
    the publisher thread (its own connection).  Wall-clock times (`now`): the window's time
    bound holds across restarts."""

    def __init__(self, path: str, window: InFlightWindow) -> None:
        self.path = path
        self.window = window
        self._store: StateStore | None = None

    def apply(self, changes: Sequence[Change], events: Sequence[Event], *,
              settled: bool = False, now: float | None = None) -> None:
        """Commit the changes (in order: the last one per path wins) and the window's update
        (`events` received after the last settled marker, if `settled` one came) in one
        transaction: a change is in the warm state only with its event in the window."""
        files: dict[str, Hashed | None] = {}
        for change in changes:
            if change.old_relative_path is not None:
                files[change.old_relative_path] = None
            files[change.relative_path] = change.hashed
        if files or events or settled:
            at = time.time() if now is None else now
            self._open().commit(files, [], also=lambda conn: self.window.record(
                conn, events, settled=settled, now=at))

    def tracked(self) -> int:
        return self._open().tracked_count()

    def in_flight(self) -> int:
        return self.window.size(self._open().connection)

    def reannounce(self, now: float | None = None) -> int:
        """Move the in-flight window into the outbox, in one transaction (at takeover: the
        outbox is empty, so its events go out before anything the pipeline announces); how
        many events."""
        return self.window.take(self._open().connection, time.time() if now is None else now)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def _open(self) -> StateStore:
        """The database; opened first, it adopts what its outbox held (standby.py)."""
        if self._store is None:
            self._store = StateStore(self.path)
            if adopted := self.window.adopt_outbox(self._store.connection, time.time()):
                log.warning("the standby's state database held events a replica that "
                            "stopped being active had not seen confirmed; they are kept in "
                            "the in-flight window, re-published if this replica takes over "
                            "(unless the active replica says it has settled first)",
                            extra={"events": adopted, "path": self.path})
        return self._store


# The in-flight window's length in time (its table and other bounds: standby_window.py).
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


def is_settled(message: amqp.Message, instance_id: str) -> bool:
    """Whether a delivery is this instance's active replica's settled marker (publisher.py
    `_send_settled`): it comes through SETTLED_EXCHANGE, never the events exchange."""
    info = message.delivery_info
    headers = message.properties.get("application_headers") or {}
    return (info.get("exchange") == SETTLED_EXCHANGE
            and info.get("routing_key") == settled_key(instance_id)
            and headers.get("instance_id") == instance_id)
