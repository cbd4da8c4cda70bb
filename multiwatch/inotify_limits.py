"""The kernel's inotify limits: read them, count what this user holds, say what is needed.

Imported by a watcher child when the kernel refuses it an inotify instance or a watch
(watcher/observe.py: one WARNING line, then polling) and by `multiwatch check`
(cli/preflight.py: a warning when the roster needs more than the limits allow).  It only
reads /proc and walks directories, each within a deadline; it never changes a limit.

How the kernel counts (fs/notify/inotify, kernel/ucount.c): every inotify instance and
every watch is charged to the effective uid that made it, in its user namespace and in
every namespace above it (there, to the uid that created the namespace below).  The
initial namespace's limits are the sysctls `fs.inotify.max_user_instances` and
`fs.inotify.max_user_watches`; a user namespace's own are `user.max_inotify_instances` and
`user.max_inotify_watches` (/proc/sys/user, which shows the current namespace's).  The
smaller of the two binds, and is the one named.  What other processes of the uid hold is
counted from /proc/*/fdinfo: a container sees only its own processes, while the host's
processes of the same uid count too, so a count is "at least".
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import time
from dataclasses import dataclass

PROC = "/proc"
PROC_SYS = "/proc/sys"
INSTANCES = "instances"
WATCHES = "watches"
# Walking /proc or a tree is cut off after this long (the result then says "at least").
COUNT_SECONDS = 2.0
# How a watcher child names itself (setproctitle in watcher/main.py), followed by its id.
WATCHER_TITLE = "multiwatch: watcher "
_SYSCTLS = {  # kind -> (the initial namespace's sysctl, the user namespace's)
    INSTANCES: ("fs.inotify.max_user_instances", "user.max_inotify_instances"),
    WATCHES: ("fs.inotify.max_user_watches", "user.max_inotify_watches"),
}


@dataclass(frozen=True)
class Limit:
    """The limit that binds for one kind (instances or watches), by its sysctl name."""

    kind: str
    sysctl: str
    value: int

    def raise_to(self, needed: int) -> str:
        """The command that raises the limit to `needed` (rounded up, for headroom)."""
        return f"sysctl -w {self.sysctl}={suggested(self.kind, needed)}"


def suggested(kind: str, needed: int) -> int:
    """`needed` rounded up with room to grow: to a multiple of 128 instances or 65,536
    watches (a watch costs the kernel about 1 KiB, only while it exists)."""
    step = 128 if kind == INSTANCES else 65_536
    return -(-max(needed, 1) // step) * step


def read_limit(kind: str, proc_sys: str = PROC_SYS) -> Limit | None:
    """The binding limit of `kind` (see the module), or None when /proc does not say."""
    found: Limit | None = None
    for sysctl in _SYSCTLS[kind]:
        path = os.path.join(proc_sys, *sysctl.split("."))
        try:
            with open(path) as handle:
                value = int(handle.read().strip())
        except (OSError, ValueError):
            continue
        if found is None or value < found.value:  # a tie names the host's sysctl
            found = Limit(kind, sysctl, value)
    return found


@dataclass(frozen=True)
class Holder:
    """One process of this uid holding inotify instances (and their watches)."""

    pid: int
    ppid: int
    instances: int
    watches: int
    title: str = ""  # its command line's first word (a watcher's: "multiwatch: watcher ID")


@dataclass(frozen=True)
class Held:
    """What this uid's processes hold, as far as /proc shows; `complete` False when the
    count stopped at its deadline."""

    holders: tuple[Holder, ...]
    watchers_by_parent: dict[int, int]  # ppid -> this uid's watchers (WATCHER_TITLE) under it
    complete: bool = True

    @property
    def instances(self) -> int:
        return sum(h.instances for h in self.holders)

    @property
    def watches(self) -> int:
        return sum(h.watches for h in self.holders)

    def apart_from(self, pid: int) -> Held:
        """The same count without the process `pid` (its own watches are to be redone)."""
        return Held(tuple(h for h in self.holders if h.pid != pid), self.watchers_by_parent,
                    self.complete)


def held_by(uid: int, *, deadline: float, proc: str = PROC,
            namespace: str | None = None) -> Held:
    """The inotify instances and watches held by the processes of `uid` (their euid, as
    /proc/PID shows it), only those in the user `namespace` if given (`user:[inode]`, see
    counted_in): one readlink per open descriptor, fdinfo only for inotify ones."""
    holders: list[Holder] = []
    by_parent: dict[int, int] = {}
    try:
        pids = [int(name) for name in os.listdir(proc) if name.isdigit()]
    except OSError:
        return Held((), {}, complete=False)
    for pid in pids:
        if time.monotonic() >= deadline:
            return Held(tuple(holders), by_parent, complete=False)
        with contextlib.suppress(OSError, ValueError, IndexError):
            if os.stat(f"{proc}/{pid}").st_uid != uid:
                continue
            if namespace is not None and os.readlink(f"{proc}/{pid}/ns/user") != namespace:
                continue
            with open(f"{proc}/{pid}/stat") as handle:  # "pid (comm) state ppid ..."
                ppid = int(handle.read().rpartition(")")[2].split()[1])
            title = _title(proc, pid)
            if title.startswith(WATCHER_TITLE):
                by_parent[ppid] = by_parent.get(ppid, 0) + 1
            instances = watches = 0
            for fd in os.listdir(f"{proc}/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"{proc}/{pid}/fd/{fd}") != "anon_inode:inotify":
                        continue
                    with open(f"{proc}/{pid}/fdinfo/{fd}") as info:
                        watches += sum(1 for line in info if line.startswith("inotify wd:"))
                    instances += 1
            if instances:
                holders.append(Holder(pid, ppid, instances, watches, title))
    return Held(tuple(holders), by_parent)


def _title(proc: str, pid: int) -> str:
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as handle:
            return os.fsdecode(handle.read().split(b"\0")[0])
    except OSError:
        return ""


def counted_in(limit: Limit, proc: str = PROC) -> str | None:
    """The user namespace whose processes count against `limit`: this one for a
    namespace's own (user.max_inotify_*), None (every namespace) for the host's sysctl."""
    if limit.sysctl.startswith("fs."):
        return None
    try:
        return os.readlink(f"{proc}/self/ns/user")
    except OSError:
        return None


def count_directories(root: str, *, recursive: bool, deadline: float) -> tuple[int, bool]:
    """Directories under `root` (itself included: one watch each) and whether the count
    ended before `deadline`.  One scandir per directory, no stat of files (d_type); a
    symlink is never followed.  A missing root counts as one (a watcher waits for it).
    Excluded directories are counted too: an upper bound when the roster excludes some."""
    if not recursive:
        return 1, True
    count, pending = 0, [root]
    while pending:
        if time.monotonic() >= deadline:
            return count, False
        folder = pending.pop()
        count += 1
        with contextlib.suppress(OSError), os.scandir(folder) as entries:
            pending.extend(e.path for e in entries if e.is_dir(follow_symlinks=False))
    return count, True


def at_least(count: int, complete: bool) -> str:
    """A count for a sentence: "1,234", or "1,234+" when counting stopped early."""
    return f"{count:,}" + ("" if complete else "+")


# ---------------------------------------------------------------- a watcher refused


def _descriptors_exhausted() -> str:
    """"" unless this process holds as many open files as RLIMIT_NOFILE allows (then
    inotify_init's EMFILE is that limit, not the inotify one): the words saying so."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        held = len(os.listdir("/proc/self/fd")) - 1  # (the listing's own descriptor)
    except OSError:
        return ""
    if soft == resource.RLIM_INFINITY or held < soft - 1:
        return ""
    return (f"this process has {held:,} open files of its {soft:,} (RLIMIT_NOFILE): raise "
            f"LimitNOFILE= (systemd) or ulimit -n")


