"""Which state database a replica (roster `ha`) on this host uses, for the commands that
open it (`multiwatch state`, `resync`, `explain`, `state forget-mount`).

A replica's database is one of `state.db`, `state.1.db`, … (slot 0, 1, …), each made its
own by the watcher lock of that slot (run_lock.replica_slot; watcher/standby.py picks one):
a standby keeps one warm while another replica holds `state.db`, and after a takeover the
active replica may go on from `state.<n>.db`.  Who runs what:

- the watcher child's main thread calls `mark_active` once it holds the lease and has its
  database: it records {"role": "active", "pid", "since"} in that slot's lock file;
- the CLI process calls `current_db`, which reads the records of the slots whose lock is
  held now.

Invariants:
- A record in a lock file was written by that slot's current holder, or by a holder that
  has exited since: a watcher that takes a slot empties its lock file first
  (run_lock.take_slot), and only the active replica writes one.  So a held slot whose file
  says "active" is the active replica's database; a held slot without a record is a
  standby's (or a replica's between taking the lease and recording it).
- Reading never takes a lock a watcher may be taking (slot_is_held).
- With no watcher running, the slot whose record is the newest is the database the last
  active replica on this host went on from.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass
from typing import Any

from multiwatch.config import ConfigError
from multiwatch.supervisor.run_lock import REPLICA_SLOTS, kernel_lock_holders, open_watcher_lock

ACTIVE = "active"
STANDBY = "standby"
_RECORD_BYTES = 4096


def slot_db_path(state_dir: str, instance_id: str, slot: int) -> str:
    """Slot 0: the instance's own state.db; slot n: state.<n>.db beside it (the watcher's
    standby.replica_db_path is this)."""
    from multiwatch.watcher.state import state_db_path

    path = state_db_path(state_dir, instance_id)
    return path if slot == 0 else os.path.join(os.path.dirname(path), f"state.{slot}.db")


def slot_of(db_path: str) -> int:
    """The slot of a database path (state.db: 0; state.<n>.db: n)."""
    parts = os.path.basename(db_path).split(".")
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else 0


@dataclass(frozen=True)
class SlotDb:
    """The database a command should address, and why."""

    path: str
    slot: int
    running: bool  # a watcher of this host holds it now
    role: str | None  # ACTIVE, STANDBY, or None (ha off, or nothing known)

    def describe(self) -> str:
        """'' for the instance's own state.db used in the usual way; else which one, e.g.
        "state.1.db, the active replica's"."""
        name = os.path.basename(self.path)
        if self.role == ACTIVE and self.running:
            return "" if self.slot == 0 else f"{name}, the active replica's"
        if self.role == ACTIVE:
            return "" if self.slot == 0 else f"{name}, the last active replica's on this host"
        if self.role == STANDBY:
            return f"{name}, a standby's (kept warm from the active replica's events)"
        return "" if self.slot == 0 else name


def mark_active(state_dir: str, instance_id: str, db_path: str) -> None:
    """Record that this process, now the active replica, goes on from `db_path` (whose
    slot's watcher lock it holds).  Best effort: a record it cannot write only leaves the
    commands addressing state.db."""
    with contextlib.suppress(OSError):
        fd = open_watcher_lock(state_dir, instance_id, slot_of(db_path))
        try:
            data = json.dumps({"role": ACTIVE, "pid": os.getpid(), "since": time.time()})
            os.ftruncate(fd, 0)
            os.pwrite(fd, data.encode(), 0)
        finally:
            os.close(fd)  # (another open file: the lock on the held one stays)


def slot_is_held(fd: int) -> bool:
    """Whether some process holds the flock of this open lock file, without taking it when
    it is free (a watcher taking it at that moment would find it held): the kernel's list
    first; only a file it lists is probed (shared, let go at once)."""
    holders = kernel_lock_holders(os.fstat(fd).st_ino)
    if holders is not None and not holders:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _record(fd: int) -> dict[str, Any]:
    try:
        record = json.loads(os.pread(fd, _RECORD_BYTES, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _since(record: dict[str, Any]) -> float:
    since = record.get("since")
    return float(since) if isinstance(since, (int, float)) else 0.0


def slots(state_dir: str, instance_id: str) -> list[tuple[int, bool, dict[str, Any]]]:
    """(slot, held now, record) of each slot whose lock file exists."""
    from multiwatch import state_dir as sd

    found = []
    with sd.private_dir_fd(state_dir, ["instances", instance_id], sd.VERIFY) as folder:
        if folder is None:
            return []
        names = set(os.listdir(folder))
    for slot in range(REPLICA_SLOTS):
        if ("watcher.lock" if slot == 0 else f"watcher.{slot}.lock") not in names:
            continue
        fd = open_watcher_lock(state_dir, instance_id, slot)
        try:
            found.append((slot, slot_is_held(fd), _record(fd)))
        finally:
            os.close(fd)
    return found


def current_db(state_dir: str, instance_id: str, *, ha: bool) -> SlotDb:
    """The database the watcher of this host uses: without ha, state.db.  With ha: the
    active replica's (the newest if a frozen one holds another); else a running standby's
    (state.db first); with none running, the one the last active replica went on from."""
    try:
        found = slots(state_dir, instance_id)
    except (OSError, ConfigError):  # (lock files this user may not open: nothing known)
        found = []
    own = SlotDb(slot_db_path(state_dir, instance_id, 0), 0,
                 running=any(held for slot, held, _ in found if slot == 0), role=None)
    if not ha:
        return own

    def newest(candidates: list[tuple[int, bool, dict[str, Any]]]) -> int | None:
        marked = [(_since(r), s) for s, _, r in candidates if r.get("role") == ACTIVE]
        return max(marked)[1] if marked else None

    held = [entry for entry in found if entry[1]]
    if (slot := newest(held)) is not None:
        return SlotDb(slot_db_path(state_dir, instance_id, slot), slot, True, ACTIVE)
    if held:
        slot = min(s for s, _, _ in held)
        return SlotDb(slot_db_path(state_dir, instance_id, slot), slot, True, STANDBY)
    last = newest([entry for entry in found
                   if os.path.exists(slot_db_path(state_dir, instance_id, entry[0]))])
    if last is not None:
        return SlotDb(slot_db_path(state_dir, instance_id, last), last, False, ACTIVE)
    return own
