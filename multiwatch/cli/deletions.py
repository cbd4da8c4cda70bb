"""`multiwatch deletions -c ROSTER ID [--list | --release | --recheck]`: the deletions a scan
found but held (above the instance's max_scan_deletions; see watcher/deletion_guard.py).

Without an option it prints how many are held; `--list` prints their paths.  `--release`
and `--recheck` are served by the instance's watcher, which owns its tracked files: the
command leaves a request in the state database (sqlite WAL, one short write) and, while a
watcher runs, waits for it to be served (while deletions are held it looks every second)
and says what happened.
A release announces each held file still gone (file_deleted, once, through the outbox like
any event); a recheck rescans the directory: files there again are no longer held, the
others stay held.  With no watcher running the request waits for its next start.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from typing import TextIO

from multiwatch.cli.resync import find_instance, open_state
from multiwatch.cli.tail import escape_controls
from multiwatch.config import ConfigError, InstanceConfig, Roster
from multiwatch.watcher import held_deletions

WAIT_SECONDS = 60.0  # for the running watcher to serve a request (a big rescan may take longer)
LOOK_EVERY_SECONDS = 0.2


def deletions(roster: Roster, instance_id: str, *, action: str | None, out: TextIO,
              wait_seconds: float = WAIT_SECONDS) -> int:
    """Print the held count (`action` None), the paths ("list"), or serve "release"/"recheck"."""
    instance = find_instance(roster, instance_id)
    conn = open_state(roster, instance, readonly=action in (None, "list"))
    try:
        if action is None:
            held = held_deletions.held_count(conn)
            print(f"instance {instance.id}: {_held(held)}", file=out)
            if held:
                print(f"  list them with --list; announce them with --release, or --recheck "
                      f"once the files are back in {instance.directory}", file=out)
            return 0
        if action == "list":
            for path in held_deletions.held_paths(conn):
                print(escape_controls(os.path.join(instance.directory, path)), file=out)
            return 0
        request = held_deletions.RELEASE if action == "release" else held_deletions.RECHECK
        return _request(roster, instance, conn, request, out, wait_seconds)
    except sqlite3.Error as exc:
        raise ConfigError(f"instance {instance.id}: state database: {exc}") from None
    finally:
        conn.close()


def _request(roster: Roster, instance: InstanceConfig, conn: sqlite3.Connection, request: int,
             out: TextIO, wait_seconds: float) -> int:
    held_before = held_deletions.held_count(conn)
    what = "release" if request == held_deletions.RELEASE else "recheck"
    if not held_before:
        print(f"instance {instance.id}: no deletions held; nothing to {what}", file=out)
        return 0
    held_deletions.request_deletions(conn, request)
    if not _watcher_running(roster, instance):
        print(f"instance {instance.id}: {_held(held_before)}; {what} requested: instance "
              f"{instance.id} is not running, its watcher does it when it starts", file=out)
        return 0
    served = _wait(lambda: held_deletions.deletion_request(conn) < request, wait_seconds)
    held = held_deletions.held_count(conn)
    if not served:
        print(f"instance {instance.id}: {what} requested; the watcher has not finished within "
              f"{wait_seconds:g} s ({_held(held)} now); `multiwatch deletions {instance.id}` "
              "shows the count", file=out)
        return 1
    if request == held_deletions.RELEASE:
        print(f"instance {instance.id}: {held_before - held} held deletions released "
              f"(file_deleted queued for those still gone); {_held(held)}", file=out)
    else:
        print(f"instance {instance.id}: rechecked; {held_before - held} no longer held (the "
              f"files are back), {_held(held)}", file=out)
    return 0


def _held(count: int) -> str:
    return f"{count} deletion{'' if count == 1 else 's'} held"


def _watcher_running(roster: Roster, instance: InstanceConfig) -> bool:
    """True if a watcher holds the lock of the database addressed (run_lock.py; for a
    replica, the one this host's watcher uses: replica_slots.current_db)."""
    from multiwatch.cli.state import state_db

    return state_db(roster, instance).running


def _wait(done: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(LOOK_EVERY_SECONDS)
    return True
