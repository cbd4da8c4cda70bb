"""`multiwatch resync -c ROSTER ID [PATH]`: re-announce tracked files for a consumer that lost
its state (like Sarracenia's re-post), without deleting state.db.

The command appends `file_discovered` events to the instance's outbox, in the state database
(sqlite WAL: a second writer waits for the watcher's short transactions).  The running
watcher's publisher sends them in order like any other event and counts them in its gauge
(state.take_resynced); if multiwatch is not running they go out at its next start.

For a replica (`ha`), the events go to the outbox of the active replica running on this
host, in the database it goes on from (state.db or state.<n>.db: replica_slots.current_db),
named in the summary when it is not state.db.  Refused when this host's replica is a
standby (it publishes nothing: resync on the active one's host) and, with a broker, when none
runs here: a replica starts as a standby, which sends nothing from its outbox (its
leftovers go out only if it takes over before another replica announces: watcher/standby.py).

Each event describes the version the state database recorded (path, size, hashes): nothing
is re-hashed.  A file whose size, mtime or inode on disk no longer match (or that is gone)
is skipped: the watcher announces its new version itself, and announcing the old hashes as
current would be wrong.
"""

from __future__ import annotations

import difflib
import os
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterator
from typing import TextIO

from multiwatch.config import ConfigError, InstanceConfig, Roster
from multiwatch.replica_slots import ACTIVE, STANDBY, SlotDb, slot_db_path
from multiwatch.watcher.confined import ConfinedRoot
from multiwatch.watcher.hashing import Hashed, stat_regular
from multiwatch.watcher.message import FILE_DISCOVERED, Event, build_event
from multiwatch.watcher.state import (
    StateError,
    TrackedFile,
    connect,
    iter_files_under,
    outbox_usage,
    queue_resync,
    tracked_file,
)

BATCH = 1000  # events per transaction: the watcher's own commits wait at most this long
PROGRESS_EVERY_SECONDS = 2.0


def find_instance(roster: Roster, instance_id: str) -> InstanceConfig:
    """The roster's instance of that id, or a one-line error with a did-you-mean."""
    known = {i.id: i for i in roster.instances}
    if instance_id in known:
        return known[instance_id]
    close = difflib.get_close_matches(instance_id, list(known), n=1)
    hint = f"did you mean {close[0]}?" if close else f"instances: {', '.join(sorted(known))}"
    raise ConfigError(f"{instance_id}: no such instance in {roster.source} ({hint})")


def relative_to_instance(instance: InstanceConfig, path: str) -> str:
    """PATH (absolute, or relative to the instance's directory) as the state stores it;
    "" for the directory itself.  A path outside the directory is a one-line error."""
    absolute = os.path.normpath(os.path.join(instance.directory, path))
    relative = os.path.relpath(absolute, instance.directory)
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        raise ConfigError(f"{path}: not inside instance {instance.id}'s directory "
                          f"{instance.directory}")
    return "" if relative == os.curdir else relative


def open_state(roster: Roster, instance: InstanceConfig, *, readonly: bool,
               db: SlotDb | None = None) -> sqlite3.Connection:
    """`db` (default: the one this host's watcher uses, cli/state.state_db), opened."""
    from multiwatch.cli.state import state_db

    path = (db or state_db(roster, instance)).path
    if not os.path.exists(path):
        raise ConfigError(f"instance {instance.id}: no state database at {path} "
                          "(has this instance run yet?)")
    try:
        return connect(path, readonly=readonly)
    except (StateError, sqlite3.Error) as exc:
        raise ConfigError(f"instance {instance.id}: {exc}") from None


def resync(roster: Roster, instance_id: str, path: str | None,
           err: TextIO | None = None) -> int:
    """Queue re-announcements of the tracked files at or under PATH; print a summary."""
    err = err or sys.stderr
    instance = find_instance(roster, instance_id)
    relative = relative_to_instance(instance, path) if path else ""
    db = _outbox_db(roster, instance)
    conn = open_state(roster, instance, readonly=False, db=db)
    try:
        return _resync(conn, instance, relative, path, err, db.describe())
    except sqlite3.Error as exc:
        raise ConfigError(f"instance {instance.id}: state database: {exc}") from None
    finally:
        conn.close()


def _outbox_db(roster: Roster, instance: InstanceConfig) -> SlotDb:
    """The database whose outbox the running (or next) publisher of this host sends: for a
    replica, the active one's; a ConfigError when no outbox here would be sent."""
    from multiwatch.cli.state import state_db

    db = state_db(roster, instance)
    if db.role == STANDBY:
        raise ConfigError(
            f"instance {instance.id}: the replica running on this host is a standby (it "
            "publishes nothing; its state database is kept warm from the active replica's "
            "events): run resync on the host of the active replica (`multiwatch status` shows "
            "each replica's ROLE)")
    if (db.role == ACTIVE and db.running) or not instance.ha.enabled:
        return db
    if not roster.broker.embedded:
        raise ConfigError(
            f"instance {instance.id}: ha is enabled and no replica of it runs on this host: a "
            "replica starts as a standby, which sends nothing from its outbox (only if it "
            "takes over before another replica does), so re-announcements queued now may "
            "never go out. Run resync while this host's replica is the active one, or on the "
            "host of the active replica")
    # Embedded spool: the next replica to take the lease goes on from the instance's own
    # state.db and its outbox (watcher/standby.takeover_db).
    return SlotDb(slot_db_path(roster.state_dir, instance.id, 0), 0, running=False, role=None)


