"""`multiwatch state export` and `multiwatch state backup`: tracked state, safely, while running.

Both read each instance's database through a read-only sqlite connection, which WAL mode
allows next to the running writer; backup uses sqlite's online backup API, so the copy
is a consistent snapshot even while events are being recorded.  For a replica (`ha`) the
database is the one the watcher of this host uses (replica_slots.current_db), named on
stderr when it is not the instance's state.db.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from collections.abc import Sequence
from typing import TextIO

from multiwatch.config import ConfigError, InstanceConfig, Roster
from multiwatch.replica_slots import SlotDb, current_db
from multiwatch.watcher.state import StateError, connect, iter_files


def chosen_instances(roster: Roster, ids: Sequence[str] | None) -> list[InstanceConfig]:
    if not ids:
        return list(roster.instances)
    known = {i.id: i for i in roster.instances}
    missing = [i for i in ids if i not in known]
    if missing:
        import difflib  # only for a mistake

        guesses = "".join(f"; {i}: did you mean {close[0]}?" for i in missing
                          if (close := difflib.get_close_matches(i, list(known), n=1)))
        raise ConfigError(f"--instance {', '.join(missing)}: no such instance in {roster.source} "
                          f"(instances: {', '.join(sorted(known))}){guesses}")
    return [known[i] for i in ids]


def export_state(roster: Roster, ids: Sequence[str] | None,
                 out: TextIO | None = None) -> int:
    """Write every tracked file of the chosen instances as one JSON object per line."""
    out = out or sys.stdout  # now, not at import: tests swap sys.stdout per test
    for instance in chosen_instances(roster, ids):
        conn = _open(roster, instance, say_which=True)
        try:
            for tracked in iter_files(conn):
                hashed = tracked.hashed
                out.write(json.dumps({
                    "instance_id": instance.id,
                    "path": os.path.join(instance.directory, tracked.relative_path),
                    "relative_path": tracked.relative_path,
                    "size": hashed.version.size,
                    "mtime_ns": hashed.version.mtime_ns,
                    "inode": hashed.version.inode,
                    "sha256_hash": hashed.sha256,
                    "xxh128_hash": hashed.xxh128,
                }, ensure_ascii=True) + "\n")
        finally:
            conn.close()
    return 0


def backup_state(roster: Roster, ids: Sequence[str] | None, destination: str) -> int:
    """Copy each chosen instance's database to DESTINATION/<id>.state.db (online backup)."""
    os.makedirs(destination, mode=0o700, exist_ok=True)
    for instance in chosen_instances(roster, ids):
        db = state_db(roster, instance)
        source = _open(roster, instance, db=db)
        target_path = os.path.join(destination, f"{instance.id}.state.db")
        try:
            _private_file(target_path)
        except OSError as exc:
            source.close()
            raise ConfigError(f"cannot write {target_path}: {exc.strerror or exc}") from None
        target = sqlite3.connect(target_path)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
        which = db.describe()
        print(f"{instance.id}: {target_path}" + (f" (from {which})" if which else ""),
              file=sys.stderr)
    return 0


def _private_file(path: str) -> None:
    """A copy holds the paths and hashes of private trees: 0600, never through a link."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def state_db(roster: Roster, instance: InstanceConfig) -> SlotDb:
    """The database of `instance` the commands address: its state.db, or for a replica
    (ha) the one the watcher of this host uses (replica_slots.current_db)."""
    return current_db(roster.state_dir, instance.id, ha=instance.ha.enabled)


def _open(roster: Roster, instance: InstanceConfig, *, db: SlotDb | None = None,
          say_which: bool = False) -> sqlite3.Connection:
    db = db or state_db(roster, instance)
    if say_which and (which := db.describe()):
        print(f"{instance.id}: reading {which}", file=sys.stderr)
    try:
        return connect(db.path, readonly=True)
    except (StateError, sqlite3.Error) as exc:
        raise ConfigError(f"instance {instance.id}: {exc}") from exc
