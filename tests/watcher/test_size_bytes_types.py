"""`size_bytes`: a decimal string in messages (the guide's contract), an integer in log lines,
and the README says so where each is described."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from multiwatch.watcher.raw_event import EventKind, RawEvent
from tests.deploy.artifacts import REPO
from tests.watcher.test_pipeline import drain, make_pipeline, settle_all


def test_the_log_line_has_an_integer_and_the_message_a_string(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """One announced file: the message's size_bytes is "5", the log line's is 5."""
    pipeline, outbox, root = make_pipeline(tmp_path)
    (root / "a.txt").write_bytes(b"hello")
    caplog.set_level(logging.INFO, logger="multiwatch.watcher.pipeline")
    pipeline.notifications.put(RawEvent(EventKind.CREATED, False, "a.txt"))
    settle_all(pipeline)
    [body] = drain(outbox)
    assert body["file_info"]["size_bytes"] == "5"
    [line] = [r for r in caplog.records if getattr(r, "event_type", None) == "file_discovered"]
    assert line.__dict__["size_bytes"] == 5  # an extra field: the JSON line's value


def test_the_readme_says_which_type_each_has() -> None:
    """The Logs section and the message field table both state the difference and why."""
    readme = (REPO / "README.md").read_text()
    logs = readme.split("\n## Logs\n")[1].split("\n## ")[0]
    assert re.search(r"`size_bytes`[^.]*an integer", logs), logs
    assert "decimal string" in logs
    row = next(line for line in readme.splitlines() if line.startswith("| `file_info.size_bytes`"))
    assert "integer in log lines" in row
