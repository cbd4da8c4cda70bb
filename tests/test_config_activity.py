"""The roster key `unusual_activity`: its defaults, its figures, `off`, and its mistakes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from multiwatch.config import load_roster, render_effective
from multiwatch.config.activity import UnusualActivityConfig
from tests.test_config import config_error, write_roster

ENV = {"MULTIWATCH_STATE_DIR": "/tmp/multiwatch-test-state-unused"}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Two watchable directories, music and books, under tmp_path."""
    for name in ("music", "books"):
        (tmp_path / name).mkdir()
    return tmp_path


def test_unusual_activity_is_on_by_default(tree: Path) -> None:
    """A roster that says nothing gets the documented 300 s / 20 % / 100 events signal."""
    path = write_roster(tree, "instances: [{id: music, directory: music}]\n")
    instance = load_roster(path, ENV).instances[0]
    assert instance.unusual_activity == UnusualActivityConfig(300.0, 20.0, 100)


def test_figures_from_defaults_and_per_instance(tree: Path) -> None:
    """`defaults:` sets the figures for all; an instance's own mapping (or off) wins, and a
    figure the mapping leaves out is the built-in one."""
    path = write_roster(tree, """
        defaults:
          unusual_activity: {window_seconds: 60, percent: 5, min_events: 10}
        instances:
          - {id: music, directory: music}
          - id: books
            directory: books
            unusual_activity: {percent: 50}
        """)
    music, books = load_roster(path, ENV).instances
    assert music.unusual_activity == UnusualActivityConfig(60.0, 5.0, 10)
    assert books.unusual_activity == UnusualActivityConfig(300.0, 50.0, 100)


@pytest.mark.parametrize("written", ["off", "false", "null", "'no'", "disabled"])
def test_off_turns_the_signal_off(tree: Path, written: str) -> None:
    """`unusual_activity: off` (or false, null) means no counting and no signal."""
    path = write_roster(tree, f"""
        instances:
          - {{id: music, directory: music, unusual_activity: {written}}}
        """)
    assert load_roster(path, ENV).instances[0].unusual_activity is None


def test_on_means_the_defaults(tree: Path) -> None:
    """`unusual_activity: on` after a `defaults: off` brings back the built-in figures."""
    path = write_roster(tree, """
        defaults: {unusual_activity: off}
        instances:
          - {id: music, directory: music, unusual_activity: on}
        """)
    assert load_roster(path, ENV).instances[0].unusual_activity == UnusualActivityConfig()


@pytest.mark.parametrize(("written", "said"), [
    ("{percent: 0}", "unusual_activity.percent: must be greater than 0, got 0"),
    ("{percent: lots}", "unusual_activity.percent: expected a number"),
    ("{window_seconds: 0.5}", "unusual_activity.window_seconds: must be from 1 to 86400"),
    ("{window_seconds: 100000}", "unusual_activity.window_seconds: must be from 1 to 86400"),
    ("{min_events: 2.5}", "unusual_activity.min_events: expected a whole number"),
    ("{min_events: -1}", "unusual_activity.min_events: must be 0 or more"),
    ("{precent: 5}", 'unknown key "precent"; did you mean "percent"?'),
    ("sometimes", "unusual_activity: expected off, on, or a mapping with window_seconds, "
                  "percent, min_events"),
    ("[1, 2]", "unusual_activity: expected off, on, or a mapping"),
])
def test_mistakes_name_the_key_and_the_line(tree: Path, written: str, said: str) -> None:
    """A wrong figure is one clear line naming the file, line and sub-key."""
    path = write_roster(tree, f"""
        instances:
          - id: music
            directory: music
            unusual_activity: {written}
        """)
    message = config_error(path, ENV)
    assert message.startswith(f"{path}:4: instances[0].") and said in message


def test_check_shows_the_effective_figures(tree: Path) -> None:
    """`multiwatch check` prints the figures each instance runs with, and off as null."""
    path = write_roster(tree, """
        instances:
          - {id: music, directory: music, unusual_activity: {percent: 7.5}}
          - {id: books, directory: books, unusual_activity: off}
        """)
    shown = yaml.safe_load(render_effective(load_roster(path, ENV)))["instances"]
    assert shown[0]["unusual_activity"] == {"window_seconds": 300.0, "percent": 7.5,
                                            "min_events": 100}
    assert shown[1]["unusual_activity"] is None
