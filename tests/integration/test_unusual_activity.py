"""Unusual activity on a real supervisor and broker: a script renaming every file of a tree
is flagged (log line, /metrics, /status) while every rename is still announced; an ingest of
new files is not flagged."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_operator import _get, _roster, _status
from tests.support.consumer import Received, collect, wait_for
from tests.support.process import LogLine, Multiwatch, free_port

QUEUE = "file_events"
FILES = 200
# Low figures, so 200 files are enough; a short window, so the end is seen within the test.
THRESHOLD = {"window_seconds": 10, "percent": 20, "min_events": 50}


class Fleet:
    """A running supervisor over tmp_path/music, with its HTTP port."""

    def __init__(self, process: Multiwatch, port: int, music: Path) -> None:
        self.process, self.port, self.music = process, port, music

    def metric(self, name: str, **labels: str) -> float | None:
        _, text = _get(self.port, "/metrics")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == {"instance_id": "music", **labels}:
                    return sample.value
        return None

    def heartbeat(self) -> dict[str, object]:
        return _status(self.port).get("instances", {}).get("music", {}).get("heartbeat") or {}

    def unusual(self) -> dict[str, object]:
        return self.heartbeat().get("unusual_activity") or {}  # type: ignore[return-value]

    def log_lines(self, message_start: str) -> list[LogLine]:
        return [line for line in self.process.lines
                if str(line.get("message", "")).startswith(message_start)]


@pytest.fixture
def fleet(tmp_path: Path, broker_url: str) -> Iterator[Fleet]:
    """200 tracked files announced at start, watched with a low unusual_activity threshold."""
    music = tmp_path / "music"
    music.mkdir()
    for i in range(FILES):
        (music / f"track{i:03}.mp3").write_bytes(b"song %d" % i)
    port = free_port()
    instances = [{"id": "music", "directory": str(music), "unusual_activity": THRESHOLD}]
    mw = Multiwatch(["-c", str(_roster(tmp_path, port, instances, broker_url))])
    try:
        mw.wait_watching("music")
        found = _consume(broker_url, FILES)
        assert {m.body["event_type"] for m in found} == {"file_discovered"}
        yield Fleet(mw, port, music)
    finally:
        mw.cleanup()


def _older_than_the_window(directory: Path) -> None:
    """Wait until every file is older than the window (by ctime, which nothing can set):
    only changes to files that were there before the window count."""
    newest = max(entry.stat().st_ctime for entry in directory.iterdir())
    wait_for(lambda: time.time() > newest + THRESHOLD["window_seconds"] + 0.5,
             timeout=THRESHOLD["window_seconds"] + 5, message="the files never aged")


def _consume(broker_url: str, count: int) -> list[Received]:
    got = collect(broker_url, QUEUE, timeout=60, until=lambda r: len(r) >= count)
    assert len(got) == count, f"{len(got)} of {count} events arrived"
    return got


def test_renaming_every_file_is_flagged_and_every_rename_still_arrives(
        fleet: Fleet, broker_url: str) -> None:
    """A script renames all 200 tracked files: one WARNING with the figures, the metric 1,
    the /status flag, all 200 renames delivered; once the window empties, an INFO line and 0."""
    assert fleet.log_lines("unusual activity") == []  # the 200 discovered did not count
    _older_than_the_window(fleet.music)
    for i in range(FILES):
        os.rename(fleet.music / f"track{i:03}.mp3", fleet.music / f"track{i:03}.mp3.locked")
    moved = _consume(broker_url, FILES)
    assert {m.body["event_type"] for m in moved} == {"file_moved"}
    assert sorted(m.body["file_info"]["relative_path"] for m in moved) == \
        sorted(f"track{i:03}.mp3.locked" for i in range(FILES))

    warning = fleet.process.wait_for_log(
        lambda line: str(line.get("message", "")).startswith("unusual activity:"), timeout=10)
    assert warning["level"] == "WARNING" and warning["kind"] == "moved"
    assert (warning["window_seconds"], warning["files_tracked"]) == (10, FILES)
    assert warning["events"] >= 50 and warning["percent"] > 20
    wait_for(lambda: fleet.metric("multiwatch_unusual_activity") == 1, timeout=10,
             message="multiwatch_unusual_activity never became 1")
    # The flag may come with a heartbeat taken mid-burst; the next one has counted them all.
    wait_for(lambda: fleet.metric("multiwatch_activity_window_events", kind="moved") == FILES,
             timeout=10, message="the window never showed all 200 renames")
    shown = fleet.unusual()
    assert shown["active"] is True and shown["events"] == {"deleted": 0, "modified": 0,
                                                           "moved": FILES}
    assert len(fleet.log_lines("unusual activity:")) == 1  # not one per event

    ended = fleet.process.wait_for_log(
        lambda line: line.get("message") == "unusual activity ended", timeout=30)
    assert ended["level"] == "INFO"
    wait_for(lambda: fleet.metric("multiwatch_unusual_activity") == 0, timeout=10,
             message="multiwatch_unusual_activity never went back to 0")
    assert fleet.unusual()["active"] is False


def test_an_ingest_of_new_files_and_its_consumer_are_not_flagged(
        fleet: Fleet, broker_url: str) -> None:
    """500 new files dropped beside the 200 tracked ones (250 %), then deleted by their
    consumer within the window, like a spool (500 deletions, 71 %): no warning, metric 0."""
    for i in range(500):
        (fleet.music / f"new{i:03}.flac").write_bytes(b"new %d" % i)
    arrived = _consume(broker_url, 500)
    assert {m.body["event_type"] for m in arrived} == {"file_discovered"}
    # The heartbeat after the last one has counted every event the watcher announced.
    wait_for(lambda: fleet.heartbeat().get("files_tracked") == FILES + 500, timeout=10,
             message="the new files were never all tracked")
    assert fleet.metric("multiwatch_unusual_activity") == 0
    assert fleet.unusual()["active"] is False
    for i in range(500):
        (fleet.music / f"new{i:03}.flac").unlink()
    deleted = _consume(broker_url, 500)
    assert {m.body["event_type"] for m in deleted} == {"file_deleted"}
    wait_for(lambda: fleet.heartbeat().get("files_tracked") == FILES, timeout=10,
             message="the deletions were never all recorded")
    assert fleet.metric("multiwatch_unusual_activity") == 0
    assert fleet.unusual()["active"] is False
    assert fleet.log_lines("unusual activity") == []
