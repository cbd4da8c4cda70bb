"""The settle table: per-path quiet periods, ordered deadlines, lazy removal of stale entries."""

from __future__ import annotations

from multiwatch.watcher.hashing import FileVersion
from multiwatch.watcher.settle import SettleTable

V1 = FileVersion(size=1, mtime_ns=10, inode=100)
V2 = FileVersion(size=2, mtime_ns=20, inode=100)


def test_path_is_not_due_before_its_quiet_period_ends() -> None:
    """A touched path is handed on only once settle_seconds have passed."""
    table = SettleTable(1.0)
    table.touch("a", now=0.0)
    assert table.pop_due(0.99, limit=10) == []
    assert table.pop_due(1.0, limit=10) == [("a", None)]
    assert "a" not in table and len(table) == 0


def test_touch_pushes_the_deadline() -> None:
    """Each new event for a path restarts its quiet period."""
    table = SettleTable(1.0)
    table.touch("a", now=0.0)
    table.touch("a", now=0.5)
    assert table.pop_due(1.2, limit=10) == []
    assert table.pop_due(1.5, limit=10) == [("a", None)]
    assert table.pop_due(10.0, limit=10) == []  # handed on once, not once per touch


def test_pop_due_is_earliest_first_and_respects_limit() -> None:
    """At most `limit` paths come out per call, in deadline order; the rest wait for the next."""
    table = SettleTable(1.0)
    table.touch("c", now=0.2)
    table.touch("a", now=0.0)
    table.touch("b", now=0.1)
    assert [p for p, _ in table.pop_due(5.0, limit=2)] == ["a", "b"]
    assert len(table) == 1
    assert [p for p, _ in table.pop_due(5.0, limit=2)] == ["c"]


def test_pop_due_returns_last_version_seen() -> None:
    """A version given by a scan survives later event touches and is replaced by a newer one."""
    table = SettleTable(1.0)
    table.touch("a", now=0.0, seen=V1)
    table.touch("a", now=0.1)  # a notification carries no version: keep V1
    assert table.pop_due(2.0, limit=10) == [("a", V1)]
    table.touch("b", now=0.0, seen=V1)
    table.touch("b", now=0.1, seen=V2)
    assert table.pop_due(2.0, limit=10) == [("b", V2)]


def test_discard_forgets_a_waiting_path() -> None:
    """A discarded path never comes out, and discard says whether it was waiting."""
    table = SettleTable(1.0)
    table.touch("a", now=0.0, seen=V1)
    assert table.discard("a") is True
    assert table.discard("a") is False
    assert table.discard("never") is False
    assert "a" not in table
    assert table.pop_due(5.0, limit=10) == []
    table.touch("a", now=3.0)  # a fresh touch after discard starts without the old version
    assert table.pop_due(5.0, limit=10) == [("a", None)]


def test_under_lists_waiting_paths_inside_a_directory() -> None:
    """under("d") lists paths at any depth below d, not d itself nor look-alike siblings."""
    table = SettleTable(1.0)
    for path in ["d/a", "d/e/b", "d2/c", "d", "x/d/y"]:
        table.touch(path, now=0.0)
    assert sorted(table.under("d")) == ["d/a", "d/e/b"]
    assert table.under("nothing") == []


def test_next_due_skips_stale_entries() -> None:
    """next_due reports the earliest live deadline, ignoring re-touched and discarded paths."""
    table = SettleTable(1.0)
    assert table.next_due() is None
    table.touch("a", now=0.0)
    table.touch("b", now=0.2)
    table.touch("a", now=0.5)  # a's first deadline (1.0) is now stale
    assert table.next_due() == 1.2
    table.discard("b")
    assert table.next_due() == 1.5
    table.discard("a")
    assert table.next_due() is None
