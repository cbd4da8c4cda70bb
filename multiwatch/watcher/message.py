"""The event message: the deployment guide's schema plus a few additive fields.

Every field that can appear is listed in README §What is announced; the exact-bytes
fields (`path_bytes_b64`, `old_path_bytes_b64`) appear only for names that are not UTF-8.

The body keeps every field of the guide (size_bytes stays a string, as there), plus the
rest of the file version (`mtime_ns`, `inode`, `ctime_ns`), which a standby replica needs
to keep its state current from the event stream (watcher/standby.py).  The
message_id is deterministic — same instance, event, path and file version (size, mtime,
inode, ctime, sha256) give the same id — so consumers can drop the duplicates that
at-least-once delivery allows, while a file renamed back and forth still gets new ids.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from multiwatch.watcher.hashing import Hashed

SCHEMA_VERSION = 1
HOSTNAME = socket.gethostname()

FILE_DISCOVERED = "file_discovered"
FILE_MODIFIED = "file_modified"
FILE_DELETED = "file_deleted"
FILE_MOVED = "file_moved"
ROUTING_KEYS = {
    FILE_DISCOVERED: "file.discovered",
    FILE_MODIFIED: "file.modified",
    FILE_DELETED: "file.deleted",
    FILE_MOVED: "file.moved",
}
RESYNC_HEADER = "x-multiwatch-resync"


# ensure_ascii keeps undecodable names (surrogate escapes) encodable as \udcXX.  One
# encoder for every body: json.dumps with options builds a new one per call.
_BODY_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))


@dataclass(frozen=True)
class Event:
    """One message ready for the outbox: body bytes plus its AMQP routing and properties."""

    instance_id: str
    event_type: str
    routing_key: str
    message_id: str
    correlation_id: str
    body: bytes
    resync: bool = False  # queued by `multiwatch resync`: a re-announcement

    @property
    def headers(self) -> dict[str, str | bool]:
        headers: dict[str, str | bool] = {"instance_id": self.instance_id,
                                          "event_type": self.event_type}
        if self.resync:
            headers[RESYNC_HEADER] = True
        return headers


def _bytes_b64_if_undecodable(path: str) -> str | None:
    """The path's exact bytes in base64 when they are not valid UTF-8, else None.

    A name that is not UTF-8 reaches JSON as lone surrogates (\\udcXX), which most
    consumers cannot turn back into the file's name; only then is the exact form added."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return base64.b64encode(os.fsencode(path)).decode("ascii")
    return None


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def build_event(
    *,
    event_type: str,
    instance_id: str,
    watched_directory: str,
    relative_path: str,
    hashed: Hashed,
    old_relative_path: str | None = None,
    resync_id: str | None = None,
) -> Event:
    """Build the message for one file event (paths relative to watched_directory).

    resync_id: a re-announcement for `multiwatch resync` (one id per request): the body
    says so ("resync", "resync_id") and the message_id is the normal one's, hashed with
    the request's id, so a consumer deduplicating on message_id still receives it."""
    path = os.path.join(watched_directory, relative_path)
    name = os.path.basename(relative_path)
    file_info: dict[str, str] = {
        "path": path,
        "name": name,
        "extension": os.path.splitext(name)[1],
        "size_bytes": str(hashed.version.size),
        "sha256_hash": hashed.sha256,
        "xxh128_hash": hashed.xxh128,
        "relative_path": relative_path,
        # The rest of the file version, for a standby replica's state (watcher/standby.py):
        # decimal strings like size_bytes (64-bit values lose digits in a JavaScript number).
        "mtime_ns": str(hashed.version.mtime_ns),
        "inode": str(hashed.version.inode),
        "ctime_ns": str(hashed.ctime_ns),
    }
    if (exact := _bytes_b64_if_undecodable(path)) is not None:
        file_info["path_bytes_b64"] = exact
    if old_relative_path is not None:
        old_path = os.path.join(watched_directory, old_relative_path)
        file_info["old_path"] = old_path
        file_info["old_relative_path"] = old_relative_path
        if (old_exact := _bytes_b64_if_undecodable(old_path)) is not None:
            file_info["old_path_bytes_b64"] = old_exact
    # A version-4 UUID from the process's PRNG (seeded from os.urandom): unique enough for
    # correlation, without a getrandom() system call per event as uuid4() makes.
    correlation_id = str(uuid.UUID(int=random.getrandbits(128), version=4))
    body = {
        "correlation_id": correlation_id,
        "timestamp": _utc_now(),
        "event_type": event_type,
        "instance_id": instance_id,
        "watched_directory": watched_directory,
        "file_info": file_info,
        "schema_version": SCHEMA_VERSION,
        "hostname": HOSTNAME,
    }
    if resync_id is not None:
        body["resync"] = True
        body["resync_id"] = resync_id
    identity = "\0".join(
        [
            instance_id,
            event_type,
            relative_path,
            old_relative_path or "",
            str(hashed.version.size),
            str(hashed.version.mtime_ns),
            str(hashed.version.inode),
            str(hashed.ctime_ns),
            hashed.sha256,
        ]
    )
    if resync_id is not None:
        identity += "\0resync\0" + resync_id
    message_id = hashlib.sha256(identity.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    encoded = _BODY_ENCODER.encode(body).encode("ascii")
    return Event(
        instance_id=instance_id,
        event_type=event_type,
        routing_key=ROUTING_KEYS[event_type],
        message_id=message_id,
        correlation_id=correlation_id,
        body=encoded,
        resync=resync_id is not None,
    )
