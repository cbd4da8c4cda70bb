"""The event message: the deployment guide's schema, routing keys and deduplication ids."""

from __future__ import annotations

import base64
import json
import os
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from multiwatch.watcher.hashing import FileVersion, Hashed
from multiwatch.watcher.message import (
    FILE_DELETED,
    FILE_DISCOVERED,
    FILE_MODIFIED,
    FILE_MOVED,
    Event,
    build_event,
)

GUIDE_FIELDS = {"correlation_id", "timestamp", "event_type", "instance_id",
                "watched_directory", "file_info"}
GUIDE_FILE_INFO = {"path", "name", "extension", "size_bytes", "sha256_hash", "xxh128_hash"}
VERSION_FIELDS = {"mtime_ns", "inode", "ctime_ns"}  # for a standby replica's state

HASHED = Hashed(
    version=FileVersion(size=5242880, mtime_ns=1_700_000_000_123_456_789, inode=4242),
    sha256="ab" * 32,
    xxh128="cd" * 16,
)


def _event(event_type: str = FILE_DISCOVERED, relative_path: str = "albums/song.mp3",
           hashed: Hashed = HASHED, **options: Any) -> Event:
    return build_event(event_type=event_type, instance_id="watcher-music",
                       watched_directory="/data/music", relative_path=relative_path,
                       hashed=hashed, **options)


def _body(event: Event) -> dict[str, Any]:
    return json.loads(event.body)


def test_body_has_exactly_the_guide_fields_plus_additive_ones() -> None:
    """The body carries every field of the guide, plus only schema_version, hostname,
    file_info.relative_path and the file version's rest for a UTF-8 name (no exact-bytes
    field)."""
    body = _body(_event())
    assert set(body) == GUIDE_FIELDS | {"schema_version", "hostname"}
    assert set(body["file_info"]) == GUIDE_FILE_INFO | {"relative_path"} | VERSION_FIELDS
    assert body["schema_version"] == 1
    assert isinstance(body["hostname"], str) and body["hostname"]


def test_body_values_describe_the_file() -> None:
    """Paths, name, extension, hashes and instance are filled in as the guide shows them."""
    body = _body(_event())
    assert body["event_type"] == "file_discovered"
    assert body["instance_id"] == "watcher-music"
    assert body["watched_directory"] == "/data/music"
    assert body["file_info"] == {
        "path": "/data/music/albums/song.mp3",
        "name": "song.mp3",
        "extension": ".mp3",
        "size_bytes": "5242880",
        "sha256_hash": "ab" * 32,
        "xxh128_hash": "cd" * 16,
        "relative_path": "albums/song.mp3",
        "mtime_ns": "1700000000123456789",
        "inode": "4242",
        "ctime_ns": "0",
    }


def test_exact_bytes_fields_appear_only_for_names_that_are_not_utf8() -> None:
    """path_bytes_b64 / old_path_bytes_b64 carry the exact bytes only of a non-UTF-8 name:
    a move from a Latin-1 name to a UTF-8 one has the old field and not the new one."""
    latin1 = os.fsdecode(b"caf\xe9.mp3")
    moved = _body(_event(FILE_MOVED, relative_path="café.mp3", old_relative_path=latin1))
    info = moved["file_info"]
    assert "path_bytes_b64" not in info
    assert base64.b64decode(info["old_path_bytes_b64"]) == b"/data/music/caf\xe9.mp3"
    back = _body(_event(FILE_MOVED, relative_path=latin1, old_relative_path="café.mp3"))
    assert base64.b64decode(back["file_info"]["path_bytes_b64"]) == b"/data/music/caf\xe9.mp3"
    assert "old_path_bytes_b64" not in back["file_info"]


def test_size_bytes_is_a_string() -> None:
    """size_bytes stays a decimal string, as in the guide, even for an empty file."""
    empty = Hashed(FileVersion(size=0, mtime_ns=1, inode=1), "0" * 64, "0" * 32)
    assert _body(_event(hashed=empty))["file_info"]["size_bytes"] == "0"
    assert _body(_event())["file_info"]["size_bytes"] == "5242880"


def test_extension_is_empty_for_names_without_one() -> None:
    """A file without an extension reports an empty extension."""
    assert _body(_event(relative_path="README"))["file_info"]["extension"] == ""


def test_correlation_id_is_a_fresh_uuid4() -> None:
    """correlation_id is a UUID v4 matching the event's property, and differs per message."""
    first, second = _event(), _event()
    for event in (first, second):
        correlation_id = _body(event)["correlation_id"]
        assert uuid.UUID(correlation_id).version == 4
        assert correlation_id == event.correlation_id
    assert first.correlation_id != second.correlation_id


def test_timestamp_is_iso8601_utc_ending_in_z() -> None:
    """timestamp is an ISO-8601 UTC instant written with a trailing Z, close to now."""
    stamp = _body(_event())["timestamp"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", stamp), stamp
    when = datetime.fromisoformat(stamp)
    assert when.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - when) < timedelta(seconds=60)


