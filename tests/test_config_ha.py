"""The roster key `ha` (replicas): the top-level section, `defaults:` and an instance's own,
`on`/`off`, MULTIWATCH_HA, and its mistakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from multiwatch.config import load_roster
from multiwatch.config.ha import HaConfig
from tests.test_config import config_error, write_roster

ENV = {"MULTIWATCH_STATE_DIR": "/tmp/multiwatch-test-state-unused"}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Three watchable directories under tmp_path."""
    for name in ("music", "books", "films"):
        (tmp_path / name).mkdir()
    return tmp_path


def test_ha_is_off_by_default(tree: Path) -> None:
    """A roster that says nothing runs each instance alone."""
    path = write_roster(tree, "instances: [{id: music, directory: music}]\n")
    roster = load_roster(path, ENV)
    assert roster.ha == roster.instances[0].ha == HaConfig(enabled=False, lease_retry_seconds=2)


def test_the_top_level_section_is_every_instance_default(tree: Path) -> None:
    """Top-level `ha` < `defaults:` < the instance's own; `on` and `off` stand for enabled
    with the built-in figures and disabled."""
    path = write_roster(tree, """
        ha: {enabled: true, lease_retry_seconds: 5}
        instances:
          - {id: music, directory: music}
          - {id: books, directory: books, ha: off}
          - {id: films, directory: films, ha: on}
    """)
    music, books, films = load_roster(path, ENV).instances
    assert music.ha == HaConfig(enabled=True, lease_retry_seconds=5)
    assert books.ha == HaConfig(enabled=False)
    assert films.ha == HaConfig(enabled=True, lease_retry_seconds=2)
    path = write_roster(tree, """
        ha: {enabled: true}
        defaults: {ha: {enabled: false}}
        instances: [{id: music, directory: music}]
    """)
    assert not load_roster(path, ENV).instances[0].ha.enabled


def test_multiwatch_ha_enables_it_without_a_roster_or_a_section(tree: Path) -> None:
    """Environment mode (the deployment guide's one directory) and a roster without `ha`."""
    roster = load_roster(None, {**ENV, "DATA_DIR": str(tree / "music"), "MULTIWATCH_HA": "1"})
    assert roster.instances[0].ha.enabled
    path = write_roster(tree, "instances: [{id: music, directory: music}]\n")
    assert load_roster(path, {**ENV, "MULTIWATCH_HA": "1"}).instances[0].ha.enabled
    path = write_roster(tree, "ha: off\ninstances: [{id: music, directory: music}]\n")
    assert not load_roster(path, {**ENV, "MULTIWATCH_HA": "1"}).instances[0].ha.enabled


@pytest.mark.parametrize(("value", "words"), [
    ("{enabled: true, lease_retry_seconds: 0}", "lease_retry_seconds"),
    ("{enabled: maybe}", "ha.enabled"),
    ("{enable: true}", "enable"),
    ("sometimes", "expected on, off, or a mapping"),
])
def test_mistakes_name_the_key(tree: Path, value: str, words: str) -> None:
    """A bad value or key in `ha` is an error naming it, with its line."""
    path = write_roster(tree, f"ha: {value}\ninstances: [{{id: music, directory: music}}]\n")
    message = config_error(path, ENV)
    assert words in message and ":1:" in message
