"""One supervisor per instance: locks under state_dir that the kernel releases at death.

- `instances/<id>/run.lock` is held (flock, exclusive) by the supervisor that runs <id>,
  from before its watcher starts until it has stopped, and names that supervisor (pid,
  roster) for the error a second `run` prints.  Per instance, not per state_dir: the
  exports run one `multiwatch run --only <id>` per instance on one state_dir.
  With `ha` enabled for <id> it is held shared (LOCK_SH) instead: replicas on one host and
  state_dir run side by side (watcher/lease.py decides which one announces), while a
  supervisor without `ha` for <id> is still refused beside them, and they beside it.
- `instances/<id>/watcher.lock` is held by the watcher of <id> itself, for the moments
  after a supervisor's death when its watchers are still stopping.  A replica (`ha`) takes
  the first free of `watcher.lock`, `watcher.<n>.lock` with the matching state database
  (`replica_slot`): a standby from its start, keeping that database warm
  (watcher/standby.py), a cold one once it holds the lease.
- `instances/<id>/lease.lock` is the lease of <id>'s replicas with the embedded spool.
- `supervisors/<pid>.lock` is held by each supervisor for its whole life and records its
  pid, roster, --only and the instances it runs: how `multiwatch reload|stop` find it.

flock, not fcntl locks: a flock belongs to the open file, so a check that opens and closes
the same file (state_dir.prepare) does not drop it, and the kernel drops it when the
holder dies, even by SIGKILL.  The descriptors are close-on-exec: watchers hold none.
Instance lock files are never removed (removing a lock file races with its next taker);
a supervisor removes its own supervisors/<pid>.lock when it exits cleanly.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from multiwatch import state_dir as sd
from multiwatch.config import ConfigError

RUN_LOCK = "run.lock"
WATCHER_LOCK = "watcher.lock"
LEASE_LOCK = "lease.lock"
REPLICA_SLOTS = 4  # watcher.lock, watcher.1.lock ... watcher.3.lock
SUPERVISORS = "supervisors"
SUPERVISOR_TITLE = "multiwatch: supervisor"
_RECORD_BYTES = 64 * 1024
_PROC_LOCKS = "/proc/locks"


class RunLockHeld(ConfigError):
    """Another process runs this instance; the message names its pid (exit 2 for `run`)."""


def roster_path(source: str) -> str | None:
    """How a roster is recorded and compared: its real path; None for the environment."""
    return os.path.realpath(source) if source and not source.startswith("<") else None


class InstanceLocks:
    """The run.lock of every instance this supervisor runs."""

    def __init__(self, state_dir: str, roster: str | None) -> None:
        self._state_dir = state_dir
        self._record = {"pid": os.getpid(), "roster": roster}
        self._fds: dict[str, int] = {}
        self._shared: dict[str, bool] = {}

    @property
    def held(self) -> list[str]:
        return sorted(self._fds)

    def acquire(self, instance_id: str, *, replica: bool = False) -> None:
        """Take <id>'s lock (a no-op if held); RunLockHeld naming the holder otherwise.
        `replica` (ha enabled): shared with the other replicas on this state_dir."""
        if instance_id in self._fds:
            return
        path = os.path.join(self._state_dir, "instances", instance_id, RUN_LOCK)
        with sd.private_dir_fd(self._state_dir, ["instances", instance_id]) as folder:
            assert folder is not None  # (CREATE policy)
            fd = sd.private_file(folder, RUN_LOCK, path)
        if not _try_lock(fd, fcntl.LOCK_SH if replica else fcntl.LOCK_EX):
            # The record names an exclusive holder; replicas (shared) write none, and a
            # killed holder's record stays behind them: the kernel says who holds it now.
            holders = kernel_lock_holders(os.fstat(fd).st_ino)
            holder = _holder_record(fd) if holders is None or len(holders) == 1 else {}
            if holders is not None and holder.get("pid") not in holders:
                holder = {"pids": sorted(holders)} if holders else {}
            os.close(fd)
            raise RunLockHeld(_held_message(instance_id, holder, path, replica=replica))
        if not replica:  # shared holders leave the file alone: the others read it
            _write_record(fd, self._record)
        self._fds[instance_id] = fd
        self._shared[instance_id] = replica

    def acquire_all(self, instance_ids: list[str], replicas: set[str] | None = None) -> None:
        """All or none: on the first one held elsewhere, release what was taken and raise.
        `replicas`: the ids with ha enabled (see acquire)."""
        taken = [i for i in instance_ids if i not in self._fds]
        try:
            for instance_id in taken:
                self.acquire(instance_id, replica=instance_id in (replicas or set()))
        except BaseException:
            for instance_id in taken:
                self.release(instance_id)
            raise

    def change_mode(self, instance_id: str, *, replica: bool) -> None:
        """Hold <id>'s lock shared (`replica`: ha now enabled) or exclusive from now on, if
        held in the other mode (a reload toggled ha).  Exclusive is refused (RunLockHeld)
        while other replicas hold it; <id> then stays in `held`, shared as before, unless
        all of them let go and a supervisor without ha took it in that instant."""
        fd = self._fds.get(instance_id)
        if fd is None or self._shared[instance_id] == replica:
            return
        # flock converts in place, but a refused conversion drops the lock held before.
        if _try_lock(fd, fcntl.LOCK_SH if replica else fcntl.LOCK_EX):
            if replica:
                os.ftruncate(fd, 0)  # (shared holders keep no record)
            else:
                _write_record(fd, self._record)
            self._shared[instance_id] = replica
            return
        others = (kernel_lock_holders(os.fstat(fd).st_ino) or set()) - {os.getpid()}
        if not _try_lock(fd, fcntl.LOCK_SH):
            self._fds.pop(instance_id)
            self._shared.pop(instance_id)
            os.close(fd)
        who = f" (pid {', '.join(map(str, sorted(others)))})" if others else ""
        raise RunLockHeld(
            f"ha turned off for instance {instance_id}, but other replicas on this state_dir"
            f"{who} run it: a watcher without ha beside them would announce every file "
            "twice. Stop them first, or keep ha on")

    def release(self, instance_id: str) -> None:
        fd = self._fds.pop(instance_id, None)
        shared = self._shared.pop(instance_id, False)
        if fd is not None:
            if not shared:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)  # (a reader must not take the old content for a holder)
            os.close(fd)  # closing the last descriptor of the open file drops the flock

    def release_all(self) -> None:
        for instance_id in list(self._fds):
            self.release(instance_id)


def _held_message(instance_id: str, holder: dict[str, Any], path: str, *,
                  replica: bool = False) -> str:
    pids = [holder["pid"]] if holder.get("pid") else holder.get("pids", [])
    listed = ", ".join(map(str, pids))
    who = (f"pid {listed}" if len(pids) == 1 else f"pids {listed}" if pids
           else "another process")
    holds = "hold" if len(pids) > 1 else "holds"
    roster = holder.get("roster")
    how = f" (multiwatch run -c {roster})" if roster else ""
    stop = (f"multiwatch stop -c {roster}" if roster
            else "multiwatch stop, in its environment" if holder.get("pid")  # (no roster file)
            else f"kill {' '.join(map(str, pids))}" if pids else "multiwatch stop -c <its roster>")
    them = "them" if len(pids) > 1 else "it"
    if replica:
        return (f"instance {instance_id} is already run without ha by {who}{how}, which {holds} "
                f"{path}: a replica beside it would announce every file twice. Stop {them} "
                f"first ({stop}), or enable ha for {instance_id} there too")
    return (f"instance {instance_id} is already run by {who}{how}, which {holds} {path}: two "
            f"supervisors would announce every file twice. Stop {them} first ({stop}), enable "
            "ha for it in both rosters (replicas: one announces, the other stands by), or "
            "run other instances with --only")


class SupervisorFile:
    """supervisors/<pid>.lock: held for the supervisor's life, found by reload/stop."""

    def __init__(self, state_dir: str) -> None:
        self._state_dir = state_dir
        self._name = f"{os.getpid()}.lock"
        self._fd: int | None = None

    def acquire(self, record: dict[str, Any]) -> None:
        with sd.private_dir_fd(self._state_dir, [SUPERVISORS]) as folder:
            assert folder is not None  # (CREATE policy)
            path = os.path.join(self._state_dir, SUPERVISORS, self._name)
            fd = sd.private_file(folder, self._name, path)
            # Only a process with our pid takes this name, and none but us lives: the lock
            # is ours, once a `stop` looking at a stale file of that name lets go of it.
            if not _lock_with_deadline(fd):
                os.close(fd)
                raise OSError(errno.EWOULDBLOCK, f"cannot lock {path}")
        self._fd = fd
        self.update(record)

    def update(self, record: dict[str, Any]) -> None:
        if self._fd is not None:
            _write_record(self._fd, {"pid": os.getpid(), **record})

    def release(self) -> None:
        """Remove the file, then let go of the lock (clean exits only; a crash leaves a
        stale file, which reload/stop ignore: nobody holds its lock)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError), \
                sd.private_dir_fd(self._state_dir, [SUPERVISORS], sd.VERIFY) as folder:
            if folder is not None:
                os.unlink(self._name, dir_fd=folder)
        os.close(self._fd)
        self._fd = None


def open_watcher_lock(state_dir: str, instance_id: str, slot: int = 0) -> int:
    """instances/<id>/watcher.lock, which each watcher holds while it runs: a watcher left
    by a killed supervisor (SIGTERMed by the kernel, still flushing) holds it until it has
    exited, so the next one waits instead of sharing the state database with it.
    slot n > 0: watcher.<n>.lock, a replica's own (see replica_slot)."""
    return _instance_file(state_dir, instance_id,
                          WATCHER_LOCK if slot == 0 else f"watcher.{slot}.lock")


