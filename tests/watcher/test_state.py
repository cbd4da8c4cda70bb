"""The state database: schema versions, atomic records, faithful paths, ordered outbox."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from multiwatch.watcher.hashing import FileVersion, Hashed
from multiwatch.watcher.message import Event
from multiwatch.watcher.state import (
    SCHEMA_VERSION,
    DurableOutbox,
    StateError,
    StateStore,
    connect,
    iter_files,
    state_db_path,
)

HASHED = Hashed(FileVersion(size=3, mtime_ns=10, inode=7), "a" * 64, "b" * 32, ctime_ns=11)


def _event(n: int) -> Event:
    return Event("i", "file_discovered", "file.discovered", f"m{n}", f"c{n}", b'{"n": %d}' % n)


def test_new_database_is_created_at_current_schema_in_wal_mode(tmp_path: Path) -> None:
    """A fresh state dir gets a WAL database at the current schema version."""
    path = state_db_path(str(tmp_path), "music")
    StateStore(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_database_from_a_newer_version_is_refused_clearly(tmp_path: Path) -> None:
    """State written by a newer multiwatch is not silently misread."""
    path = str(tmp_path / "state.db")
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StateError, match="schema version"):
        StateStore(path)


def test_older_database_is_migrated_in_place(tmp_path: Path) -> None:
    """A database at schema 0 (created but never migrated) is upgraded on open."""
    path = str(tmp_path / "state.db")
    sqlite3.connect(path).close()
    store = StateStore(path)
    store.commit({"a.mp3": HASHED}, [])
    assert store.load_tracked() == {"a.mp3": HASHED}


def test_files_and_events_are_recorded_together_or_not_at_all(tmp_path: Path) -> None:
    """If recording the events fails, the file state is not recorded either."""
    path = str(tmp_path / "state.db")
    store = StateStore(path)
    broken = Event("i", "file_discovered", "file.discovered", "m", "c", None)  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):
        store.commit({"a.mp3": HASHED}, [broken])
    assert store.load_tracked() == {}
    assert DurableOutbox(path).peek(10) == []


def test_non_utf8_paths_round_trip(tmp_path: Path) -> None:
    """A file name that is not valid UTF-8 comes back exactly as it went in."""
    name = b"caf\xe9.mp3".decode("utf-8", "surrogateescape")
    store = StateStore(str(tmp_path / "state.db"))
    store.commit({name: HASHED}, [])
    assert list(store.load_tracked()) == [name]
    assert store.load_tracked()[name] == HASHED  # its hashes are found by that name too


def test_utf8_and_non_utf8_paths_load_side_by_side(tmp_path: Path) -> None:
    """Tracked names in UTF-8 and names that are not valid UTF-8 all load back exactly,
    whichever comes first in the table."""
    names = ["a/caf\u00e9.mp3", b"b/caf\xe9.mp3".decode("utf-8", "surrogateescape"), "c.mp3"]
    store = StateStore(str(tmp_path / "state.db"))
    store.commit(dict.fromkeys(names, HASHED), [])
    known = store.load_tracked()
    assert sorted(known) == sorted(names)
    assert all(known[name] == HASHED for name in names)


def test_outbox_keeps_order_and_forgets_only_acknowledged_events(tmp_path: Path) -> None:
    """The publisher sees events oldest first; acked ones are gone, the rest stay."""
    path = str(tmp_path / "state.db")
    store = StateStore(path)
    store.commit({}, [_event(n) for n in range(5)])
    outbox = DurableOutbox(path)
    first = outbox.peek(3)
    assert [e.message_id for _, e in first] == ["m0", "m1", "m2"]
    outbox.ack([seq for seq, _ in first[:2]])
    assert [e.message_id for _, e in outbox.peek(10)] == ["m2", "m3", "m4"]
    assert store.outbox_usage() == (3, sum(len(_event(n).body) for n in (2, 3, 4)))


def test_readonly_open_of_a_missing_database_says_so(tmp_path: Path) -> None:
    """Exporting an instance that never ran is a clear error, not an empty file created."""
    with pytest.raises(StateError, match="no state database"):
        connect(str(tmp_path / "nothing.db"), readonly=True)
    assert not (tmp_path / "nothing.db").exists()


def test_loaded_files_tell_new_and_changed_scan_versions_apart(tmp_path: Path) -> None:
    """The loaded files table names the scanned (size, mtime, inode) versions that are new
    or differ, in scan order, and gives each tracked file's recorded hashes."""
    path = state_db_path(str(tmp_path), "music")
    other = Hashed(FileVersion(size=5, mtime_ns=20, inode=8), "c" * 64, "d" * 32, ctime_ns=21)
    store = StateStore(path)
    store.commit({"a.mp3": HASHED, "b.mp3": other}, [])
    store.close()
    known = StateStore(path).load_tracked()
    assert len(known) == 2 and "a.mp3" in known and "zzz" not in known
    batch = {"c.mp3": (1, 1, 1), "a.mp3": (3, 10, 7), "b.mp3": (5, 20, 9)}
    assert known.changed(batch) == [("c.mp3", (1, 1, 1)), ("b.mp3", (5, 20, 9))]
    assert known.changed({"b.mp3": (5, 20, 8), "a.mp3": (3, 10, 7)}) == []
    assert known.changed({"b.mp3": (5, 20, 8), "a.mp3": (3, 11, 7)}) == [("a.mp3", (3, 11, 7))]
    assert known.changed({"a.mp3": (3, 10, 7)}) == []
    assert known.changed({}) == []
    assert known["a.mp3"] == HASHED and known.get("b.mp3") == other
    assert known.get("zzz") is None
    assert sorted(known.paths() - {"a.mp3"}) == ["b.mp3"]


