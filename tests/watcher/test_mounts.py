"""Mount awareness: what filesystem a watched root lives on, and what the state remembers."""

from __future__ import annotations

from pathlib import Path

from multiwatch.watcher.state import StateStore


def test_meta_value_survives_reopening_the_state(tmp_path: Path) -> None:
    """A value kept in the state database (the mount seen at start) is there after a restart."""
    path = str(tmp_path / "state.db")
    store = StateStore(path)
    assert store.meta("mount") is None
    store.set_meta("mount", '{"mount_point": "/srv/share"}')
    store.set_meta("mount", '{"mount_point": "/srv/other"}')
    store.close()
    again = StateStore(path)
    assert again.meta("mount") == '{"mount_point": "/srv/other"}'
    again.close()
