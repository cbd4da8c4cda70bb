"""Durable per-instance state: tracked files and the outbox, in one sqlite database (WAL).

Beside them: the number of tracked files and fingerprints of unchanged directories, which
spare a restart from reading the files table (see TrackedFiles).

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
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from multiwatch.state_dir import CREATE, VERIFY, UnsafeStateError, secure_database
from multiwatch.watcher.hashing import FileVersion, Hashed
from multiwatch.watcher.message import Event
from multiwatch.watcher.path_index import directory_of
from multiwatch.watcher.sql import StateError, subtree, transaction
from multiwatch.watcher.tracked_files import TrackedFiles

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
    # 1 → 2: fingerprints of unchanged directories (TrackedFiles), so a restart need not
    # read the rows of a directory whose listing has not changed; and the number of
    # tracked files, kept by triggers, so it is known without reading every row.
    """
    CREATE TABLE directories (
        path BLOB PRIMARY KEY,
        digest BLOB NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE counts (
        name TEXT PRIMARY KEY,
        n INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO counts SELECT 'files', count(*) FROM files;
    CREATE TRIGGER files_added AFTER INSERT ON files
    BEGIN UPDATE counts SET n = n + 1 WHERE name = 'files'; END;
    CREATE TRIGGER files_removed AFTER DELETE ON files
    BEGIN UPDATE counts SET n = n - 1 WHERE name = 'files'; END;
    """,
    # 2 → 3: re-announcements queued by `multiwatch resync` carry a header saying so.
    """
    ALTER TABLE outbox ADD COLUMN resync INTEGER NOT NULL DEFAULT 0;
    """,
    # 3 → 4: small named values kept across restarts (the mount seen at start, mount.py).
    """
    CREATE TABLE meta (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
    # 4 → 5: deletions a scan found but held back (deletion_guard.py).  The tracked row
    # stays; any write to it (the file announced again, its deletion reported by the
    # kernel, or released) ends the hold in the same transaction.  Counted like files.
    """
    CREATE TABLE held_deletions (
        path BLOB PRIMARY KEY
    ) WITHOUT ROWID;
    INSERT INTO counts VALUES ('held_deletions', 0);
    CREATE TRIGGER held_added AFTER INSERT ON held_deletions
    BEGIN UPDATE counts SET n = n + 1 WHERE name = 'held_deletions'; END;
    CREATE TRIGGER held_removed AFTER DELETE ON held_deletions
    BEGIN UPDATE counts SET n = n - 1 WHERE name = 'held_deletions'; END;
    CREATE TRIGGER files_removed_unhold AFTER DELETE ON files
    BEGIN DELETE FROM held_deletions WHERE path = old.path; END;
    CREATE TRIGGER files_changed_unhold AFTER UPDATE ON files
    BEGIN DELETE FROM held_deletions WHERE path = old.path; END;
    """,
    # 5 → 6: a standby's in-flight window (watcher/standby_window.py): the active replica's
    # last events as published (an outbox row's columns), one row per message id.
    """
    CREATE TABLE in_flight (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        instance_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        routing_key TEXT NOT NULL,
        message_id TEXT NOT NULL UNIQUE,
        correlation_id TEXT NOT NULL,
        body BLOB NOT NULL,
        resync INTEGER NOT NULL DEFAULT 0
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
BUSY_TIMEOUT_SECONDS = 30.0
# Events and bytes another process (`multiwatch resync`) added to the outbox, in the
# counts table until the running publisher adds them to its gauge (take_resynced).
_QUEUED_EVENTS, _QUEUED_BYTES = "resync_events", "resync_bytes"


def state_db_path(state_dir: str, instance_id: str) -> str:
    return os.path.join(state_dir, "instances", instance_id, "state.db")


class _Connection(sqlite3.Connection):
    """A connection that counts itself in _OPEN while open (see connect)."""

    _counted_path = ""

    def close(self) -> None:
        if self._counted_path:  # (closing twice counts once)
            _OPEN[self._counted_path] -= 1
            self._counted_path = ""
        super().close()


# Paths this process has a database connection open to.  sqlite's locks are POSIX
# record locks, which the kernel drops when the process closes ANY descriptor of the file:
# re-checking the files (secure_database opens and closes them) while a connection is open
# silently unlocked it, and another process (`multiwatch resync`, a backup) could then
# checkpoint and delete the WAL under the watcher, whose later writes were lost.
_OPEN: Counter[str] = Counter()


def connect(path: str, *, readonly: bool = False) -> sqlite3.Connection:
    """Open (and for writers create and migrate) the database at path."""
    # Before sqlite opens it by name: every directory from state_dir down and the database
    # files are ours alone, no symbolic link among them (created 0700/0600 for writers).
    # Checked when this process first opens it (see _OPEN).
    path = os.path.abspath(path)
    try:
        if not _OPEN[path]:
            secure_database(path, VERIFY if readonly else CREATE)
    except OSError as exc:
        raise StateError(str(exc) if isinstance(exc, UnsafeStateError)
                         else f"{path}: {exc.strerror or exc}") from None
    if readonly:
        if not os.path.exists(path):
            raise StateError(f"{path}: no state database (has this instance run yet?)")
        uri = f"file:{path}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_SECONDS,
                               check_same_thread=False, factory=_Connection)
    else:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None,
                               check_same_thread=False, factory=_Connection)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (kill -9); a power cut may roll back
        # the last transactions, which the reconcile scan then re-detects.
        conn.execute("PRAGMA synchronous=NORMAL")
        _migrate(conn, path)
    if isinstance(conn, _Connection):
        _OPEN[path] += 1
        conn._counted_path = path
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    # Reading alone (state export, backup) needs only what every schema has: an instance
    # not started since multiwatch was upgraded can still be exported.
    if version > SCHEMA_VERSION or (version != SCHEMA_VERSION and not readonly):
        conn.close()
        raise StateError(f"{path}: schema version {version}, this multiwatch reads "
                         f"{SCHEMA_VERSION}; upgrade multiwatch or restore a matching backup")
    return conn


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        return  # connect() reports it
    for number in range(version, SCHEMA_VERSION):
        with transaction(conn):
            for statement in _statements(MIGRATIONS[number]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")


def _statements(script: str) -> Iterator[str]:
    """The SQL statements of a script, each whole (a trigger's body has ";" inside)."""
    statement = ""
    for piece in script.split(";"):
        statement += piece + ";"
        if sqlite3.complete_statement(statement):
            if statement.strip(" \n;"):
                yield statement
            statement = ""


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
        """Every waiting event, also those `multiwatch resync` queued (counted here, so
        the publisher must not count them again)."""
        with transaction(self._conn):
            self._conn.execute("DELETE FROM counts WHERE name IN (?, ?)",
                               (_QUEUED_EVENTS, _QUEUED_BYTES))
            return outbox_usage(self._conn)

    def limit_lock_wait(self, seconds: float) -> None:
        """Wait at most `seconds` for another writer's lock from now on (at stop, whose
        deadline is shorter than BUSY_TIMEOUT_SECONDS)."""
        self._conn.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")

    def meta(self, name: str) -> str | None:
        """A value kept with set_meta, None if never set."""
        row = self._conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, name: str, value: str | None) -> None:
        """Keep `value` under `name` (None: forget it)."""
        if value is None:
            self._conn.execute("DELETE FROM meta WHERE name = ?", (name,))
            return
        self._conn.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT (name) DO UPDATE"
                           " SET value = excluded.value", (name, value))

    def load_tracked(self) -> TrackedFiles:
        """Every tracked file, read lazily (see TrackedFiles)."""
        return TrackedFiles(self._conn)

    @property
    def connection(self) -> sqlite3.Connection:
        """The pipeline thread's connection, for the held deletions' functions below."""
        return self._conn

    def tracked_count(self) -> int:
        """How many files are tracked (kept by triggers: no row is read)."""
        return int(self._conn.execute("SELECT n FROM counts WHERE name = 'files'").fetchone()[0])

    def commit(self, files: Mapping[str, Hashed | None], events: Sequence[Event], *,
               also: Callable[[sqlite3.Connection], None] | None = None) -> None:
        """Record new file states (None: forget the path) and their events atomically
        (`also`: more writes in the same transaction, a standby's in-flight window)."""
        conn = self._conn
        with transaction(conn):
            if also is not None:
                also(conn)
            # An upsert, not INSERT OR REPLACE: only a new path fires files_added.
            conn.executemany(
                "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE"
                " SET inode = excluded.inode, size = excluded.size, mtime_ns = excluded.mtime_ns,"
                " ctime_ns = excluded.ctime_ns, sha256 = excluded.sha256,"
                " xxh128 = excluded.xxh128",
                [(os.fsencode(p), h.version.inode, h.version.size, h.version.mtime_ns,
                  h.ctime_ns, h.sha256, h.xxh128) for p, h in files.items() if h is not None])
            conn.executemany("DELETE FROM files WHERE path = ?",
                             [(os.fsencode(p),) for p, h in files.items() if h is None])
            # A directory's fingerprint vouches for its rows: any change to them voids it.
            conn.executemany("DELETE FROM directories WHERE path = ?",
                             [(os.fsencode(d),) for d in {directory_of(p) for p in files}])
            conn.executemany(
                _INSERT_EVENT, [_event_row(e) for e in events])


_INSERT_EVENT = ("INSERT INTO outbox (instance_id, event_type, routing_key, message_id,"
                 " correlation_id, body, resync) VALUES (?, ?, ?, ?, ?, ?, ?)")


def _event_row(e: Event) -> tuple[str, str, str, str, str, bytes, int]:
    return (e.instance_id, e.event_type, e.routing_key, e.message_id, e.correlation_id,
            e.body, int(e.resync))


def queue_resync(conn: sqlite3.Connection, events: Sequence[Event]) -> None:
    """Append re-announcements from outside the watcher (`multiwatch resync`), in one
    transaction, and count them for the running publisher (take_resynced)."""
    with transaction(conn):
        conn.executemany(_INSERT_EVENT, [_event_row(e) for e in events])
        conn.executemany(
            "INSERT INTO counts VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET n = n + excluded.n",
            [(_QUEUED_EVENTS, len(events)), (_QUEUED_BYTES, sum(len(e.body) for e in events))])


def tracked_file(conn: sqlite3.Connection, relative_path: str) -> Hashed | None:
    """The announced version of one path, or None if it is not tracked."""
    row = conn.execute("SELECT inode, size, mtime_ns, ctime_ns, sha256, xxh128 FROM files"
                       " WHERE path = ?", (os.fsencode(relative_path),)).fetchone()
    if row is None:
        return None
    inode, size, mtime_ns, ctime_ns, sha256, xxh128 = row
    return Hashed(version=FileVersion(size=size, mtime_ns=mtime_ns, inode=inode),
                  sha256=sha256, xxh128=xxh128, ctime_ns=ctime_ns)


def iter_files_under(conn: sqlite3.Connection, relative_dir: str,
                     page: int = 1000) -> Iterator[TrackedFile]:
    """The tracked files below relative_dir ("" for all), in path order, read `page` rows at
    a time with no statement left open between pages: the caller (`multiwatch resync`) writes
    on the same connection as it goes, and a read left open would pin a WAL snapshot whose
    upgrade to a write fails at once (SQLITE_BUSY_SNAPSHOT, "database is locked") as soon as
    the watcher has committed since."""
    low, high = subtree(relative_dir) if relative_dir else (b"", None)
    bound = "" if high is None else " AND path < :high"
    first, after = True, low
    while True:
        rows = conn.execute(
            "SELECT path, inode, size, mtime_ns, ctime_ns, sha256, xxh128 FROM files"
            f" WHERE path {'>=' if first else '>'} :after{bound} ORDER BY path LIMIT :page",
            {"after": after, "high": high, "page": page}).fetchall()
        for path, inode, size, mtime_ns, ctime_ns, sha256, xxh128 in rows:
            yield TrackedFile(os.fsdecode(bytes(path)), Hashed(
                version=FileVersion(size=size, mtime_ns=mtime_ns, inode=inode),
                sha256=sha256, xxh128=xxh128, ctime_ns=ctime_ns))
        if len(rows) < page:
            return
        first, after = False, bytes(rows[-1][0])


def pending_events(conn: sqlite3.Connection, body_fragment: bytes) -> list[tuple[str, bool]]:
    """(event_type, resync) of the outbox rows whose body holds body_fragment, oldest first."""
    return [(etype, bool(resync)) for etype, resync in conn.execute(
        "SELECT event_type, resync FROM outbox WHERE instr(body, ?) > 0 ORDER BY seq",
        (body_fragment,))]


class DurableOutbox:
    """The publisher's side: read the oldest events, delete them once confirmed."""

    def __init__(self, path: str) -> None:
        self._conn = connect(path)

    def close(self) -> None:
        self._conn.close()

    def peek(self, limit: int) -> list[tuple[int, Event]]:
        rows = self._conn.execute(
            "SELECT seq, instance_id, event_type, routing_key, message_id, correlation_id, body,"
            " resync FROM outbox ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [(seq, Event(instance_id=iid, event_type=etype, routing_key=key,
                            message_id=mid, correlation_id=cid, body=bytes(body),
                            resync=bool(resync)))
                for seq, iid, etype, key, mid, cid, body, resync in rows]

    def take_resynced(self) -> tuple[int, int]:
        """(events, bytes) `multiwatch resync` queued since the last call (or the start)."""
        conn = self._conn
        if not conn.execute("SELECT 1 FROM counts WHERE name = ?", (_QUEUED_EVENTS,)).fetchall():
            return 0, 0  # the usual case: one primary-key lookup, no write
        with transaction(conn):
            counts = dict(conn.execute("SELECT name, n FROM counts WHERE name IN (?, ?)",
                                       (_QUEUED_EVENTS, _QUEUED_BYTES)).fetchall())
            conn.execute("DELETE FROM counts WHERE name IN (?, ?)",
                         (_QUEUED_EVENTS, _QUEUED_BYTES))
        return counts.get(_QUEUED_EVENTS, 0), counts.get(_QUEUED_BYTES, 0)

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
