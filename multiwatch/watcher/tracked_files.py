"""The tracked files: relative path → the announced version, read from the database lazily.

Owned by the pipeline (main loop thread). Every change the pipeline makes to the set goes
through `TrackedFiles`, which keeps the new versions and writes them in the step's one
transaction (commit_buffer.py, state.py); fingerprints of unchanged directories let a
restart vouch for a directory without reading its rows.
"""

from __future__ import annotations

import codecs
import marshal
import os
import sqlite3
import sys
from collections import Counter
from collections.abc import Iterator, KeysView, Mapping, MutableMapping
from itertools import filterfalse, islice
from operator import itemgetter

import xxhash

from multiwatch.watcher.hashing import FileVersion, Hashed, Version
from multiwatch.watcher.path_index import PathIndex, directory_of
from multiwatch.watcher.sql import NO_SLASH, StateError, subtree, transaction

_Hashes = tuple[int, str, str]
"""(ctime_ns, sha256, xxh128): the rest of a Hashed."""

KEEP_HASHES = 10_000  # committed paths whose hashes stay in memory (see TrackedFiles.stored)

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
        self._hashes: dict[str, _Hashes] = {}  # read, or written (see stored)
        self._kept: dict[str, None] = {}  # committed paths with hashes here, oldest first
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

    def version_of(self, relative_path: str) -> Version | None:
        """The announced (size, mtime_ns, inode) of a tracked path, None if untracked: what
        deciding whether a file changed needs, without its hashes (no row read for them)."""
        self._need(relative_path)
        return self._versions.get(relative_path)

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

    def stored(self, relative_paths: Iterator[str] | KeysView[str]) -> None:
        """These paths' rows are committed (and so is every change made so far).  The
        hashes of the latest KEEP_HASHES committed paths stay in memory; older ones are read
        back from the database when next asked for (a deletion, a rename, a modification),
        as after a restart: over a first start's 100,000 files they were a third of its
        memory (bench/README.md).  A read back is a query per file: a burst of changes to
        files announced moments before finds their hashes here."""
        kept = self._kept
        for relative_path in relative_paths:
            kept.pop(relative_path, None)
            kept[relative_path] = None  # newest last
        if len(kept) > KEEP_HASHES:
            hashes = self._hashes
            for relative_path in list(islice(kept, len(kept) - KEEP_HASHES)):
                del kept[relative_path]
                hashes.pop(relative_path, None)

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
                                   subtree(relative_dir))
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
        with transaction(self._conn):
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
            low, high = subtree(directory)
            rows = _load_versions(self._conn, f"WHERE path >= ? AND path < ? AND {NO_SLASH}",
                                  (low, high, len(low) + 1))
        else:
            rows = _load_versions(self._conn, f"WHERE {NO_SLASH}", (1,))
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
