"""The unusual-activity window: counts, the threshold, one warning per episode, its end."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from multiwatch.config.activity import UnusualActivityConfig
from multiwatch.watcher.message import FILE_DELETED, FILE_DISCOVERED, FILE_MODIFIED, FILE_MOVED
from multiwatch.watcher.raw_event import EventKind, RawEvent
from multiwatch.watcher.unusual_activity import UnusualActivity
from tests.watcher.test_pipeline import announce, known_files, make_pipeline

LOGGER = "multiwatch.watcher.unusual_activity"


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Tree:
    """The tracked-file count a pipeline would report."""

    def __init__(self, files: int) -> None:
        self.files = files

    def __call__(self) -> int:
        return self.files


def monitor(tracked: int, clock: FakeClock, **figures: float) -> tuple[UnusualActivity, Tree]:
    tree = Tree(tracked)
    config = UnusualActivityConfig(**figures)  # type: ignore[arg-type]
    return UnusualActivity(config, tree, clock=clock, wall_clock=lambda: 1.7e9), tree


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == level]


def test_renaming_a_fifth_of_the_tree_warns_once_with_the_figures(
        caplog: pytest.LogCaptureFixture) -> None:
    """60 of 200 files renamed within the window: one WARNING with kind, count, window,
    tracked files and percent, however many events follow."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = FakeClock()
    activity, _ = monitor(200, clock, window_seconds=300, percent=20, min_events=50)
    for _ in range(60):
        activity.record(FILE_MOVED)
        clock.now += 0.5
    assert activity.active
    [warning] = records(caplog, logging.WARNING)
    assert "renamed within 300 s" in warning.getMessage()
    figures = {k: getattr(warning, k) for k in
               ("kind", "events", "moved", "window_seconds", "files_tracked", "percent")}
    # More than 20 % of 200 from the 41st event, at least 50 events from the 50th: it starts there.
    assert figures == {"kind": "moved", "events": 50, "moved": 50, "window_seconds": 300,
                       "files_tracked": 200, "percent": 25.0}
    shown = activity.snapshot()
    assert shown["active"] and shown["events"] == {"deleted": 0, "modified": 0, "moved": 60}
    assert (shown["percent"], shown["files_tracked"]) == (30.0, 200)


def test_below_either_figure_is_not_unusual(caplog: pytest.LogCaptureFixture) -> None:
    """Every file of a 50-file tree modified (100 %) stays quiet below min_events; 99 of
    1,000 (9.9 %) stays quiet below the percent."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = FakeClock()
    small, _ = monitor(50, clock, percent=20, min_events=100)
    big, _ = monitor(1000, clock, percent=20, min_events=10)
    for _ in range(50):
        small.record(FILE_MODIFIED)
    for _ in range(99):
        big.record(FILE_MODIFIED)
    assert not small.active and not big.active and not caplog.records


def test_new_files_never_count(caplog: pytest.LogCaptureFixture) -> None:
    """An ingest of 10,000 new files into a 100-file tree raises nothing."""
    clock = FakeClock()
    activity, tree = monitor(100, clock, percent=20, min_events=10)
    for _ in range(10_000):
        tree.files += 1
        activity.record(FILE_DISCOVERED)
    assert activity.snapshot()["events"] == {"deleted": 0, "modified": 0, "moved": 0}
    assert not activity.active and not records(caplog, logging.WARNING)


def test_deleting_the_whole_tree_is_a_hundred_percent() -> None:
    """Deleted files were tracked when the window began: 200 of 200 deleted is 100 %,
    though no file is tracked any more."""
    clock = FakeClock()
    activity, tree = monitor(200, clock, percent=20, min_events=100)
    for _ in range(200):
        tree.files -= 1
        activity.record(FILE_DELETED)
    shown = activity.snapshot()
    assert shown["active"] and (shown["percent"], shown["files_tracked"]) == (100.0, 200)


def test_the_kinds_add_up(caplog: pytest.LogCaptureFixture) -> None:
    """Deletions, modifications and renames count together; the warning names the commonest."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    clock = FakeClock()
    activity, _ = monitor(80, clock, percent=20, min_events=21)
    for event in [FILE_DELETED] * 5 + [FILE_MODIFIED] * 12 + [FILE_MOVED] * 4:
        activity.record(event)
    [warning] = records(caplog, logging.WARNING)
    assert (warning.kind, warning.events) == ("modified", 21)  # type: ignore[attr-defined]
    assert activity.counts() == {"deleted": 5, "modified": 12, "moved": 4}


