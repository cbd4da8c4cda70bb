"""Hostile file names: whatever other people's tools name a file, it is announced faithfully."""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from multiwatch.logs import JsonFormatter
from multiwatch.watcher.hashing import FileVersion, Hashed
from multiwatch.watcher.message import FILE_DISCOVERED, build_event
from tests.support.consumer import collect
from tests.support.faults import FAST_BROKER
from tests.support.hostile import (
    descend,
    names_for_depth,
    observed_pipeline,
    remove_tree,
    write_at,
)
from tests.support.process import Multiwatch, write_roster
from tests.watcher.test_pipeline import digests, hashes_of

# watchdog warns (harmlessly, with an 80 kB message) when it re-adds a watch in a deep tree.
pytestmark = pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")

AWKWARD_NAMES = [
    "with space.mp3",
    "  leading and trailing spaces  ",
    "quote's \"double\" `back`.mp3",
    "new\nline.mp3",
    "tab\there.mp3",
    "-leading-dash.mp3",
    "--",
    "-rf",
    "back\\slash.mp3",
    "$(touch pwned);.mp3",
    "ünïcødé ☃ 日本.mp3",
    "n" * 251 + ".mp3",  # 255 bytes, NAME_MAX
    "é" * 127 + ".",  # 255 bytes of UTF-8, 128 characters
]
NON_UTF8 = b"caf\xe9 \xff\xfe.mp3"  # Latin-1 bytes, invalid as UTF-8


def test_awkward_names_are_announced_with_their_exact_names(tmp_path: Path) -> None:
    """Spaces, quotes, newlines, tabs, leading dashes and 255-byte names are each announced
    once, under exactly their name, with the right hashes, in a body that is valid JSON."""
    assert all(len(os.fsencode(n)) <= 255 for n in AWKWARD_NAMES)
    assert len(os.fsencode(AWKWARD_NAMES[-2])) == len(os.fsencode(AWKWARD_NAMES[-1])) == 255
    with observed_pipeline(tmp_path, exclude=()) as (announced, root):
        for i, name in enumerate(AWKWARD_NAMES):
            (root / name).write_bytes(b"content %d" % i)
        announced.until(lambda bodies: len(bodies) >= len(AWKWARD_NAMES))
        announced.settled()
    by_name = {b["file_info"]["name"]: b for b in announced.bodies}
    assert sorted(by_name) == sorted(AWKWARD_NAMES)
    assert len(announced.bodies) == len(AWKWARD_NAMES)
    for i, name in enumerate(AWKWARD_NAMES):
        body = by_name[name]
        assert body["event_type"] == "file_discovered"
        assert body["file_info"]["path"] == str(root / name)
        assert body["file_info"]["relative_path"] == name
        assert hashes_of(body) == digests(b"content %d" % i)


def test_path_just_under_path_max_is_announced(tmp_path: Path) -> None:
    """A file whose absolute path is 4,095 bytes (PATH_MAX minus the NUL) is announced."""
    leaf = "deep.mp3"
    names = names_for_depth(tmp_path / "w", 4095, leaf)
    with observed_pipeline(tmp_path) as (announced, root):
        try:
            with descend(root, names) as bottom:
                write_at(bottom, leaf, b"at the bottom")
            announced.pipeline.request_scan()
            [body] = announced.until(lambda bodies: len(bodies) >= 1)
        finally:
            remove_tree(root / names[0])
    assert len(os.fsencode(body["file_info"]["path"])) == 4095
    assert body["file_info"]["relative_path"] == "/".join([*names, leaf])
    assert hashes_of(body) == digests(b"at the bottom")