def open_lease_lock(state_dir: str, instance_id: str) -> int:
    """instances/<id>/lease.lock: the embedded spool's lease (watcher/lease.py FileLease)."""
    return _instance_file(state_dir, instance_id, LEASE_LOCK)


def replica_slot(state_dir: str, instance_id: str, *,
                 first: int = 0) -> tuple[int, int] | None:
    """A replica's state database: (slot, held descriptor) of the first watcher lock free
    now, from slot `first`.  Slot 0 is the instance's own state.db: free once the replica
    that held the lease before has exited, so the new one goes on from its state and outbox.
    A later slot is taken only while another watcher holds slot 0 (the active replica, a
    frozen or cut-off one, or a standby keeping its own warm state: watcher/standby.py):
    two watchers never share a state database.  None: all held."""
    for slot in range(first, REPLICA_SLOTS):
        fd = take_slot(state_dir, instance_id, slot)
        if fd is not None:
            return slot, fd
    return None


def take_slot(state_dir: str, instance_id: str, slot: int) -> int | None:
    """The held descriptor of watcher lock `slot` if it is free now, else None.  Taken, its
    file is emptied: what an earlier holder recorded there (replica_slots.mark_active) is
    not this holder's."""
    fd = open_watcher_lock(state_dir, instance_id, slot)
    if try_lock_exclusive(fd):
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        return fd
    os.close(fd)
    return None


