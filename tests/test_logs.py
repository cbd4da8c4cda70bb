"""Logs are JSON lines with timestamp, level, instance_id and message, third-party ones too."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading

import pytest

from multiwatch.logs import lines_written_together, setup_logging


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_own_and_third_party_records_are_json_with_instance_id(capsys, restore_logging) -> None:
    """multiwatch's and kombu's records both come out as JSON tagged with the instance."""
    setup_logging("INFO", "watcher-music")
    logging.getLogger("multiwatch.test").info("file discovered", extra={"path": "/data/a.mp3"})
    logging.getLogger("kombu.connection").warning("broker hiccup")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["message"] for line in lines] == ["file discovered", "broker hiccup"]
    for line in lines:
        assert line["instance_id"] == "watcher-music"
        assert line["timestamp"].endswith("Z")
    assert lines[0]["path"] == "/data/a.mp3"
    assert lines[1]["level"] == "WARNING"


def test_log_level_filters_lower_levels(capsys, restore_logging) -> None:
    """LOG_LEVEL=WARNING hides INFO lines."""
    setup_logging("WARNING", "supervisor")
    logging.getLogger("multiwatch.test").info("chatty")
    logging.getLogger("multiwatch.test").error("important")
    messages = [json.loads(line)["message"] for line in capsys.readouterr().out.splitlines()]
    assert messages == ["important"]


def test_undecodable_path_does_not_break_a_log_line(capsys, restore_logging) -> None:
    """A non-UTF-8 file name (surrogate escapes) still yields one valid JSON line."""
    setup_logging("INFO", "w")
    logging.getLogger("multiwatch.test").info("seen", extra={"path": b"caf\xe9".decode(
        "utf-8", "surrogateescape")})
    [line] = capsys.readouterr().out.splitlines()
    assert json.loads(line)["path"] == "caf\udce9"


class _CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_lines_written_together_come_out_in_one_write_in_order(
        monkeypatch: pytest.MonkeyPatch, restore_logging) -> None:
    """A burst's per-file lines (and a line from another thread meanwhile) reach stdout in
    one write, in order; after the block, lines are written one by one again."""
    stream = _CountingStream()
    monkeypatch.setattr(sys, "stdout", stream)
    setup_logging("INFO", "watcher-music")
    log = logging.getLogger("multiwatch.test")

    with lines_written_together():
        for index in range(50):
            log.info("file discovered", extra={"index": index})
        other = threading.Thread(target=lambda: log.warning("from the publisher"))
        other.start()
        other.join()
        assert stream.writes == 0, "lines were written before the block ended"
    assert stream.writes == 1
    log.info("after")

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line.get("index") for line in lines[:50]] == list(range(50))
    assert [line["message"] for line in lines[50:]] == ["from the publisher", "after"]
    assert stream.writes == 2


def test_lines_held_are_written_when_the_block_raises(
        monkeypatch: pytest.MonkeyPatch, restore_logging) -> None:
    stream = _CountingStream()
    monkeypatch.setattr(sys, "stdout", stream)
    setup_logging("INFO", "watcher-music")

    with pytest.raises(RuntimeError), lines_written_together():
        logging.getLogger("multiwatch.test").info("recorded before the failure")
        raise RuntimeError("commit failed")

    assert [json.loads(line)["message"] for line in stream.getvalue().splitlines()] == [
        "recorded before the failure"]


def test_warnings_are_counted_at_log_level_error_though_not_printed(
        capsys, restore_logging) -> None:
    """At log_level ERROR a warning is not printed, yet the errors count still sees it: what
    the instance reports as problems does not depend on the log level."""
    from multiwatch.watcher.stats import ProblemCounter

    setup_logging("ERROR", "watcher-music")
    problems = ProblemCounter()
    logging.getLogger().addHandler(problems)
    try:
        logging.getLogger("multiwatch.watcher.pipeline").warning("cannot read file")
        logging.getLogger("kombu.connection").warning("broker hiccup")  # third-party too
        logging.getLogger("multiwatch.watcher.pipeline").info("file discovered")
    finally:
        logging.getLogger().removeHandler(problems)
    assert problems.count == 2
    assert capsys.readouterr().out == ""
