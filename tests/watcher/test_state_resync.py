"""The state database beside another process: resync rows, their count, and sqlite's locks."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from multiwatch.watcher.hashing import FileVersion, Hashed
from multiwatch.watcher.message import RESYNC_HEADER, Event, build_event
from multiwatch.watcher.state import (
    MIGRATIONS,
    DurableOutbox,
    StateStore,
    connect,
    queue_resync,
    state_db_path,
)

HASHED = Hashed(FileVersion(size=3, mtime_ns=10, inode=7), "a" * 64, "b" * 32, ctime_ns=11)


def _resync_event(name: str, resync_id: str = "r1") -> Event:
    return build_event(event_type="file_discovered", instance_id="i", watched_directory="/w",
                       relative_path=name, hashed=HASHED, resync_id=resync_id)


def test_resync_rows_keep_their_header_and_are_counted_once(tmp_path: Path) -> None:
    """Rows another process queued come back marked resync, counted by take_resynced once."""
    path = state_db_path(str(tmp_path), "i")
    store = StateStore(path)
    outbox = DurableOutbox(path)
    writer = connect(path)
    queue_resync(writer, [_resync_event("a"), _resync_event("b")])
    writer.close()
    events = [event for _seq, event in outbox.peek(10)]
    assert [e.headers.get(RESYNC_HEADER) for e in events] == [True, True]
    assert outbox.take_resynced() == (2, sum(len(e.body) for e in events))
    assert outbox.take_resynced() == (0, 0)
    # At a start, the full count includes them and the pending count is reset.
    writer = connect(path)
    queue_resync(writer, [_resync_event("c")])
    writer.close()
    assert store.outbox_usage()[0] == 3
    assert outbox.take_resynced() == (0, 0)


def test_resync_message_ids_differ_from_the_normal_and_between_requests() -> None:
    """A consumer deduplicating on message_id keeps every resync request's messages."""
    normal = build_event(event_type="file_discovered", instance_id="i", watched_directory="/w",
                         relative_path="a", hashed=HASHED)
    first, again = _resync_event("a", "r1"), _resync_event("a", "r1")
    other = _resync_event("a", "r2")
    assert first.message_id == again.message_id
    assert len({normal.message_id, first.message_id, other.message_id}) == 3
    assert RESYNC_HEADER not in normal.headers and b'"resync"' not in normal.body


def test_schema_2_outbox_gains_the_resync_column(tmp_path: Path) -> None:
    """A database of the previous schema keeps its waiting events, now unmarked."""
    path = str(tmp_path / "state.db")
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0] + ";" + MIGRATIONS[1] + "; PRAGMA user_version = 2;")
    conn.execute("INSERT INTO outbox (instance_id, event_type, routing_key, message_id,"
                 " correlation_id, body) VALUES ('i', 'file_deleted', 'file.deleted', 'm', 'c',"
                 " x'7b7d')")
    conn.commit()
    conn.close()
    StateStore(path).close()
    (_seq, event), = DurableOutbox(path).peek(10)
    assert event.message_id == "m" and not event.resync


_OTHER_PROCESS = """
import sys
from multiwatch.watcher.state import connect
conn = connect(sys.argv[1])
conn.execute("INSERT INTO counts VALUES ('other', 1)")
conn.close()
"""


def test_a_second_connection_keeps_the_first_ones_locks(tmp_path: Path) -> None:
    """The watcher opening its outbox beside its store does not drop sqlite's locks, so
    another process's close cannot delete the WAL the watcher still writes to."""
    path = state_db_path(str(tmp_path), "i")
    store = StateStore(path)
    outbox = DurableOutbox(path)
    subprocess.run([sys.executable, "-c", _OTHER_PROCESS, path], check=True, timeout=60)
    store.commit({"kept.txt": HASHED}, [])
    reader = sqlite3.connect(path)
    rows = reader.execute("SELECT count(*) FROM files").fetchone()[0]
    reader.close()
    outbox.close()
    store.close()
    assert rows == 1