def _instance_file(state_dir: str, instance_id: str, name: str) -> int:
    path = os.path.join(state_dir, "instances", instance_id, name)
    with sd.private_dir_fd(state_dir, ["instances", instance_id]) as folder:
        assert folder is not None  # (CREATE policy)
        return sd.private_file(folder, name, path)


def try_lock_exclusive(fd: int) -> bool:
    return _try_lock(fd, fcntl.LOCK_EX)


# ------------------------------------------------------------------- finding supervisors


def process_manager() -> dict[str, str]:
    """For the supervisor's record: the supervisord program running this process (from the
    variables supervisord sets for its programs), which restarts it when it exits; {} if
    none.  Read at start: setproctitle overwrites what /proc/<pid>/environ shows."""
    program = os.environ.get("SUPERVISOR_PROCESS_NAME")
    if not program or not os.environ.get("SUPERVISOR_ENABLED"):
        return {}
    return {"supervisord_program": program,
            "supervisord_url": os.environ.get("SUPERVISOR_SERVER_URL", "")}


@dataclass(frozen=True)
class RunningSupervisor:
    """A supervisors/*.lock whose lock is held, and what it records."""

    path: str
    pid: int
    roster: str | None
    only: list[str] | None
    instances: list[str]
    inode: int
    supervisord_program: str | None = None  # run by supervisord as this program
    supervisord_url: str = ""


