"""`multiwatch check` warns when the roster needs more inotify instances or watches than the
kernel's limits leave this user (cli/inotify_check.py): one line each, naming the sysctl,
the value needed and the command; exit status 0 (a refused watcher polls instead)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from multiwatch.cli import inotify_check
from multiwatch.config import load_roster
from tests.support.process import write_roster
from tests.watcher.test_inotify_limits import (
    _fake_proc,
    _fake_sys,
    in_a_user_namespace,
    in_namespace,
)


def _roster(tmp_path: Path, ids: list[str], **instance: Any) -> Path:
    """A roster watching tmp_path/ID for each id (created)."""
    for name in ids:
        (tmp_path / name).mkdir(exist_ok=True)
    return write_roster(tmp_path / "roster.yaml", {
        "state_dir": str(tmp_path / "state"),
        "instances": [{"id": name, "directory": str(tmp_path / name), **instance}
                      for name in ids],
    })


def _check(tmp_path: Path, roster: Path, proc: Path | None = None,
           **limits: int) -> inotify_check.InotifyFindings:
    proc = proc or tmp_path / "no-processes"
    proc.mkdir(exist_ok=True)
    return inotify_check.check_inotify(load_roster(str(roster), {}), proc=str(proc),
                                       proc_sys=str(_fake_sys(tmp_path, **limits)))


def test_more_directories_than_watches_is_one_warning_naming_the_sysctl(tmp_path: Path) -> None:
    """Two trees of 21 and 1 directories against fs.inotify.max_user_watches=10: one line
    with the count, the limit, the value needed and the command that raises it."""
    roster = _roster(tmp_path, ["a", "b"])
    for n in range(20):
        (tmp_path / "a" / f"d{n}").mkdir()
    found = _check(tmp_path, roster, max_user_instances=128, max_user_watches=10)
    [warning] = found.warnings
    assert "hold 22 directories" in warning
    assert "fs.inotify.max_user_watches=10 is too low (needs >= 22;" in warning
    assert "sysctl -w fs.inotify.max_user_watches=65536" in warning


def test_more_instances_than_the_limit_leaves_counts_what_others_hold(tmp_path: Path) -> None:
    """Three instances, another program holding one inotify instance, the limit 3: needs 4.
    A running multiwatch's own watchers of this roster are not counted twice."""
    roster = _roster(tmp_path, ["a", "b", "c"])
    proc = _fake_proc(tmp_path, {200: (1, [1]), 201: (1, [4]), 202: (1, [4])})
    (proc / "201" / "cmdline").write_bytes(b"multiwatch: watcher a\0")
    (proc / "202" / "cmdline").write_bytes(b"multiwatch: watcher b\0")
    found = _check(tmp_path, roster, proc, max_user_instances=3, max_user_watches=8192)
    [warning] = found.warnings
    assert warning.startswith("inotify: 3 instances use inotify, one inotify instance each, "
                              "and this user's other processes hold 1: "
                              "fs.inotify.max_user_instances=3 is too low (needs >= 4;")
    assert "sysctl -w fs.inotify.max_user_instances=128" in warning


def test_a_roster_that_fits_has_a_summary_and_polling_instances_need_nothing(
        tmp_path: Path) -> None:
    """Within the limits: no warning, a summary line; observer: polling needs no inotify."""
    found = _check(tmp_path, _roster(tmp_path, ["a"]), max_user_instances=1,
                   max_user_watches=1)
    assert found.warnings == [] and "inotify: 1 instances" in found.summary
    polled = _check(tmp_path, _roster(tmp_path, ["a", "b"], observer="polling"),
                    max_user_instances=0, max_user_watches=0)
    assert polled.warnings == [] and polled.summary == ""


def test_a_huge_tree_is_counted_within_the_budget(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """With no time left the count stops at once and the warning says so."""
    monkeypatch.setattr(inotify_check, "COUNT_BUDGET_SECONDS", 0.0)
    roster = _roster(tmp_path, ["a"])
    (tmp_path / "a" / "sub").mkdir()
    found = _check(tmp_path, roster, max_user_instances=128, max_user_watches=0)
    assert "0+ directories (counting stopped after 0s)" in found.summary, found


@in_a_user_namespace
def test_check_warns_on_the_real_limits_and_still_exits_0(tmp_path: Path) -> None:
    """The command itself, in a user namespace with 2 inotify instances and 5 watches: two
    warnings on stderr naming user.max_inotify_*, the configuration on stdout, exit 0."""
    roster = _roster(tmp_path, ["a", "b", "c"])
    for n in range(10):
        (tmp_path / "a" / f"d{n}").mkdir()
    done = in_namespace({"instances": 2, "watches": 5},
                        "from multiwatch.cli import main; raise SystemExit(main())",
                        "check", "-c", str(roster))
    assert done.returncode == 0, done.stderr
    assert "instances:" in done.stdout
    instances, watches = done.stderr.splitlines()
    assert instances.startswith("multiwatch: warning: inotify: 3 instances use inotify")
    assert "user.max_inotify_instances=2 is too low (needs >= 3;" in instances
    assert "13 directories" in watches and "user.max_inotify_watches=5 is too low" in watches


@in_a_user_namespace
def test_check_connect_counts_an_inotify_shortfall_as_a_problem(tmp_path: Path) -> None:
    """`check --connect` (will run work as configured?) reports each inotify shortfall as a
    problem line and exits 2, where plain check only warns; no 'everything answered'."""
    roster = _roster(tmp_path, ["a", "b", "c"])
    done = in_namespace({"instances": 2},
                        "from multiwatch.cli import main; raise SystemExit(main())",
                        "check", "--connect", "-c", str(roster))
    assert done.returncode == 2, done.stderr
    [problem] = done.stderr.splitlines()
    assert problem.startswith("multiwatch: problem: inotify: 3 instances use inotify"), problem
    assert "user.max_inotify_instances=2 is too low" in problem
    assert "everything run needs answered" not in done.stdout
