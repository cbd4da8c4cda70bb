"""`multiwatch run` when the kernel refuses inotify: each watcher says so in one line and
polls, every file is still announced (through the embedded spool), /status says how.

The run is in a user namespace of its own whose `user.max_inotify_*` are lowered there
only (see tests/watcher/test_inotify_limits.py): nothing else on the machine is affected.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests.integration.test_operator import _status
from tests.support.consumer import wait_for
from tests.support.process import Multiwatch, free_port, run_cli, write_roster
from tests.watcher.test_inotify_limits import in_a_user_namespace


def _run_limited(limits: dict[str, int], roster: Path) -> Multiwatch:
    lowered = "; ".join(f"echo {value} > /proc/sys/user/max_inotify_{kind}"
                        for kind, value in limits.items())
    return Multiwatch(["-c", str(roster)], program=[
        "unshare", "--user", "--map-root-user", "sh", "-c", f'{lowered}; exec "$@"', "sh",
        sys.executable, "-m", "multiwatch"])


def _roster(tmp_path: Path, port: int, ids: list[str]) -> Path:
    for name in ids:
        (tmp_path / name).mkdir()
    return write_roster(tmp_path / "roster.yaml", {
        "state_dir": str(tmp_path / "state"),
        "http": {"listen": f"127.0.0.1:{port}"},
        "defaults": {"settle_seconds": 0.1, "polling_interval_seconds": 0.2},
        "instances": [{"id": name, "directory": str(tmp_path / name)} for name in ids],
    })


def _observer(port: int, instance_id: str) -> str:
    heartbeat: dict[str, Any] = _status(port).get("instances", {}).get(
        instance_id, {}).get("heartbeat") or {}
    return str(heartbeat.get("observer", ""))


def _announced(roster: Path, count: int) -> set[str]:
    tail = run_cli("tail", "-c", str(roster), "--count", str(count), "--timeout", "30")
    assert tail.returncode == 0, tail.stderr
    return {json.loads(line)["file_info"]["path"] for line in tail.stdout.splitlines()}


def _refusals(mw: Multiwatch) -> list[dict[str, Any]]:
    return [line for line in mw.lines if line.get("level") == "WARNING"
            and str(line.get("message", "")).startswith("inotify refused")]


@in_a_user_namespace
def test_no_inotify_instance_left_each_watcher_polls_and_announces(tmp_path: Path) -> None:
    """user.max_inotify_instances=1 and two watchers: one gets inotify, the other says
    in one line that the limit needs 2 and polls; a file in each is announced."""
    port = free_port()
    roster = _roster(tmp_path, port, ["one", "two"])
    mw = _run_limited({"instances": 1}, roster)
    try:
        for name in ("one", "two"):
            mw.wait_watching(name)
        refused = mw.wait_for_log(lambda line: line in _refusals(mw), timeout=30)
        assert "user.max_inotify_instances=1 reached" in refused["message"]
        assert "needs user.max_inotify_instances >= 2" in refused["message"]
        polls, other = (("one", "two") if refused["instance_id"] == "one" else ("two", "one"))
        wait_for(lambda: _observer(port, polls) == "polling (inotify limit)", timeout=30,
                 message="/status does not say the watcher polls")
        assert _observer(port, other) == "inotify"
        for name in ("one", "two"):
            (tmp_path / name / "hello.txt").write_bytes(name.encode())

        announced = _announced(roster, 2)

        assert {Path(p).parent.name for p in announced} == {"one", "two"}
        assert len(_refusals(mw)) == 1
        assert mw.terminate() == 0
    finally:
        mw.cleanup()


@in_a_user_namespace
def test_out_of_watches_the_watcher_polls_and_announces_files_in_every_directory(
        tmp_path: Path) -> None:
    """user.max_inotify_watches=8 and a tree of 40 directories holding a file each: one
    line names the limit and the 41 directories, every file is announced once, and so is
    one written afterwards in a new directory."""
    port = free_port()
    roster = _roster(tmp_path, port, ["tree"])
    for n in range(40):
        (tmp_path / "tree" / f"d{n:02d}").mkdir()
        (tmp_path / "tree" / f"d{n:02d}" / "f.txt").write_bytes(b"%d" % n)
    mw = _run_limited({"watches": 8}, roster)
    try:
        mw.wait_watching("tree")
        refused = mw.wait_for_log(lambda line: line in _refusals(mw), timeout=30)
        assert "user.max_inotify_watches=8 reached (this tree has 41 directories" \
            in refused["message"]
        wait_for(lambda: _observer(port, "tree") == "polling (inotify limit)", timeout=30,
                 message="/status does not say the watcher polls")
        (tmp_path / "tree" / "new").mkdir()
        (tmp_path / "tree" / "new" / "late.txt").write_bytes(b"late")

        announced = _announced(roster, 41)

        assert len(announced) == 41
        assert any(p.endswith("new/late.txt") for p in announced)
        assert len(_refusals(mw)) == 1
        assert mw.terminate() == 0
    finally:
        mw.cleanup()