@pytest.mark.parametrize("event_type, routing_key", [
    (FILE_DISCOVERED, "file.discovered"),
    (FILE_MODIFIED, "file.modified"),
    (FILE_DELETED, "file.deleted"),
    (FILE_MOVED, "file.moved"),
])
def test_routing_key_and_headers_follow_event_type(event_type: str, routing_key: str) -> None:
    """Each event type is routed under its file.* key and says who sent it in its headers."""
    event = _event(event_type)
    assert event.routing_key == routing_key
    assert event.event_type == event_type == _body(event)["event_type"]
    assert event.headers == {"instance_id": "watcher-music", "event_type": event_type}


def test_moved_event_carries_old_path() -> None:
    """A move names both the new and the old location, absolute and relative, and nothing else
    beyond the other events' fields."""
    body = _body(_event(FILE_MOVED, relative_path="b/new.mp3", old_relative_path="a/old.mp3"))
    info = body["file_info"]
    assert set(info) == GUIDE_FILE_INFO | {"relative_path", "old_path",
                                           "old_relative_path"} | VERSION_FIELDS
    assert info["path"] == "/data/music/b/new.mp3"
    assert info["relative_path"] == "b/new.mp3"
    assert info["old_path"] == "/data/music/a/old.mp3"
    assert info["old_relative_path"] == "a/old.mp3"


def test_non_move_events_have_no_old_path() -> None:
    """Only moves carry old_path / old_relative_path."""
    info = _body(_event(FILE_MODIFIED))["file_info"]
    assert "old_path" not in info and "old_relative_path" not in info


def test_message_id_is_deterministic_for_the_same_file_version() -> None:
    """Rebuilding the same event gives the same message_id, so consumers can drop duplicates."""
    first, second = _event(), _event()
    assert first.message_id == second.message_id
    assert re.fullmatch(r"[0-9a-f]{32}", first.message_id)


@pytest.mark.parametrize("change", [
    {"hashed": Hashed(FileVersion(5242880, 1_700_000_000_999_999_999, 4242), "ab" * 32,
                      "cd" * 16)},
    {"hashed": Hashed(FileVersion(5242881, 1_700_000_000_123_456_789, 4242), "ef" * 32,
                      "cd" * 16)},
    {"hashed": Hashed(FileVersion(5242880, 1_700_000_000_123_456_789, 9999), "ab" * 32,
                      "cd" * 16)},
    {"relative_path": "albums/other.mp3"},
    {"event_type": FILE_MODIFIED},
], ids=["mtime", "size-and-content", "inode", "path", "event-type"])
def test_message_id_differs_for_a_different_event(change: dict[str, Any]) -> None:
    """Another file version, path or event type gets another message_id."""
    assert _event(**change).message_id != _event().message_id


def test_message_id_of_a_move_depends_on_its_origin() -> None:
    """Moves of the same file from two different places are different messages."""
    from_a = _event(FILE_MOVED, relative_path="c.mp3", old_relative_path="a.mp3")
    from_b = _event(FILE_MOVED, relative_path="c.mp3", old_relative_path="b.mp3")
    assert from_a.message_id != from_b.message_id


def test_message_id_differs_between_instances() -> None:
    """Two instances announcing the same file do not suppress each other's messages."""
    other = build_event(event_type=FILE_DISCOVERED, instance_id="watcher-other",
                        watched_directory="/data/music", relative_path="albums/song.mp3",
                        hashed=HASHED)
    assert other.message_id != _event().message_id


def test_non_utf8_filename_encodes_and_round_trips() -> None:
    """A Latin-1 file name encodes without error and a consumer can recover its exact bytes."""
    name = os.fsdecode(b"caf\xe9.mp3")
    event = _event(relative_path=f"d\u00e9j\u00e0/{name}")
    event.body.decode("ascii")  # the body is plain ASCII JSON
    info = _body(event)["file_info"]
    assert info["name"] == name
    assert os.fsencode(info["name"]) == b"caf\xe9.mp3"
    assert info["extension"] == ".mp3"
    assert info["relative_path"] == f"d\u00e9j\u00e0/{name}"
    assert _event(relative_path=f"d\u00e9j\u00e0/{name}").message_id == event.message_id


def test_body_carries_the_file_version_as_decimal_strings() -> None:
    """mtime_ns, inode and ctime_ns (what a standby replica's state needs beside size and
    hashes) are decimal strings, exact for 64-bit values, like size_bytes."""
    info = _body(_event())["file_info"]
    assert info["mtime_ns"] == str(HASHED.version.mtime_ns) == "1700000000123456789"
    assert info["inode"] == str(HASHED.version.inode)
    assert info["ctime_ns"] == str(HASHED.ctime_ns)


def test_every_field_that_can_appear_is_in_the_readme_message_table() -> None:
    """The README's field table (What is announced) names every field a message can carry:
    a resync'd move between two names that are not UTF-8 has them all."""
    latin1 = os.fsdecode(b"caf\xe9.mp3")
    body = _body(_event(FILE_MOVED, relative_path=f"new/{latin1}", old_relative_path=latin1,
                        resync_id="r1"))
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("| field | in | meaning |", 1)[1].split("\n\n", 1)[0]
    documented = set(re.findall(r"`(?:file_info)?\.?([a-z0-9_]+)`", table))
    assert set(body) - {"file_info"} <= documented
    assert set(body["file_info"]) <= documented
