"""Roster keys read_rate_limit, nice and ionice: what users write, get, and are told."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from multiwatch.config import ConfigError, InstanceConfig, load_roster, render_effective


def roster_with(tmp_path: Path, settings: str, *, defaults: str = "") -> str:
    """A one-instance roster whose instance has `settings` (YAML lines) on line 6 onward."""
    (tmp_path / "data").mkdir(exist_ok=True)
    path = tmp_path / "roster.yaml"
    path.write_text(textwrap.dedent("""\
        state_dir: state
        defaults: {%s}
        instances:
          - id: nas
            directory: data
        """) % defaults + textwrap.indent(textwrap.dedent(settings), "    "))
    return str(path)


def instance(tmp_path: Path, settings: str, **kwargs: str) -> InstanceConfig:
    return load_roster(roster_with(tmp_path, settings, **kwargs), {}).instances[0]


def error(tmp_path: Path, settings: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_roster(roster_with(tmp_path, settings), {})
    return str(info.value)


def test_unset_limits_change_nothing(tmp_path: Path) -> None:
    """Without the keys a watcher reads at full speed and inherits nice and I/O class."""
    got = instance(tmp_path, "")
    assert (got.read_rate_limit, got.nice, got.ionice) == (0, None, None)


@pytest.mark.parametrize(("written", "rate"), [
    ("50MiB", 50 * 2**20), ("50MiB/s", 50 * 2**20), ("1.5G/s", 1_500_000_000),
    ("800k", 800_000), ("1048576", 2**20), ("0", 0), ("'100 MB/s'", 100_000_000),
])
def test_read_rate_limit_takes_sizes_per_second(tmp_path: Path, written: str, rate: int) -> None:
    """read_rate_limit reads like memory_limit (512MiB, 1G...), optionally ending in /s."""
    assert instance(tmp_path, f"read_rate_limit: {written}\n").read_rate_limit == rate


@pytest.mark.parametrize(("written", "nice", "ionice"), [
    ("nice: 10\nionice: idle", 10, "idle"),
    ("nice: -20\nionice: best-effort:7", -20, "best-effort:7"),
    ("nice: '19'\nionice: Best-Effort", 19, "best-effort"),
    ("nice: 0\nionice: 'realtime: 0'", 0, "realtime:0"),
    ("nice: null\nionice: best_effort:3", None, "best-effort:3"),
])
def test_nice_and_ionice(tmp_path: Path, written: str, nice: int | None,
                         ionice: str | None) -> None:
    """nice is -20..19; ionice a class, optionally with a level 0-7, kept normalised."""
    got = instance(tmp_path, written + "\n")
    assert (got.nice, got.ionice) == (nice, ionice)


def test_limits_work_in_defaults_and_check_prints_them(tmp_path: Path) -> None:
    """Set in `defaults`, the limits reach the instance, and `check` shows them."""
    path = roster_with(tmp_path, "", defaults="read_rate_limit: 4MiB, nice: 5, ionice: idle")
    roster = load_roster(path, {})
    assert roster.instances[0].read_rate_limit == 4 * 2**20
    printed = render_effective(roster)
    assert "read_rate_limit: 4194304" in printed
    assert "nice: 5" in printed and "ionice: idle" in printed


@pytest.mark.parametrize(("written", "words"), [
    ("nice: 30", "instances[0].nice: expected a whole number from -20 to 19"),
    ("nice: -21", "instances[0].nice: expected a whole number from -20 to 19"),
    ("nice: 2.5", "instances[0].nice: expected a whole number from -20 to 19"),
    ("nice: low", 'got "low"'),
    ("nice: true", "instances[0].nice: expected a whole number"),
    ("ionice: fast", 'instances[0].ionice: unknown I/O class "fast"; use idle, best-effort or '
                     "realtime"),
    ("ionice: best-effort:8", 'instances[0].ionice: "best-effort:8": the level must be 0-7'),
    ("ionice: idle:3", 'instances[0].ionice: "idle:3": idle takes no level'),
    ("ionice: [idle]", "instances[0].ionice: expected a single value"),
    ("read_rate_limit: fast", "instances[0].read_rate_limit: expected a size"),
    ("read_rate_limit: -5MiB", "instances[0].read_rate_limit: expected a size"),
    ("read_rate_limit: 5MiB/h", "instances[0].read_rate_limit: expected a size"),
])
def test_bad_values_are_named(tmp_path: Path, written: str, words: str) -> None:
    """A wrong value is one line naming the file, its line, the key and what is allowed."""
    message = error(tmp_path, written + "\n")
    assert message.startswith(f"{tmp_path / 'roster.yaml'}:6: ")
    assert words in message
    assert "\n" not in message