def test_loaded_files_keep_later_changes_in_memory(tmp_path: Path) -> None:
    """What is recorded in the loaded mapping is what it returns, committed or not; a
    forgotten path is gone."""
    path = state_db_path(str(tmp_path), "music")
    store = StateStore(path)
    store.commit({"a.mp3": HASHED}, [])
    known = store.load_tracked()
    newer = Hashed(FileVersion(size=4, mtime_ns=12, inode=7), "e" * 64, "f" * 32, ctime_ns=13)
    known["a.mp3"] = newer
    assert known["a.mp3"] == newer
    assert known.changed({"a.mp3": (4, 12, 7)}) == []
    assert known.pop("a.mp3") == newer
    assert "a.mp3" not in known and known.pop("a.mp3", None) is None
    with pytest.raises(KeyError):
        known.pop("a.mp3")
    known["b.mp3"] = HASHED
    del known["b.mp3"]
    assert dict(known) == {}


def test_database_at_schema_1_is_migrated_and_keeps_its_files(tmp_path: Path) -> None:
    """A database written before directory fingerprints existed can be exported as it is,
    opens at the current schema with every tracked file, and a restart over it simply
    reads their rows."""
    from multiwatch.watcher.state import MIGRATIONS

    path = str(tmp_path / "state.db")
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
    conn.execute("INSERT INTO files VALUES (?, 7, 3, 10, 11, ?, ?)",
                 (b"d/a.mp3", "a" * 64, "b" * 32))
    conn.commit()
    conn.close()
    readonly = connect(path, readonly=True)  # (state export before the first start)
    assert [t.relative_path for t in iter_files(readonly)] == ["d/a.mp3"]
    readonly.close()
    known = StateStore(path).load_tracked()
    assert len(known) == 1 and known["d/a.mp3"] == HASHED
    assert known.changed({"d/a.mp3": (3, 10, 7)}, "d") == []