def running_supervisors(state_dir: str) -> Iterator[RunningSupervisor]:
    """The supervisor files of state_dir whose lock someone holds (the rest are stale)."""
    with sd.private_dir_fd(state_dir, [SUPERVISORS], sd.VERIFY) as folder:
        if folder is None:
            return
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".lock"):
                continue
            path = os.path.join(state_dir, SUPERVISORS, name)
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                             dir_fd=folder)
            except OSError:
                continue  # gone meanwhile (a supervisor exiting), or a symlink: not ours
            try:
                info = os.fstat(fd)
                if info.st_uid != os.geteuid() or not _is_regular(info.st_mode):
                    continue
                if _try_lock(fd, fcntl.LOCK_SH):
                    continue  # nobody holds it: the supervisor is gone
                record = _holder_record(fd)
            finally:
                os.close(fd)
            yield _running(path, record, info.st_ino)


def _running(path: str, record: dict[str, Any], inode: int) -> RunningSupervisor:
    def names(value: Any) -> list[str]:
        return [str(v) for v in value] if isinstance(value, list) else []

    pid = record.get("pid")
    only = record.get("only")
    return RunningSupervisor(path=path, pid=pid if isinstance(pid, int) else 0,
                             roster=record.get("roster") if isinstance(record.get("roster"),
                                                                        str) else None,
                             only=names(only) if only is not None else None,
                             instances=names(record.get("instances")), inode=inode,
                             supervisord_program=_text(record.get("supervisord_program")),
                             supervisord_url=_text(record.get("supervisord_url")) or "")


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def why_not_the_holder(supervisor: RunningSupervisor) -> str | None:
    """None if supervisor.pid is a multiwatch supervisor that holds its file's lock now;
    otherwise why not (pid reused by another program, a planted file, an exited one)."""
    pid = supervisor.pid
    if pid <= 0:
        return f"{supervisor.path} names no pid"
    holders = kernel_lock_holders(supervisor.inode)
    if holders is not None and pid not in holders:
        return f"pid {pid} does not hold the lock on {supervisor.path}"
    try:
        import psutil

        title = " ".join(psutil.Process(pid).cmdline()).strip()
    except Exception:  # noqa: BLE001 - psutil.NoSuchProcess, AccessDenied, ...
        return f"pid {pid} (named by {supervisor.path}) is not running"
    if not title.startswith(f"{SUPERVISOR_TITLE} "):
        return f"pid {pid} (named by {supervisor.path}) is not a multiwatch supervisor: {title}"
    with contextlib.suppress(FileNotFoundError):
        if os.stat(supervisor.path, follow_symlinks=False).st_ino == supervisor.inode:
            return None
    return f"{supervisor.path} was removed meanwhile: its supervisor has exited"


def kernel_lock_holders(inode: int) -> set[int] | None:
    """Pids the kernel says hold a flock on a file with this inode; None if /proc/locks
    cannot be read (not Linux).  Inode only: on btrfs or overlayfs the device numbers of
    /proc/locks and stat() differ; the pid and title checks make the match certain."""
    try:
        with open(_PROC_LOCKS, encoding="ascii", errors="replace") as locks:
            lines = locks.readlines()
    except OSError:
        return None
    holders = set()
    for line in lines:
        fields = line.split()
        # ("->" marks a waiter; NFS implements flock with POSIX locks, shown as such)
        if len(fields) < 6 or fields[1] not in ("FLOCK", "POSIX"):
            continue
        with contextlib.suppress(ValueError):
            if int(fields[5].rsplit(":", 1)[-1]) == inode:
                holders.add(int(fields[4]))
    return holders


# ------------------------------------------------------------------- small helpers


def _try_lock(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _lock_with_deadline(fd: int, seconds: float = 2.0) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while not _try_lock(fd, fcntl.LOCK_EX):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def _write_record(fd: int, record: dict[str, Any]) -> None:
    data = json.dumps(record).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _holder_record(fd: int) -> dict[str, Any]:
    """What the holder wrote; it writes just after locking, so an empty or half-written
    record is read again for a moment; {} if it stays unreadable."""
    import time

    deadline = time.monotonic() + 1.0
    while True:
        try:
            record = json.loads(os.pread(fd, _RECORD_BYTES, 0))
            if isinstance(record, dict):
                return record
        except ValueError:
            pass
        if time.monotonic() >= deadline:
            return {}
        time.sleep(0.02)


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)
