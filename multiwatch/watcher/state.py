"""Durable per-instance state: tracked files and the outbox, in one sqlite database (WAL).

The pipeline thread records a file's new state and the events it causes in one
transaction, so after a crash either both exist or neither does: the outbox replays what
was recorded, and the reconcile scan re-detects what was not.  The publisher thread reads
and deletes outbox rows through its own connection.

Paths are stored as bytes (os.fsencode), so names that are not valid UTF-8 survive.
`PRAGMA user_version` is the schema version; MIGRATIONS upgrade older databases in place.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from multiwatch.watcher.hashing import FileVersion, Hashed
from multiwatch.watcher.message import Event

MIGRATIONS: tuple[str, ...] = (
    # 0 → 1: the first schema.
    """
    CREATE TABLE files (
        path BLOB PRIMARY KEY,
        inode INTEGER NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        ctime_ns INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        xxh128 TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        instance_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        routing_key TEXT NOT NULL,
        message_id TEXT NOT NULL,
        correlation_id TEXT NOT NULL,
        body BLOB NOT NULL
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
BUSY_TIMEOUT_SECONDS = 30.0


class StateError(Exception):
    """The state database cannot be used (newer schema, corrupt file, unwritable disk)."""


def state_db_path(state_dir: str, instance_id: str) -> str:
    return os.path.join(state_dir, "instances", instance_id, "state.db")


def connect(path: str, *, readonly: bool = False) -> sqlite3.Connection:
    """Open (and for writers create and migrate) the database at path."""
    if readonly:
        if not os.path.exists(path):
            raise StateError(f"{path}: no state database (has this instance run yet?)")
        uri = f"file:{path}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_SECONDS,
                               check_same_thread=False)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (kill -9); a power cut may roll back
        # the last transactions, which the reconcile scan then re-detects.
        conn.execute("PRAGMA synchronous=NORMAL")
        _migrate(conn, path)
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version != SCHEMA_VERSION:
        conn.close()
        raise StateError(f"{path}: schema version {version}, this multiwatch reads "
                         f"{SCHEMA_VERSION}; upgrade multiwatch or restore a matching backup")
    return conn


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        return  # connect() reports it
    for number in range(version, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in filter(str.strip, MIGRATIONS[number].split(";")):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


@dataclass(frozen=True)
class TrackedFile:
    """One row of the files table, as `multiwatch state export` prints it."""

    relative_path: str
    hashed: Hashed


class StateStore:
    """The pipeline's side: tracked files, and appending to the outbox."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn = connect(path)

    def close(self) -> None:
        self._conn.close()

    def outbox_usage(self) -> tuple[int, int]:
        return outbox_usage(self._conn)

    def load_files(self) -> dict[str, Hashed]:
        return {row.relative_path: row.hashed for row in iter_files(self._conn)}

    def commit(self, files: Mapping[str, Hashed | None], events: Sequence[Event]) -> None:
        """Record new file states (None: forget the path) and their events atomically."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(os.fsencode(p), h.version.inode, h.version.size, h.version.mtime_ns,
                  h.ctime_ns, h.sha256, h.xxh128) for p, h in files.items() if h is not None])
            conn.executemany("DELETE FROM files WHERE path = ?",
                             [(os.fsencode(p),) for p, h in files.items() if h is None])
            conn.executemany(
                "INSERT INTO outbox (instance_id, event_type, routing_key, message_id,"
                " correlation_id, body) VALUES (?, ?, ?, ?, ?, ?)",
                [(e.instance_id, e.event_type, e.routing_key, e.message_id, e.correlation_id,
                  e.body) for e in events])
            conn.execute("COMMIT")
        except BaseException:
            # On SQLITE_FULL sqlite has already rolled back; a second ROLLBACK would raise
            # and hide the real error.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


class DurableOutbox:
    """The publisher's side: read the oldest events, delete them once confirmed."""

    def __init__(self, path: str) -> None:
        self._conn = connect(path)

    def close(self) -> None:
        self._conn.close()

    def peek(self, limit: int) -> list[tuple[int, Event]]:
        rows = self._conn.execute(
            "SELECT seq, instance_id, event_type, routing_key, message_id, correlation_id, body"
            " FROM outbox ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [(seq, Event(instance_id=iid, event_type=etype, routing_key=key,
                            message_id=mid, correlation_id=cid, body=bytes(body)))
                for seq, iid, etype, key, mid, cid, body in rows]

    def ack(self, seqs: Sequence[int]) -> None:
        """Delete confirmed events: consecutive rows as peek() returned them, oldest first.

        One range DELETE, one transaction: a row-by-row delete in autocommit mode was one
        WAL commit per event."""
        if seqs:
            self._conn.execute("DELETE FROM outbox WHERE seq BETWEEN ? AND ?",
                               (seqs[0], seqs[-1]))


def outbox_usage(conn: sqlite3.Connection) -> tuple[int, int]:
    """(events, bytes) waiting in the outbox; a full count, done once at start."""
    count, size = conn.execute("SELECT count(*), coalesce(sum(length(body)), 0) FROM outbox"
                               ).fetchone()
    return count, size


def iter_files(conn: sqlite3.Connection) -> Iterator[TrackedFile]:
    for path, inode, size, mtime_ns, ctime_ns, sha256, xxh128 in conn.execute(
            "SELECT path, inode, size, mtime_ns, ctime_ns, sha256, xxh128 FROM files"
            " ORDER BY path"):
        yield TrackedFile(os.fsdecode(bytes(path)), Hashed(
            version=FileVersion(size=size, mtime_ns=mtime_ns, inode=inode),
            sha256=sha256, xxh128=xxh128, ctime_ns=ctime_ns))
