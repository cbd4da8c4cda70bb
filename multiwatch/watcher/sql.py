"""sqlite helpers the state modules share (state.py, tracked_files.py): one transaction,
and the key range of a directory's subtree. Runs on whichever thread owns the connection."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator


class StateError(Exception):
    """The state database cannot be used (newer schema, corrupt file, unwritable disk)."""

@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
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


# Matches a path with no "/" after the first ? characters: a file directly in a directory.
NO_SLASH = "instr(substr(path, ?), X'2F') = 0"


def subtree(relative_dir: str) -> tuple[bytes, bytes]:
    """(low, high): the stored paths below relative_dir are those low <= path < high."""
    low = os.fsencode(relative_dir + "/")
    return low, low[:-1] + b"0"  # "0" sorts right after "/"
