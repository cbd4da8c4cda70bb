"""`multiwatch state forget-mount`: an instance no longer waits for the mount it remembers.

A watcher remembers the filesystem its directory was on (watcher/mount.py) and, at start,
waits while that mount is gone, so a share that failed to mount is not taken for a tree
whose files were all deleted.  When the directory moved to another filesystem for good
(the share replaced by a local disk at the same path), this drops the memory; the next
start watches the directory on whatever filesystem it is then.  A replica (`ha`) may go on
from any of its state databases (state.db, state.<n>.db: replica_slots.py): each forgets.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TextIO

from multiwatch.cli.state import chosen_instances
from multiwatch.config import Roster
from multiwatch.replica_slots import slot_db_path
from multiwatch.supervisor.run_lock import REPLICA_SLOTS, open_watcher_lock, try_lock_exclusive
from multiwatch.watcher.mount import META_KEY, Mount
from multiwatch.watcher.state import StateStore


def forget_mount(roster: Roster, ids: Sequence[str] | None,
                 out: TextIO | None = None) -> int:
    """Drop the remembered mount of each chosen instance; exit 1 if one is running."""
    out = out or sys.stdout  # now, not at import: tests swap sys.stdout per test
    status = 0
    for instance in chosen_instances(roster, ids):
        slots = [slot for slot in range(REPLICA_SLOTS if instance.ha.enabled else 1)
                 if os.path.exists(slot_db_path(roster.state_dir, instance.id, slot))]
        if not slots:
            print(f"{instance.id}: no state database (it has not run): nothing remembered",
                  file=out)
            continue
        locks = [open_watcher_lock(roster.state_dir, instance.id, slot) for slot in slots]
        try:
            if not all(try_lock_exclusive(lock) for lock in locks):
                # its watcher keeps what it expects in memory
                print(f"{instance.id}: its watcher is running; stop multiwatch first "
                      "(the running watcher keeps the mount it expects)", file=sys.stderr)
                status = 1
                continue
            remembered = None
            for slot in slots:
                store = StateStore(slot_db_path(roster.state_dir, instance.id, slot))
                try:
                    remembered = Mount.from_json(store.meta(META_KEY)) or remembered
                    store.set_meta(META_KEY, None)
                finally:
                    store.close()
        finally:
            for lock in locks:
                os.close(lock)
        if remembered is None:
            print(f"{instance.id}: no mount remembered", file=out)
        else:
            print(f"{instance.id}: forgot the {remembered.fs_type} mount "
                  f"{remembered.mount_point} ({remembered.source}); the next start watches "
                  f"{instance.directory} on the filesystem it is on then", file=out)
    return status

