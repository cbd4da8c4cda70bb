""""Why wasn't my file announced?": a file a filter skips is logged at DEBUG with the reason."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from multiwatch.watcher.filters import PathFilter
from multiwatch.watcher.raw_event import EventKind, RawEvent
from tests.watcher.test_pipeline import make_pipeline, settle_all

PIPELINE_LOGGER = "multiwatch.watcher.pipeline"


def skipped(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(getattr(r, "path", ""), getattr(r, "reason", "")) for r in caplog.records
            if r.getMessage() == "file skipped by a filter"]


@pytest.mark.parametrize(("options", "relative", "reason"), [
    ({"exclude": ["*.part", "*.tmp"]}, "song.tmp", "excluded by pattern '*.tmp'"),
    ({"exclude": [".*"]}, ".cache/x.mp3", "excluded by pattern '.*'"),
    ({"exclude": ["incoming/*.mp3"]}, "incoming/a.mp3", "excluded by pattern 'incoming/*.mp3'"),
    ({"include": ["*.mp3", "*.flac"]}, "cover.jpg",
     "matches no include pattern ('*.mp3', '*.flac')"),
    ({"recursive": False}, "sub/a.mp3", "in a subdirectory, and recursive is false"),
])
def test_a_filtered_file_is_logged_at_debug_with_the_pattern(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, options: dict[str, object],
        relative: str, reason: str) -> None:
    """At DEBUG, each skipped file's notification logs its path and the rule that skipped it."""
    pipeline, _, root = make_pipeline(tmp_path, **options)
    (root / relative).parent.mkdir(parents=True, exist_ok=True)
    (root / relative).write_bytes(b"x")
    caplog.set_level(logging.DEBUG, logger=PIPELINE_LOGGER)
    pipeline.notifications.put(RawEvent(EventKind.CREATED, False, relative))
    settle_all(pipeline)
    assert skipped(caplog) == [(str(root / relative), reason)]


def test_nothing_is_worked_out_for_the_trace_above_debug(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """At INFO no line is logged and the reason is never even computed (a hot path)."""
    pipeline, _, root = make_pipeline(tmp_path, exclude=["*.tmp"])
    (root / "a.tmp").write_bytes(b"x")

    def forbidden(self: PathFilter, relative_path: str) -> str:
        raise AssertionError("reason computed with DEBUG off")

    monkeypatch.setattr(PathFilter, "why_unwanted", forbidden)
    caplog.set_level(logging.INFO, logger=PIPELINE_LOGGER)
    pipeline.notifications.put(RawEvent(EventKind.CREATED, False, "a.tmp"))
    settle_all(pipeline)
    assert skipped(caplog) == []
