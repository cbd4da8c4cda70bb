"""`multiwatch run` spawns its first watcher before it reads the roster, and hands that
process the first instance; nothing is left behind when the roster turns out invalid."""

from __future__ import annotations

import multiprocessing
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from multiwatch.cli import main
from tests.support.process import Multiwatch, write_roster


def test_the_first_instance_runs_in_the_process_spawned_before_the_roster_was_read(
        tmp_path: Path) -> None:
    """The first instance's watcher is the process started ahead of the roster, the
    second is spawned as usual, and both announce what lands in their directories."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    roster = write_roster(tmp_path / "roster.yaml", {
        "state_dir": str(tmp_path / "state"),
        "defaults": {"settle_seconds": 0.1},
        "instances": [{"id": "first", "directory": str(tmp_path / "a")},
                      {"id": "second", "directory": str(tmp_path / "b")}],
    })
    mw = Multiwatch(["-c", str(roster)])
    try:
        mw.wait_watching("first")
        mw.wait_watching("second")
        started = {line["instance_id"]: line for line in mw.lines
                   if line.get("message") == "child started"}
        assert started["first"]["prestarted"] is True
        assert started["second"]["prestarted"] is False
        watching = {line["pid"] for line in mw.lines if line.get("message") == "watching"}
        assert watching == {started["first"]["pid"], started["second"]["pid"]}
        assert watching <= set(mw.child_pids())  # both the supervisor's own children
        for instance, name in (("first", "a"), ("second", "b")):
            (tmp_path / name / f"{name}.txt").write_text(name)
            mw.wait_for_log(partial(_discovered_by, instance))
        assert mw.terminate() == 0
    finally:
        mw.cleanup()


def _discovered_by(instance_id: str, line: dict[str, Any]) -> bool:
    return line.get("message") == "file discovered" and line.get("instance_id") == instance_id


def test_an_invalid_roster_leaves_no_watcher_process_behind(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The process spawned ahead of the roster is stopped when the roster is rejected:
    the command exits 2 with the reason, and no watcher process of ours is left."""
    roster = tmp_path / "roster.yaml"
    roster.write_text("instances:\n  - {id: x}\n")  # no directory
    assert main(["run", "-c", str(roster)]) == 2
    assert "directory" in capsys.readouterr().err
    assert multiprocessing.active_children() == []