def test_rows_are_read_a_directory_at_a_time_and_memory_wins(tmp_path: Path) -> None:
    """Lookups read only their own directory's rows (a subdirectory's are not its); once
    every path is asked for, what was changed in memory wins over the stale rows."""
    weird = b"d1/caf\xe9.mp3".decode("utf-8", "surrogateescape")
    store = StateStore(str(tmp_path / "state.db"))
    store.commit(dict.fromkeys(["top.mp3", "d1/a.mp3", weird, "d1/sub/b.mp3", "d2/c.mp3"],
                               HASHED), [])
    known = store.load_tracked()
    assert len(known) == 5 and known.directories_read() == set()
    assert "d1/a.mp3" in known and known.get(weird) == HASHED
    assert known.directories_read() == {"d1"} and "d1/sub/b.mp3" in known
    assert known.directories_read() == {"d1", "d1/sub"}
    assert sorted(known.paths_under("d1")) == sorted(["d1/a.mp3", weird, "d1/sub/b.mp3"])
    newer = Hashed(FileVersion(size=4, mtime_ns=12, inode=8), "e" * 64, "f" * 32, ctime_ns=13)
    known["d1/new.mp3"] = newer
    del known["d1/a.mp3"]
    assert len(known) == 5
    assert sorted(known.paths()) == sorted(["top.mp3", weird, "d1/new.mp3", "d1/sub/b.mp3",
                                            "d2/c.mp3"])
    assert known.directories_read() is None and known["d1/new.mp3"] == newer


def _listing(*names: str) -> dict[str, tuple[int, int, int]]:
    return dict.fromkeys(names, (3, 10, 7))


def test_a_fingerprint_vouches_until_its_directory_changes(tmp_path: Path) -> None:
    """A directory whose whole listing matched is fingerprinted; after a reopen the same
    listing, in any order, is recognised, and a different one is not.  Recording any
    change in that directory voids it; a change elsewhere does not."""
    path = str(tmp_path / "state.db")
    store = StateStore(path)
    store.commit(dict.fromkeys(["d/a.mp3", "d/b.mp3", "e/c.mp3"], HASHED), [])
    store.close()
    store = StateStore(path)
    known = store.load_tracked()
    for directory, listing in (("d", _listing("d/b.mp3", "d/a.mp3")), ("e", _listing("e/c.mp3"))):
        assert known.changed(listing, directory) == []
        known.vouch(directory, listing)
    known.save_fingerprints()
    store.close()

    store = StateStore(path)
    known = store.load_tracked()
    assert known.unchanged_directory("d", _listing("d/a.mp3", "d/b.mp3"))
    assert not known.unchanged_directory("d", _listing("d/a.mp3"))
    assert not known.unchanged_directory("d", {**_listing("d/a.mp3"), "d/b.mp3": (3, 11, 7)})
    store.commit({"d/b.mp3": None}, [])
    store.close()
    known = StateStore(path).load_tracked()
    assert not known.unchanged_directory("d", _listing("d/a.mp3", "d/b.mp3"))
    assert known.unchanged_directory("e", _listing("e/c.mp3"))


def test_the_tracked_count_stays_exact_without_reading_the_rows(tmp_path: Path) -> None:
    """The number of tracked files a start reports follows new paths, re-recorded paths,
    forgotten paths and a failed commit exactly, and survives a reopen."""
    path = str(tmp_path / "state.db")
    store = StateStore(path)
    store.commit(dict.fromkeys(["a.mp3", "d/b.mp3", "d/c.mp3"], HASHED), [])
    newer = Hashed(FileVersion(size=4, mtime_ns=12, inode=8), "e" * 64, "f" * 32, ctime_ns=13)
    store.commit({"a.mp3": newer, "d/b.mp3": None}, [])
    broken = Event("i", "file_discovered", "file.discovered", "m", "c", None)  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):
        store.commit({"e.mp3": HASHED}, [broken])
    store.close()
    known = StateStore(path).load_tracked()
    assert len(known) == 2 and known["a.mp3"] == newer
    assert sorted(known.paths()) == ["a.mp3", "d/c.mp3"]
