"""The roster key max_scan_deletions: the forms users write, what they mean, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from multiwatch.config import load_roster, render_effective
from multiwatch.config.deletions import ScanDeletionBound
from tests.test_config import config_error, write_roster


def _roster(tmp_path: Path, value: str, where: str = "instance") -> str:
    (tmp_path / "music").mkdir(exist_ok=True)
    key = f"max_scan_deletions: {value}"
    return write_roster(tmp_path, f"""
        state_dir: {tmp_path / "state"}
        defaults:
          {key if where == "defaults" else "settle_seconds: 1"}
        instances:
          - id: music
            directory: {tmp_path / "music"}
            {key if where == "instance" else "recursive: true"}
        """)


def _bound(tmp_path: Path, value: str, where: str = "instance") -> ScanDeletionBound | None:
    roster = load_roster(_roster(tmp_path, value, where), {})
    return roster.instances[0].max_scan_deletions


def test_the_default_holds_above_1000_or_half_the_tree(tmp_path: Path) -> None:
    """Not set: a count of 1000 and 50 % of the tracked files, both in force."""
    (tmp_path / "music").mkdir()
    roster = write_roster(tmp_path, f"""
        state_dir: {tmp_path / "state"}
        instances:
          - id: music
            directory: {tmp_path / "music"}
        """)
    assert load_roster(roster, {}).instances[0].max_scan_deletions == ScanDeletionBound(
        count=1000, percent=50.0)


@pytest.mark.parametrize(("value", "expected"), [
    ("{count: 200, percent: 10}", ScanDeletionBound(count=200, percent=10.0)),
    ("{count: 200}", ScanDeletionBound(count=200, percent=None)),
    ("{percent: 25.5}", ScanDeletionBound(count=None, percent=25.5)),
    ("500", ScanDeletionBound(count=500, percent=None)),
    ("0", ScanDeletionBound(count=0, percent=None)),
    ('"50%"', ScanDeletionBound(count=None, percent=50.0)),
    ("'30 %'", ScanDeletionBound(count=None, percent=30.0)),
    ("off", None), ("false", None), ("null", None), ('"none"', None),
    ("on", ScanDeletionBound()),
])
def test_forms(tmp_path: Path, value: str, expected: ScanDeletionBound | None) -> None:
    """A count, a percentage, a mapping (a key left out is off), on (the defaults) or off."""
    assert _bound(tmp_path, value) == expected


def test_works_in_defaults(tmp_path: Path) -> None:
    """Set under defaults:, every instance gets it."""
    assert _bound(tmp_path, "off", where="defaults") is None


def test_check_shows_it(tmp_path: Path) -> None:
    """`multiwatch check` prints the effective bound."""
    text = render_effective(load_roster(_roster(tmp_path, "{count: 7}"), {}))
    assert "max_scan_deletions:\n    count: 7\n    percent: null" in text


@pytest.mark.parametrize(("value", "words"), [
    ("-1", "must be 0 or more"),
    ("1.5", "expected a whole number"),
    ("lots", 'expected a count (1000), a percentage ("50%")'),
    ('"1000 files"', 'or off; got "1000 files"'),
    ('"150%"', "from 0 to 100, got 150"),
    ('"0%"', "must be greater than 0"),
    ("{}", "give count, percent or both"),
    ("{count: 10, percnt: 5}", "percnt"),
    ("[1, 2]", "expected a count"),
])
def test_errors_name_the_key_and_the_forms(tmp_path: Path, value: str, words: str) -> None:
    """Each mistake is one line naming the key and what is expected."""
    message = config_error(_roster(tmp_path, value))
    assert "max_scan_deletions" in message and words in message, message
