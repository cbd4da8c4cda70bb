"""Held deletions in the state database: the rows deletion_guard.py holds and releases on the
watcher's main thread, and the request `multiwatch deletions` leaves for it (cli/deletions.py,
in the operator's process, on its own connection).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence

from multiwatch.watcher.sql import subtree, transaction

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
    where, parameters = ("WHERE path >= ? AND path < ?", subtree(relative_dir)) \
        if relative_dir else ("", ())
    return [os.fsdecode(bytes(path)) for (path,) in conn.execute(
        f"SELECT path FROM held_deletions {where} ORDER BY path", parameters)]


def hold_deletions(conn: sqlite3.Connection, paths: Sequence[str], *, held: bool) -> None:
    """Hold (`held`) or stop holding these paths' deletions, in one transaction."""
    statement = ("INSERT OR IGNORE INTO held_deletions VALUES (?)" if held
                 else "DELETE FROM held_deletions WHERE path = ?")
    with transaction(conn):
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