def test_tree_deeper_than_path_max_does_not_stop_the_watcher(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A tree deeper than PATH_MAX (made with openat) is skipped with one warning; the rest of
    the tree is still announced and the pipeline never raises."""
    names = names_for_depth(tmp_path / "w", 4300, "unreachable.mp3")
    caplog.set_level(logging.WARNING)
    with observed_pipeline(tmp_path) as (announced, root):
        try:
            with descend(root, names) as bottom:
                write_at(bottom, "unreachable.mp3", b"too deep")
            (root / "fine.mp3").write_bytes(b"fine")
            announced.pipeline.request_scan()
            announced.until(lambda bodies: "fine.mp3" in [b["file_info"]["name"] for b in bodies])
            announced.settled()
            announced.pipeline.request_scan()  # a rescan must not crash either
            announced.settled()
        finally:
            remove_tree(root / names[0])
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING
                and str(getattr(r, "path", "")).startswith(str(root / names[0]))]
    assert len(warnings) >= 1


def test_a_directory_too_long_for_inotify_is_warned_about_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A directory whose absolute path is PATH_MAX bytes or more, though below the root by
    less (the scan lists it and announces its file), cannot be watched: one warning says
    so, instead of its changes going unseen in silence."""
    leaf = "deep.mp3"
    root_length = len(os.fsencode(str(tmp_path / "w")))
    names = names_for_depth(tmp_path / "w", 4096 + root_length // 2 + 1 + len(leaf), leaf)
    caplog.set_level(logging.WARNING)
    with observed_pipeline(tmp_path) as (announced, root):
        try:
            with descend(root, names) as bottom:
                write_at(bottom, leaf, b"below an unwatchable directory")
            announced.pipeline.request_scan()
            [body] = announced.until(lambda bodies: len(bodies) >= 1)
            announced.pipeline.request_scan()
            announced.settled()
        finally:
            remove_tree(root / names[0])
    deepest = os.path.join(str(root), *names)
    assert len(os.fsencode(deepest)) >= 4096 > len(os.fsencode(os.path.join(*names)))
    assert body["file_info"]["relative_path"] == "/".join([*names, leaf])
    warned = [r for r in caplog.records if r.levelno == logging.WARNING
              and r.getMessage().startswith("cannot watch directory")]
    assert [getattr(r, "path", None) for r in warned] == [deepest]


def test_non_utf8_name_is_announced_with_surrogateescape_path(tmp_path: Path) -> None:
    """A name that is not valid UTF-8 is announced; file_info.path is the name decoded with
    surrogateescape (os.fsdecode), so os.fsencode gives back the exact bytes on disk, and the
    body itself is plain ASCII JSON."""
    with observed_pipeline(tmp_path) as (announced, root):
        write_at_path = os.path.join(os.fsencode(str(root)), NON_UTF8)
        with open(write_at_path, "wb") as handle:
            handle.write(b"latin-1 named")
        [body] = announced.until(lambda bodies: len(bodies) >= 1)
    info = body["file_info"]
    assert os.fsencode(info["path"]) == write_at_path
    assert os.fsencode(info["relative_path"]) == NON_UTF8
    assert os.fsencode(info["name"]) == NON_UTF8
    assert hashes_of(body) == digests(b"latin-1 named")


def test_non_utf8_name_carries_path_bytes_b64(tmp_path: Path) -> None:
    """file_info carries path_bytes_b64, the base64 of the exact path bytes, so consumers in any
    language can open the file even when its name is not UTF-8."""
    with observed_pipeline(tmp_path) as (announced, root):
        raw = os.path.join(os.fsencode(str(root)), NON_UTF8)
        with open(raw, "wb") as handle:
            handle.write(b"latin-1 named")
        [body] = announced.until(lambda bodies: len(bodies) >= 1)
    assert base64.b64decode(body["file_info"]["path_bytes_b64"]) == raw


# Any byte string that can be a file name: no "/" and no NUL, 1..255 bytes.
file_names = st.binary(min_size=1, max_size=255).filter(
    lambda raw: b"/" not in raw and b"\0" not in raw and raw not in (b".", b".."))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=file_names, subdir=st.booleans())
def test_message_and_log_encoders_never_crash_on_any_name(raw: bytes, subdir: bool) -> None:
    """For every possible file name (any bytes), the event body and the log line are valid
    ASCII JSON and the name round-trips to the exact bytes."""
    name = os.fsdecode(raw)
    relative = f"sub dir/{name}" if subdir else name
    hashed = Hashed(FileVersion(size=1, mtime_ns=2, inode=3), "a" * 64, "b" * 32, 4)
    event = build_event(event_type=FILE_DISCOVERED, instance_id="i", watched_directory="/data",
                        relative_path=relative, hashed=hashed)
    event.body.decode("ascii")
    body = json.loads(event.body)
    assert os.fsencode(body["file_info"]["name"]) == raw
    assert os.fsencode(body["file_info"]["relative_path"]) == os.fsencode(relative)
    record = logging.LogRecord("multiwatch.watcher.pipeline", logging.INFO, __file__, 1,
                               "file discovered", (), None)
    path = os.path.join("/data", relative)
    record.path = path  # type: ignore[attr-defined]
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert os.fsencode(json.loads(line)["path"]) == os.fsencode(path)


def test_case_only_rename_is_announced_as_a_move(tmp_path: Path) -> None:
    """Renaming a.mp3 to A.mp3 (only the case changes) is one file_moved from a.mp3."""
    with observed_pipeline(tmp_path) as (announced, root):
        (root / "a.mp3").write_bytes(b"song")
        announced.until(lambda bodies: len(bodies) >= 1)
        os.rename(root / "a.mp3", root / "A.mp3")
        announced.until(lambda bodies: len(bodies) >= 2)
        announced.settled()
    assert announced.summary() == [("file_discovered", "a.mp3"), ("file_moved", "A.mp3")]
    moved = announced.bodies[1]["file_info"]
    assert moved["old_relative_path"] == "a.mp3"
    assert hashes_of(announced.bodies[1]) == digests(b"song")


def test_hostile_names_reach_the_broker_intact(tmp_path: Path, broker_url: str) -> None:
    """End to end through a real watcher and RabbitMQ: each awkward or non-UTF-8 name arrives
    in a JSON body under its exact name, and every log line stays one valid JSON object."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    roster = write_roster(tmp_path / "roster.yaml", {
        "state_dir": str(tmp_path / "state"),
        "broker": {"url": broker_url, **FAST_BROKER},
        "defaults": {"settle_seconds": 0.1, "exclude": []},
        "instances": [{"id": "names", "directory": str(inbox)}],
    })
    mw = Multiwatch(["-c", str(roster)])
    try:
        mw.wait_watching("names")
        for i, name in enumerate(AWKWARD_NAMES):
            (inbox / name).write_bytes(b"wire %d" % i)
        with open(os.path.join(os.fsencode(str(inbox)), NON_UTF8), "wb") as handle:
            handle.write(b"wire latin-1")
        expected = len(AWKWARD_NAMES) + 1
        messages = collect(broker_url, "file_events", timeout=30,
                           until=lambda ms: len(ms) >= expected)
    finally:
        mw.cleanup()
    names = {os.fsencode(m.body["file_info"]["name"]) for m in messages}
    assert names == {os.fsencode(n) for n in AWKWARD_NAMES} | {NON_UTF8}
    assert len(messages) == expected
    assert all(m.properties["content_type"] == "application/json" for m in messages)
    broken = [raw for raw in mw.raw if raw.strip() and not raw.startswith("{")]
    assert broken == [], f"non-JSON output lines: {broken[:3]}"
    assert all(isinstance(json.loads(raw), dict) for raw in mw.raw if raw.strip())
