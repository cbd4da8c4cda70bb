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

import codecs
import contextlib
import marshal
import os
import sqlite3
import sys
from collections import Counter
from collections.abc import Iterator, KeysView, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from itertools import filterfalse
from operator import itemgetter

import xxhash

from multiwatch.state_dir import CREATE, VERIFY, UnsafeStateError, secure_database
from multiwatch.watcher.hashing import FileVersion, Hashed, Version
from multiwatch.watcher.message import Event
from multiwatch.watcher.path_index import PathIndex, directory_of

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
)
SCHEMA_VERSION = len(MIGRATIONS)
BUSY_TIMEOUT_SECONDS = 30.0
# Events and bytes another process (`multiwatch resync`) added to the outbox, in the
# counts table until the running publisher adds them to its gauge (take_resynced).
_QUEUED_EVENTS, _QUEUED_BYTES = "resync_events", "resync_bytes"


class StateError(Exception):
    """The state database cannot be used (newer schema, corrupt file, unwritable disk)."""


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
        with _transaction(conn):
            for statement in _statements(MIGRATIONS[number]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE … COMMIT, rolled back if the block raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # On SQLITE_FULL sqlite has already rolled back; a second ROLLBACK would raise
        # and hide the real error.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


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
        with _transaction(self._conn):
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

    def commit(self, files: Mapping[str, Hashed | None], events: Sequence[Event]) -> None:
        """Record new file states (None: forget the path) and their events atomically."""
        conn = self._conn
        with _transaction(conn):
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
    with _transaction(conn):
        conn.executemany(_INSERT_EVENT, [_event_row(e) for e in events])
        conn.executemany(
            "INSERT INTO counts VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET n = n + excluded.n",
            [(_QUEUED_EVENTS, len(events)), (_QUEUED_BYTES, sum(len(e.body) for e in events))])


# -- held deletions (deletion_guard.py, `multiwatch deletions`) -------------------------

# The operator's request to the running watcher, in the counts table until it is served.
DELETIONS_REQUEST = "deletions_request"
RECHECK, RELEASE = 1, 2  # (a release also covers a recheck asked for before it)


def held_count(conn: sqlite3.Connection) -> int:
    """How many deletions are held (0 for a database older than the table)."""
    row = conn.execute("SELECT n FROM counts WHERE name = 'held_deletions'").fetchone()
    return int(row[0]) if row else 0


def held_paths(conn: sqlite3.Connection, relative_dir: str = "") -> list[str]:
    """The held paths at or below relative_dir ("" for all), in path order."""
    if not held_count(conn):
        return []
    where, parameters = ("WHERE path >= ? AND path < ?", _subtree(relative_dir)) \
        if relative_dir else ("", ())
    return [os.fsdecode(bytes(path)) for (path,) in conn.execute(
        f"SELECT path FROM held_deletions {where} ORDER BY path", parameters)]


def hold_deletions(conn: sqlite3.Connection, paths: Sequence[str], *, held: bool) -> None:
    """Hold (`held`) or stop holding these paths' deletions, in one transaction."""
    statement = ("INSERT OR IGNORE INTO held_deletions VALUES (?)" if held
                 else "DELETE FROM held_deletions WHERE path = ?")
    with _transaction(conn):
        conn.executemany(statement, [(os.fsencode(p),) for p in paths])


def deletion_request(conn: sqlite3.Connection) -> int:
    """The pending request: 0 (none), RECHECK or RELEASE."""
    row = conn.execute("SELECT n FROM counts WHERE name = ?", (DELETIONS_REQUEST,)).fetchone()
    return int(row[0]) if row else 0


def request_deletions(conn: sqlite3.Connection, request: int) -> None:
    """Ask the watcher for RECHECK or RELEASE (a release outranks a pending recheck)."""
    conn.execute("INSERT INTO counts VALUES (?, ?) ON CONFLICT (name) DO UPDATE"
                 " SET n = max(n, excluded.n)", (DELETIONS_REQUEST, request))


def finish_deletion_request(conn: sqlite3.Connection, request: int) -> None:
    """The watcher served `request` (one raised meanwhile stays for its next look)."""
    conn.execute("DELETE FROM counts WHERE name = ? AND n = ?", (DELETIONS_REQUEST, request))


def tracked_file(conn: sqlite3.Connection, relative_path: str) -> Hashed | None:
    """The announced version of one path, or None if it is not tracked."""
    row = conn.execute("SELECT inode, size, mtime_ns, ctime_ns, sha256, xxh128 FROM files"
                       " WHERE path = ?", (os.fsencode(relative_path),)).fetchone()
    if row is None:
        return None
    inode, size, mtime_ns, ctime_ns, sha256, xxh128 = row
    return Hashed(version=FileVersion(size=size, mtime_ns=mtime_ns, inode=inode),
                  sha256=sha256, xxh128=xxh128, ctime_ns=ctime_ns)


def iter_files_under(conn: sqlite3.Connection, relative_dir: str) -> Iterator[TrackedFile]:
    """The tracked files below relative_dir ("" for all), in path order."""
    if not relative_dir:
        yield from iter_files(conn)
        return
    low, high = _subtree(relative_dir)
    for path, inode, size, mtime_ns, ctime_ns, sha256, xxh128 in conn.execute(
            "SELECT path, inode, size, mtime_ns, ctime_ns, sha256, xxh128 FROM files"
            " WHERE path >= ? AND path < ? ORDER BY path", (low, high)):
        yield TrackedFile(os.fsdecode(bytes(path)), Hashed(
            version=FileVersion(size=size, mtime_ns=mtime_ns, inode=inode),
            sha256=sha256, xxh128=xxh128, ctime_ns=ctime_ns))


def pending_events(conn: sqlite3.Connection, body_fragment: bytes) -> list[tuple[str, bool]]:
    """(event_type, resync) of the outbox rows whose body holds body_fragment, oldest first."""
    return [(etype, bool(resync)) for etype, resync in conn.execute(
        "SELECT event_type, resync FROM outbox WHERE instr(body, ?) > 0 ORDER BY seq",
        (body_fragment,))]


_Hashes = tuple[int, str, str]
"""(ctime_ns, sha256, xxh128): the rest of a Hashed."""
# No "/" from byte ? of the path on (1-based): a file directly in the directory.
_NO_SLASH = "instr(substr(path, ?), X'2F') = 0"


def _subtree(relative_dir: str) -> tuple[bytes, bytes]:
    """(low, high): the stored paths below relative_dir are those low <= path < high."""
    low = os.fsencode(relative_dir + "/")
    return low, low[:-1] + b"0"  # "0" sorts right after "/"


def listing_digest(listing: Mapping[str, Version]) -> bytes:
    """The fingerprint of one directory's files (relative path → version), in any order.

    Sorting the paths alone (str comparisons) costs half of sorting the items.  marshal
    format 2 writes values only: no references or interning flags, which depend on how
    the objects were made (a scan's tuples or the table's)."""
    paths = sorted(listing)
    return xxhash.xxh3_128_digest(
        marshal.dumps((paths, tuple(map(listing.__getitem__, paths))), 2))


class TrackedFiles(MutableMapping[str, Hashed]):
    """relative path → Hashed of the announced version, read from the database lazily.

    A restart over a large tree must not build a Python object per tracked row before its
    walk (for 100,000 rows that is a third of the walk; bench/README.md): the rows of a
    directory are read the first time one of its paths is asked for,
    as plain (size, mtime_ns, inode) tuples, and the hashes and ctime of a path the first
    time a Hashed is (a deletion, a rename, a modification).

    A directory whose rows matched its whole listing is fingerprinted (`vouch`, saved to
    the `directories` table); a later scan whose listing has the same fingerprint
    (`unchanged_directory`) needs no rows at all.  Every change to a directory's rows
    voids its fingerprint, here and in StateStore.commit.  Fingerprints of directories
    changed while running are written at a clean stop (`save_fingerprints`).

    Every change to `tracked` goes through this mapping, which keeps the new versions and
    hashes in memory, so a path read from the database still has the row it was read
    from.  The database is read only on the thread that owns the mapping (the
    pipeline's)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._versions: dict[str, Version] = {}  # the tracked paths of loaded directories
        self._hashes: dict[str, _Hashes] = {}  # read, or written since the load
        # Directories whose rows are in _versions (with how many they had), or None once
        # every row is.
        self._loaded: dict[str, int] | None = {}
        self._count: int = conn.execute("SELECT n FROM counts WHERE name = 'files'"
                                        ).fetchone()[0]
        self._fingerprints: dict[str, bytes] = {
            os.fsdecode(bytes(path)): bytes(digest)
            for path, digest in conn.execute("SELECT path, digest FROM directories")}
        self._unsaved: set[str] = set()  # fingerprints not in the table yet
        self._changed: set[str] = set()  # directories whose rows changed since their load
        # _versions' paths by directory, built the first time a subtree is asked for
        # (paths_under) and kept up to date from then on.
        self._index: PathIndex | None = None
        self.changes = 0  # counts every change, so a scan can tell whether any happened

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        return iter(self.paths())

    def __contains__(self, relative_path: object) -> bool:
        if not isinstance(relative_path, str):
            return False
        self._need(relative_path)
        return relative_path in self._versions

    def __getitem__(self, relative_path: str) -> Hashed:
        self._need(relative_path)
        return self._hashed(relative_path, self._versions[relative_path])

    def __setitem__(self, relative_path: str, hashed: Hashed) -> None:
        self._need(relative_path)
        if relative_path not in self._versions:
            self._count += 1
            if self._index is not None:
                self._index.add(relative_path)
        version = hashed.version
        self._versions[relative_path] = (version.size, version.mtime_ns, version.inode)
        self._hashes[relative_path] = (hashed.ctime_ns, hashed.sha256, hashed.xxh128)
        self._changed_in(directory_of(relative_path))

    def __delitem__(self, relative_path: str) -> None:
        self._need(relative_path)
        del self._versions[relative_path]
        if self._index is not None:
            self._index.discard(relative_path)
        self._hashes.pop(relative_path, None)
        self._count -= 1
        self._changed_in(directory_of(relative_path))

    def get(self, relative_path: str, default: Hashed | None = None) -> Hashed | None:  # type: ignore[override]
        self._need(relative_path)
        version = self._versions.get(relative_path)
        return default if version is None else self._hashed(relative_path, version)

    def pop(self, relative_path: str, *default: Hashed | None) -> Hashed | None:  # type: ignore[override]
        self._need(relative_path)
        version = self._versions.get(relative_path)
        if version is None:
            if default:
                return default[0]
            raise KeyError(relative_path)
        hashed = self._hashed(relative_path, version)
        del self[relative_path]
        return hashed

    def paths(self) -> KeysView[str]:
        """Every tracked path, as a dict view (set operations on it run at C speed)."""
        self._load_all()
        return self._versions.keys()

    def paths_under(self, relative_dir: str) -> list[str]:
        """The tracked paths below relative_dir, at any depth (its subtree's rows only)."""
        if not relative_dir:
            return list(self.paths())
        if self._loaded is not None:
            below = _load_versions(self._conn, "WHERE path >= ? AND path < ?",
                                   _subtree(relative_dir))
            self._merge(below, mark_loaded=True)
        if self._index is None:
            self._index = PathIndex(self._versions)
        return self._index.under(relative_dir)

    def changed(self, batch: Mapping[str, Version],
                directory: str | None = None) -> list[tuple[str, Version]]:
        """The (path, version) items of a scan batch whose path is not tracked, or
        tracked with another version; in the batch's order.  `directory`: every path of
        the batch is in it (a scan batch), which spares looking each one up."""
        for each in (directory,) if directory is not None else {directory_of(p) for p in batch}:
            self._need_directory(each)
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

    def directories_read(self) -> set[str] | None:
        """The directories whose rows have been read so far (None: every row was)."""
        return None if self._loaded is None else set(self._loaded)

    def tracked_among(self, batch: Mapping[str, Version]) -> int:
        """How many of a compared batch's paths are tracked."""
        return sum(map(self._versions.__contains__, batch))

    def unchanged_directory(self, directory: str, listing: Mapping[str, Version]) -> bool:
        """True if the whole listing of a directory has its fingerprint: then its tracked
        files are exactly these, with these versions, and nothing needs comparing."""
        fingerprint = self._fingerprints.get(directory)
        return fingerprint is not None and fingerprint == listing_digest(listing)

    def vouch(self, directory: str, listing: Mapping[str, Version]) -> None:
        """Fingerprint a directory whose whole listing was just compared and matched every
        tracked file in it, if its rows are still those in the database."""
        if (self._loaded is not None and directory not in self._changed
                and self._loaded.get(directory) == len(listing)):
            self._fingerprints[directory] = listing_digest(listing)
            self._unsaved.add(directory)

    def save_fingerprints(self, *, changed_too: bool = False) -> None:
        """Write the new fingerprints; `changed_too` (at a clean stop, everything
        committed): also those of the directories changed since their load."""
        if changed_too and self._changed:
            listings: dict[str, dict[str, Version]] = {d: {} for d in self._changed}
            for path, version in self._versions.items():
                listing = listings.get(directory_of(path))
                if listing is not None:
                    listing[path] = version
            for directory, listing in listings.items():
                if listing:
                    self._fingerprints[directory] = listing_digest(listing)
                    self._unsaved.add(directory)
            self._changed.clear()
        if not self._unsaved:
            return
        rows = [(os.fsencode(d), self._fingerprints[d]) for d in self._unsaved]
        with _transaction(self._conn):
            self._conn.executemany("INSERT OR REPLACE INTO directories VALUES (?, ?)", rows)
        self._unsaved.clear()

    def _changed_in(self, directory: str) -> None:
        self._fingerprints.pop(directory, None)
        self._unsaved.discard(directory)
        self._changed.add(directory)
        self.changes += 1

    def _need(self, relative_path: str) -> None:
        if self._loaded is not None:
            self._need_directory(directory_of(relative_path))

    def _need_directory(self, directory: str) -> None:
        if self._loaded is None or directory in self._loaded:
            return
        if directory:
            low, high = _subtree(directory)
            rows = _load_versions(self._conn, f"WHERE path >= ? AND path < ? AND {_NO_SLASH}",
                                  (low, high, len(low) + 1))
        else:
            rows = _load_versions(self._conn, f"WHERE {_NO_SLASH}", (1,))
        self._add_rows(rows)
        self._loaded[directory] = len(rows)

    def _load_all(self) -> None:
        if self._loaded is None:
            return
        self._merge(_load_versions(self._conn))
        self._loaded = None

    def _merge(self, rows: dict[str, Version], *, mark_loaded: bool = False) -> None:
        """Add the rows of the directories not loaded yet (a loaded one's rows are in
        memory, newer than the table's until committed); `mark_loaded`: the rows are all
        the rows of their directories, which count as loaded from now on."""
        loaded = self._loaded
        if loaded is None:
            return
        if not loaded:
            self._add_rows(rows)
        else:
            self._add_rows({p: v for p, v in rows.items() if directory_of(p) not in loaded})
        if mark_loaded:
            counts = Counter(map(directory_of, rows))
            for directory in counts.keys() - loaded.keys():
                loaded[directory] = counts[directory]

    def _add_rows(self, rows: dict[str, Version]) -> None:
        """Rows read from the table, of directories not loaded before."""
        self._versions.update(rows)
        if self._index is not None:
            self._index.update(rows)

    def _hashed(self, relative_path: str, version: Version) -> Hashed:
        hashes = self._hashes.get(relative_path)
        if hashes is None:
            row = self._conn.execute("SELECT ctime_ns, sha256, xxh128 FROM files WHERE path = ?",
                                     (os.fsencode(relative_path),)).fetchone()
            if row is None:
                raise StateError(f"{relative_path}: tracked, but its row is missing from the "
                                 "state database")
            hashes = self._hashes[relative_path] = (row[0], row[1], row[2])
        size, mtime_ns, inode = version
        ctime_ns, sha256, xxh128 = hashes
        return Hashed(version=FileVersion(size=size, mtime_ns=mtime_ns, inode=inode),
                      sha256=sha256, xxh128=xxh128, ctime_ns=ctime_ns)


def _load_versions(conn: sqlite3.Connection, where: str = "",
                   parameters: tuple[object, ...] = ()) -> dict[str, Version]:
    """relative path → (size, mtime_ns, inode) of the tracked files `where` selects.

    Paths are stored as os.fsencode bytes.  With a UTF-8 filesystem encoding, sqlite
    itself can hand them over as str (a CAST to TEXT, decoded in C as the rows are read):
    for valid UTF-8 that is exactly os.fsdecode's result, and it spares a bytes object per
    row, about a quarter of the load.  A path that is not valid UTF-8 makes that read fail; then
    every path is read as bytes and decoded in one call, like os.fsdecode (no path holds
    a NUL, so NUL can join them)."""
    encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
    if codecs.lookup(encoding).name == "utf-8":
        try:
            rows = conn.execute("SELECT CAST(path AS TEXT), size, mtime_ns, inode FROM files "
                                f"{where} ORDER BY path", parameters).fetchall()
        except sqlite3.OperationalError as exc:
            if "decode" not in str(exc):
                raise
        else:
            return dict(zip(map(itemgetter(0), rows), map(itemgetter(1, 2, 3), rows),
                            strict=True))
    rows = conn.execute(f"SELECT path, size, mtime_ns, inode FROM files {where} ORDER BY path",
                        parameters).fetchall()
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
        with _transaction(conn):
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