def test_it_ends_with_one_info_line_once_the_window_empties(
        caplog: pytest.LogCaptureFixture) -> None:
    """No events for a window: the next heartbeat's snapshot ends it, with one INFO line."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = FakeClock()
    activity, _ = monitor(100, clock, window_seconds=60, percent=20, min_events=10)
    for _ in range(30):
        activity.record(FILE_MOVED)
    clock.now += 59
    assert activity.snapshot()["active"]
    clock.now += 2
    shown = activity.snapshot()
    assert not shown["active"] and shown["events"] == {"deleted": 0, "modified": 0, "moved": 0}
    activity.snapshot()
    [ended] = records(caplog, logging.INFO)
    assert ended.getMessage() == "unusual activity ended"
    assert len(records(caplog, logging.WARNING)) == 1


def test_a_long_episode_repeats_the_warning_once_per_window(
        caplog: pytest.LogCaptureFixture) -> None:
    """A runaway script renaming for 10 minutes with a 5-minute window: a warning at the
    start and one per window after it, not one per event."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    clock = FakeClock()
    activity, _ = monitor(1000, clock, window_seconds=300, percent=20, min_events=100)
    for _ in range(6000):  # 10 per second for 600 s
        activity.record(FILE_MOVED)
        clock.now += 0.1
    assert activity.active
    assert len(records(caplog, logging.WARNING)) == 2  # the start, then 300 s later


def test_memory_stays_bounded_at_100k_events_a_minute() -> None:
    """100,000 events a minute for 10 minutes keep one bucket per second of the window, and
    the counts are those of the last window_seconds only."""
    clock = FakeClock()
    activity, _ = monitor(10**6, clock, window_seconds=300, percent=20, min_events=100)
    for _ in range(600):  # 600 s at 1,667 events a second
        for _ in range(1667):
            activity.record(FILE_MODIFIED)
        clock.now += 1
    assert len(activity._buckets) <= 301
    assert activity.snapshot()["events"]["modified"] == 300 * 1667  # type: ignore[index]


def test_off_counts_nothing_and_says_so() -> None:
    """`unusual_activity: off`: no counts, never active, the snapshot says it is off."""
    activity = UnusualActivity(None, lambda: 10, clock=FakeClock())
    for _ in range(100):
        activity.record(FILE_DELETED)
    assert activity.snapshot() == {"enabled": False, "active": False}


def test_the_pipeline_counts_the_renames_it_announces(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Renaming every tracked file through the pipeline raises the flag and every rename is
    still announced; the files it discovered at first did not count."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    pipeline, outbox, root = make_pipeline(
        tmp_path, unusual_activity=UnusualActivityConfig(percent=20, min_events=20))
    known_files(pipeline, outbox, root, {f"f{i:03}.txt": f"{i}".encode() for i in range(40)})
    assert not pipeline.unusual_activity.active
    # The window begins between the files' creation and their renames: only the version
    # each rename replaces (created before the window) makes them count, not the new ctime.
    created = max(entry.stat().st_ctime for entry in root.iterdir())
    while time.time() < created + 0.2:
        time.sleep(0.05)
    window = pipeline.unusual_activity.config.window_seconds  # type: ignore[union-attr]
    pipeline.unusual_activity.wall_clock = lambda: created + 0.1 + window
    renames = []
    for i in range(40):
        os.rename(root / f"f{i:03}.txt", root / f"g{i:03}.txt")
        renames.append(RawEvent(EventKind.MOVED, False, f"f{i:03}.txt", f"g{i:03}.txt"))
    bodies = announce(pipeline, outbox, *renames)
    assert sorted(b["event_type"] for b in bodies) == ["file_moved"] * 40
    assert pipeline.unusual_activity.active
    assert len(records(caplog, logging.WARNING)) == 1


def test_only_files_older_than_the_window_count(caplog: pytest.LogCaptureFixture) -> None:
    """A spool its consumer empties (files that arrived a minute ago, deleted) and a log
    rewritten in a loop raise nothing; the same deletions of files there for a day do."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    wall = 1.7e9
    clock = FakeClock()
    tree = Tree(200)
    config = UnusualActivityConfig(window_seconds=300, percent=20, min_events=50)
    activity = UnusualActivity(config, tree, clock=clock, wall_clock=lambda: wall)
    minute_ago, day_ago = int((wall - 60) * 1e9), int((wall - 86400) * 1e9)
    for _ in range(150):
        activity.record(FILE_DELETED, before_ctime_ns=minute_ago)
        activity.record(FILE_MODIFIED, before_ctime_ns=minute_ago)
    assert activity.counts() == {"deleted": 0, "modified": 0, "moved": 0}
    assert not activity.active and not records(caplog, logging.WARNING)
    for _ in range(60):
        activity.record(FILE_DELETED, before_ctime_ns=day_ago)
    assert activity.counts()["deleted"] == 60
    assert activity.active and len(records(caplog, logging.WARNING)) == 1