def instance_refused(exc: OSError, *, polling: str, proc: str = PROC,
                     proc_sys: str = PROC_SYS) -> str:
    """The one line a watcher logs when the kernel refused it an inotify instance.

    The value needed counts this watcher and every watcher beside it (same parent: this
    supervisor's, each wanting one instance) plus what the uid's other processes hold."""
    if exc.errno == errno.EMFILE and (words := _descriptors_exhausted()):
        return f"inotify refused an instance ({words}); {polling} instead"
    if exc.errno == errno.ENFILE:
        return (f"inotify refused an instance: the system's open-file table is full "
                f"(fs.file-max); {polling} instead")
    limit = read_limit(INSTANCES, proc_sys)
    if limit is None:
        return f"inotify refused an instance ({exc.strerror or exc}); {polling} instead"
    held = held_by(os.geteuid(), deadline=time.monotonic() + COUNT_SECONDS, proc=proc,
                   namespace=counted_in(limit, proc))
    beside = max(held.watchers_by_parent.get(os.getppid(), 1) - 1, 0)
    elsewhere = sum(h.instances for h in held.holders if h.ppid != os.getppid())
    needed = max(elsewhere + beside + 1, held.instances + 1, limit.value + 1)
    return (f"inotify refused an instance: {limit.sysctl}={limit.value:,} reached (this user "
            f"holds {at_least(held.instances, held.complete)}: "
            f"{held.instances - elsewhere:,} in the {beside:,} watchers beside this one, "
            f"{elsewhere:,} elsewhere); {polling} instead; {_needs(limit, needed)}")


def watch_refused(exc: OSError, root: str, *, recursive: bool, polling: str,
                  proc: str = PROC, proc_sys: str = PROC_SYS) -> str:
    """The one line a watcher logs when the kernel refused it a watch: the value needed
    is this tree's directories (one watch each) plus what the uid's other processes hold
    (this process's own watches are given back when it falls back)."""
    limit = read_limit(WATCHES, proc_sys)
    if limit is None:
        return f"inotify refused a watch ({exc.strerror or exc}); {polling} instead"
    deadline = time.monotonic() + COUNT_SECONDS
    held = held_by(os.geteuid(), deadline=deadline, proc=proc,
                   namespace=counted_in(limit, proc)).apart_from(os.getpid())
    directories, complete = count_directories(root, recursive=recursive,
                                              deadline=time.monotonic() + COUNT_SECONDS)
    needed = max(held.watches + directories, limit.value + 1)
    return (f"inotify refused a watch: {limit.sysctl}={limit.value:,} reached (this tree "
            f"has {at_least(directories, complete)} directories, one watch each; this "
            f"user's other processes hold {at_least(held.watches, held.complete)}); "
            f"{polling} instead; {_needs(limit, needed)}")


def _needs(limit: Limit, needed: int) -> str:
    """The value needed and the command that sets it (with room to grow), and where."""
    where = ("as root on the host" if limit.sysctl.startswith("fs.")
             else "as root of this user namespace")
    return (f"needs {limit.sysctl} >= {needed:,}: {where}, {limit.raise_to(needed)} "
            f"(to keep it: README, Deploying it)")