def _resync(conn: sqlite3.Connection, instance: InstanceConfig, relative: str,
            path: str | None, err: TextIO, which: str = "") -> int:
    single = tracked_file(conn, relative) if relative else None
    chosen: Iterator[TrackedFile] = (iter([TrackedFile(relative, single)]) if single
                                     else iter_files_under(conn, relative))
    total = 1 if single else _count_under(conn, relative)
    if path and total == 0:
        raise ConfigError(f"{path}: instance {instance.id} tracks no file there")
    waiting, waiting_bytes = outbox_usage(conn)
    if waiting + total > instance.outbox_max_events:
        raise ConfigError(
            f"instance {instance.id}: {total} re-announcements and the {waiting} events waiting "
            f"exceed its outbox_max_events ({instance.outbox_max_events}); resync a subtree, "
            "or raise the bound")
    resync_id = uuid.uuid4().hex
    room = instance.outbox_max_bytes - waiting_bytes
    queued = skipped = 0
    last_progress = time.monotonic()
    batch: list[Event] = []
    root = ConfinedRoot(instance.directory, follow_symlinks=instance.follow_symlinks)
    for seen, tracked in enumerate(chosen, start=1):
        if _changed_on_disk(root, tracked):
            skipped += 1
        else:
            batch.append(_event(instance, tracked, resync_id))
        if len(batch) >= BATCH or (batch and seen == total):
            size = sum(len(e.body) for e in batch)
            if size > room:
                raise ConfigError(
                    f"instance {instance.id}: outbox_max_bytes reached after {queued} of {total} "
                    "events (they are queued); resync the rest later or by subtree")
            _queue(conn, instance, batch, queued, total)
            queued, room, batch = queued + len(batch), room - size, []
        if time.monotonic() - last_progress >= PROGRESS_EVERY_SECONDS:
            last_progress = time.monotonic()
            print(f"resync {instance.id}: {seen} of {total} files looked at, {queued} queued",
                  file=err, flush=True)
    root.release()
    if batch:  # the table changed under us: fewer rows than counted
        _queue(conn, instance, batch, queued, total)
        queued += len(batch)
    note = (f" ({skipped} skipped: changed on disk since announced; the watcher announces "
            "those itself)") if skipped else ""
    where = f" in {which}" if which else ""
    events = "1 event" if queued == 1 else f"{queued} events"
    print(f"{events} queued for instance {instance.id}{where} (resync_id {resync_id}){note}",
          file=err)
    return 0


def _queue(conn: sqlite3.Connection, instance: InstanceConfig, batch: list[Event],
           queued: int, total: int) -> None:
    """Queue one batch; a failure says how many earlier batches are queued (they go out)."""
    try:
        queue_resync(conn, batch)
    except sqlite3.Error as exc:
        done = (f"; {queued} of {total} events were queued before it (they go out: resync "
                "the rest by subtree)") if queued else "; nothing was queued"
        raise ConfigError(f"instance {instance.id}: state database: {exc}{done}") from None


def _count_under(conn: sqlite3.Connection, relative: str) -> int:
    if not relative:
        return int(conn.execute("SELECT count(*) FROM files").fetchone()[0])
    low = os.fsencode(relative + "/")
    return int(conn.execute("SELECT count(*) FROM files WHERE path >= ? AND path < ?",
                            (low, low[:-1] + b"0")).fetchone()[0])


def _changed_on_disk(root: ConfinedRoot, tracked: TrackedFile) -> bool:
    """True if the file is gone or its (size, mtime, inode) differ from the recorded ones.

    Looked up as the watcher does, below the root's descriptor with no symlink on the way
    (confined.py): a path that now leads through a symlink is not in the tree."""
    try:
        st = stat_regular(root, tracked.relative_path)
    except OSError:
        return True
    if st is None:
        return True
    version = tracked.hashed.version
    return (st.st_size, st.st_mtime_ns, st.st_ino) != (version.size, version.mtime_ns,
                                                       version.inode)


def _event(instance: InstanceConfig, tracked: TrackedFile, resync_id: str) -> Event:
    hashed: Hashed = tracked.hashed
    return build_event(event_type=FILE_DISCOVERED, instance_id=instance.id,
                       watched_directory=instance.directory,
                       relative_path=tracked.relative_path, hashed=hashed, resync_id=resync_id)
