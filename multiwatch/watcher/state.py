"""Durable per-instance state: tracked files and the outbox, in one sqlite database (WAL).

The pipeline thread records a file's new state and the events it causes in one
transaction, so after a crash either both exist or neither does: the outbox replays what
was recorded, and the reconcile scan re-detects what was not.  The publisher thread reads
and deletes outbox rows through its own connection.

Paths are stored as bytes (os.fsencode), so names that are not valid UTF-8 survive.
`PRAGMA user_version` is the schema version; MIGRATIONS upgrade older databases in place.
"""

from __future__ import annotations

import codecs
import os
import sqlite3
import sys
from collections.abc import Callable, Iterator, KeysView, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from itertools import filterfalse
from operator import itemgetter

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

    def load_files(self) -> KnownFiles:
        """Every tracked file, as one compact mapping (see KnownFiles)."""
        return KnownFiles.load(self._conn)

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


Version = tuple[int, int, int]
"""(size, mtime_ns, inode): a FileVersion as a plain tuple, as the scan reports it."""
_Hashes = tuple[int, str, str]
"""(ctime_ns, sha256, xxh128): the rest of a Hashed."""


class KnownFiles(MutableMapping[str, Hashed]):
    """relative path → Hashed of the announced version, stored compactly.

    A restart over a large tree loads every tracked path and compares it with what the
    scan finds; building two frozen dataclasses (and reading two hash strings) per row
    cost more than the scan itself.  So the load reads only each path's version, as a
    plain (size, mtime_ns, inode) tuple, and `changed` compares a whole scan batch at C
    speed.  The hashes and ctime of a path are read from the database the first time a
    Hashed is asked for (a deletion, a rename, a modification): a path nobody has written
    since the load still has the row it was loaded from, because every change to `known`
    goes through this mapping, which keeps the new hashes in memory.  The database is
    read only on the thread that owns the mapping (the pipeline's)."""

    def __init__(self, versions: dict[str, Version] | None = None,
                 hashes_of: Callable[[str], _Hashes | None] | None = None) -> None:
        self._versions: dict[str, Version] = versions if versions is not None else {}
        self._hashes: dict[str, _Hashes] = {}  # written since the load
        self._hashes_of = hashes_of

    @classmethod
    def load(cls, conn: sqlite3.Connection) -> KnownFiles:
        versions = _load_versions(conn)

        def hashes_of(relative_path: str) -> _Hashes | None:
            row = conn.execute("SELECT ctime_ns, sha256, xxh128 FROM files WHERE path = ?",
                               (os.fsencode(relative_path),)).fetchone()
            return None if row is None else (row[0], row[1], row[2])

        return cls(versions, hashes_of)

    def __len__(self) -> int:
        return len(self._versions)

    def __iter__(self) -> Iterator[str]:
        return iter(self._versions)

    def __contains__(self, relative_path: object) -> bool:
        return relative_path in self._versions

    def __getitem__(self, relative_path: str) -> Hashed:
        return self._hashed(relative_path, self._versions[relative_path])

    def __setitem__(self, relative_path: str, hashed: Hashed) -> None:
        version = hashed.version
        self._versions[relative_path] = (version.size, version.mtime_ns, version.inode)
        self._hashes[relative_path] = (hashed.ctime_ns, hashed.sha256, hashed.xxh128)

    def __delitem__(self, relative_path: str) -> None:
        del self._versions[relative_path]
        self._hashes.pop(relative_path, None)

    def get(self, relative_path: str, default: Hashed | None = None) -> Hashed | None:  # type: ignore[override]
        version = self._versions.get(relative_path)
        return default if version is None else self._hashed(relative_path, version)

    def pop(self, relative_path: str, *default: Hashed | None) -> Hashed | None:  # type: ignore[override]
        version = self._versions.get(relative_path)
        if version is None:
            if default:
                return default[0]
            raise KeyError(relative_path)
        hashed = self._hashed(relative_path, version)
        del self[relative_path]
        return hashed

    def paths(self) -> KeysView[str]:
        """The tracked paths as a dict view (set operations on it run at C speed)."""
        return self._versions.keys()

    def changed(self, batch: Mapping[str, Version]) -> list[tuple[str, Version]]:
        """The (path, version) items of a scan batch whose path is not tracked, or
        tracked with another version; in the batch's order."""
        if len(batch) > 1:
            # The common case on a restart, every file unchanged, in two C calls: the
            # tracked versions of the whole batch (KeyError: an untracked path), compared
            # with the scanned ones as one tuple.
            try:
                if itemgetter(*batch)(self._versions) == tuple(batch.values()):
                    return []
            except KeyError:
                pass
        return list(filterfalse(self._versions.items().__contains__, batch.items()))

    def _hashed(self, relative_path: str, version: Version) -> Hashed:
        hashes = self._hashes.get(relative_path)
        if hashes is None:
            hashes = self._hashes_of(relative_path) if self._hashes_of is not None else None
            if hashes is None:
                raise StateError(f"{relative_path}: tracked, but its row is missing from the "
                                 "state database")
            self._hashes[relative_path] = hashes
        size, mtime_ns, inode = version
        ctime_ns, sha256, xxh128 = hashes
        return Hashed(version=FileVersion(size=size, mtime_ns=mtime_ns, inode=inode),
                      sha256=sha256, xxh128=xxh128, ctime_ns=ctime_ns)


def _load_versions(conn: sqlite3.Connection) -> dict[str, Version]:
    """relative path → (size, mtime_ns, inode) of every tracked file.

    Paths are stored as os.fsencode bytes.  With a UTF-8 filesystem encoding, sqlite
    itself can hand them over as str (a CAST to TEXT, decoded in C as the rows are read):
    for valid UTF-8 that is exactly os.fsdecode's result, and it spares a bytes object per
    row, about a quarter of the load.  A path that is not valid UTF-8 makes that read fail; then
    every path is read as bytes and decoded in one call, like os.fsdecode (no path holds
    a NUL, so NUL can join them)."""
    encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
    if codecs.lookup(encoding).name == "utf-8":
        try:
            rows = conn.execute("SELECT CAST(path AS TEXT), size, mtime_ns, inode FROM files"
                                " ORDER BY path").fetchall()
        except sqlite3.OperationalError as exc:
            if "decode" not in str(exc):
                raise
        else:
            return dict(zip(map(itemgetter(0), rows), map(itemgetter(1, 2, 3), rows),
                            strict=True))
    rows = conn.execute("SELECT path, size, mtime_ns, inode FROM files ORDER BY path").fetchall()
    if not rows:
        return {}
    names = b"\0".join(map(itemgetter(0), rows)).decode(encoding, errors).split("\0")
    return dict(zip(names, map(itemgetter(1, 2, 3), rows), strict=True))


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
