"""Logs are JSON lines with timestamp, level, instance_id and message, third-party ones too."""

from __future__ import annotations

import json
import logging

import pytest

from multiwatch.logs import setup_logging


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
