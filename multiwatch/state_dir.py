"""Trust in the state directory: private modes, our ownership, no symbolic links.

Everything multiwatch keeps under `state_dir` (paths and hashes of private trees, the
outbox it publishes) must be readable and writable by the user it runs as and nobody
else.  So every directory and file it creates there is made 0700/0600 whatever the umask,
and whatever already exists is checked before use:

- a symbolic link, or something owned by another user, is refused with the fix to run;
- a world-writable directory or file is refused (anyone may have planted entries in it);
- one of ours that others may read or (group) write, as older versions and loose umasks
  left them, is tightened, with a log line.

`state_dir` itself may also belong to root with our group (a Kubernetes volume mounted with
`fsGroup`): root can do anything anyway, and the group is ours.  Components are opened from
their parent's descriptor with O_NOFOLLOW, so nothing can be swapped between check and use.
Standard library only: the watcher child imports this.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shlex
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


class UnsafeStateError(OSError):
    """A state path is not ours alone: its message names the path and the fix."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unsafe state path"


@dataclass(frozen=True)
class Policy:
    """create: make what is missing and tighten what is too open (run, a watcher);
    otherwise only look and refuse (check, state export)."""

    create: bool


CREATE = Policy(create=True)
VERIFY = Policy(create=False)


def prepare(state_dir: str, instance_ids: Iterable[str], *, embedded: bool,
            policy: Policy = CREATE) -> None:
    """The whole tree `run` uses: state_dir, instances/<id>/ and their databases and lock
    files, the embedded spool, hash-slots/, supervisors/ (supervisor/run_lock.py).  Raises
    UnsafeStateError for the first problem."""
    if not policy.create and not os.path.lexists(state_dir):
        return  # nothing yet: run creates it private
    with open_state_dir(state_dir, policy) as top:
        if top is None:
            return
        with _child_dir(top, os.path.join(state_dir, "instances"), "instances",
                        policy) as instances:
            for ident in instance_ids:
                if instances is None:
                    break
                folder = os.path.join(state_dir, "instances", ident)
                with _child_dir(instances, folder, ident, policy) as fd:
                    if fd is not None:
                        _database_files(fd, folder, policy)
                        # Every other entry too: replica slots' state.<n>.db and their
                        # watcher.<n>.lock, run.lock, lease.lock (flocks survive the check).
                        for name in _entries(fd):
                            with contextlib.suppress(FileNotFoundError):  # (a -wal closed)
                                _check_file(fd, os.path.join(folder, name), name, policy)
        for lock_dir in ("hash-slots", "supervisors"):
            with _child_dir(top, os.path.join(state_dir, lock_dir), lock_dir, policy,
                            make=False) as locks:
                if locks is not None:
                    for name in _entries(locks):
                        with contextlib.suppress(FileNotFoundError):  # (released meanwhile)
                            _check_file(locks, os.path.join(state_dir, lock_dir, name), name,
                                        policy)
        if embedded:
            spool = os.path.join(state_dir, "spool")
            for folder in ("messages", "control"):
                with private_dir_fd(state_dir, ["spool", folder], policy) as fd:
                    if fd is not None:
                        for name in _entries(fd):
                            with contextlib.suppress(FileNotFoundError):  # (consumed meanwhile)
                                _check_file(fd, os.path.join(spool, folder, name), name,
                                            policy)


def private_dirs(state_dir: str, names: Sequence[str], policy: Policy = CREATE) -> None:
    """Make sure state_dir/<n1>/<n2>/... exist (when creating), every component private."""
    with private_dir_fd(state_dir, names, policy):
        pass


@contextlib.contextmanager
def private_dir_fd(state_dir: str, names: Sequence[str],
                   policy: Policy = CREATE) -> Iterator[int | None]:
    """A descriptor of state_dir/<n1>/<n2>/..., each component from state_dir down opened
    from its parent's descriptor and checked; None if missing and we are only looking."""
    with open_state_dir(state_dir, policy) as fd:
        if fd is None:
            yield None
            return
        with _descend(fd, state_dir, list(names), policy) as inner:
            yield inner


@contextlib.contextmanager
def _descend(fd: int, where: str, names: list[str], policy: Policy) -> Iterator[int | None]:
    if not names:
        yield fd
        return
    path = os.path.join(where, names[0])
    with _child_dir(fd, path, names[0], policy) as inner:
        if inner is None:
            yield None
            return
        with _descend(inner, path, names[1:], policy) as deepest:
            yield deepest


def split_database_path(path: str) -> tuple[str, list[str]]:
    """(state_dir, [instances, <id>]) for state_dir/instances/<id>/state.db; any other
    database path is checked from its own directory."""
    folder = os.path.dirname(os.path.abspath(path))
    parent, ident = os.path.split(folder)
    grandparent, instances = os.path.split(parent)
    if instances == "instances" and ident:
        return grandparent, [instances, ident]
    return folder, []


def secure_database(path: str, policy: Policy = CREATE) -> None:
    """Check (and when creating, make) state_dir/instances/<id>/ and its database files,
    before sqlite opens them by name.  The database is created 0600, so sqlite gives its
    -wal and -shm the same mode."""
    state_dir, names = split_database_path(path)
    folder = os.path.join(state_dir, *names)
    with private_dir_fd(state_dir, names, policy) as fd:
        if fd is None:
            if not policy.create:
                return  # no database yet; the caller reports it
            raise UnsafeStateError(f"cannot create the state directory {folder}")
        _database_files(fd, folder, policy, name=os.path.basename(path))


def _database_files(fd: int, folder: str, policy: Policy, name: str = "state.db") -> None:
    if policy.create and not _exists(fd, name):
        with contextlib.suppress(FileExistsError):  # another process was first: checked below
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, PRIVATE_FILE, dir_fd=fd))
    for entry in (name, f"{name}-wal", f"{name}-shm", f"{name}-journal"):
        if _exists(fd, entry):
            _check_file(fd, os.path.join(folder, entry), entry, policy)


def private_file(directory_fd: int, name: str, path: str) -> int:
    """Open (creating 0600) a file for reading and writing in a checked private directory."""
    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE,
                 dir_fd=directory_fd)
    try:
        _judge(os.fstat(fd), path, fd, CREATE, is_dir=False)
    except BaseException:
        os.close(fd)
        raise
    return fd


# ---------------------------------------------------------------- one component


@contextlib.contextmanager
def open_state_dir(state_dir: str, policy: Policy = CREATE) -> Iterator[int | None]:
    """A descriptor of the state directory itself, created 0700 if missing (parents too,
    with the usual modes); None if it does not exist and we are only looking."""
    try:
        fd = os.open(state_dir, _DIR_FLAGS)
    except FileNotFoundError:
        if not policy.create:
            yield None
            return
        os.makedirs(os.path.dirname(state_dir) or ".", exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(state_dir, PRIVATE_DIR)
        fd = _open_dir(None, state_dir, state_dir)
    except OSError as exc:
        raise _not_a_directory(state_dir, exc) from None
    try:
        _judge(os.fstat(fd), state_dir, fd, policy, is_dir=True, top=True)
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def _child_dir(parent: int, path: str, name: str, policy: Policy, *,
               make: bool = True) -> Iterator[int | None]:
    try:
        fd = _open_dir(parent, name, path)
    except FileNotFoundError:
        if not (policy.create and make):
            yield None
            return
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, PRIVATE_DIR, dir_fd=parent)
        fd = _open_dir(parent, name, path)
    try:
        _judge(os.fstat(fd), path, fd, policy, is_dir=True)
        yield fd
    finally:
        os.close(fd)


def _open_dir(parent: int | None, name: str, path: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _not_a_directory(path, exc, parent, name) from None


def _not_a_directory(path: str, exc: OSError, parent: int | None = None,
                     name: str | None = None) -> OSError:
    try:
        info = os.stat(name if parent is not None and name else path, dir_fd=parent,
                       follow_symlinks=False)
    except OSError:
        return exc
    if stat.S_ISLNK(info.st_mode):
        fix = ("name the real directory in state_dir (or MULTIWATCH_STATE_DIR)" if parent is None
               else f"remove the link: rm {shlex.quote(path)}")
        return UnsafeStateError(f"state path {path} is a symbolic link, which multiwatch "
                                f"refuses to follow; {fix}")
    if exc.errno in (errno.ENOTDIR, errno.ELOOP):
        return UnsafeStateError(f"state path {path} is not a directory; move it away: "
                                f"mv {shlex.quote(path)} {shlex.quote(path + '.old')}")
    return exc


def _check_file(directory: int, path: str, name: str, policy: Policy) -> None:
    """A file in a checked directory: a regular file of ours, not world-writable."""
    before = os.stat(name, dir_fd=directory, follow_symlinks=False)
    if stat.S_ISLNK(before.st_mode):
        raise UnsafeStateError(
            f"state file {path} is a symbolic link, which multiwatch refuses to follow; "
            f"remove it: rm {shlex.quote(path)}")
    if not stat.S_ISREG(before.st_mode):
        raise UnsafeStateError(f"state file {path} is not a regular file; move it away: "
                               f"mv {shlex.quote(path)} {shlex.quote(path + '.old')}")
    _judge(before, path, None, VERIFY, is_dir=False)  # never open what is not ours
    if not (policy.create and stat.S_IMODE(before.st_mode) & 0o077):
        return  # nothing to tighten: the file is not opened at all (see below)
    # Opened only to tighten it.  Closing any descriptor of a file drops every POSIX lock
    # this process holds on it (sqlite's included), so a database this process may have
    # open is never opened here without need.
    fd = os.open(name, _FILE_FLAGS, dir_fd=directory)
    try:
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) != (before.st_dev, before.st_ino):
            raise UnsafeStateError(f"state file {path} was replaced while being checked")
        _judge(info, path, fd, policy, is_dir=False)
    finally:
        os.close(fd)


def _judge(info: os.stat_result, path: str, fd: int | None, policy: Policy, *,
           is_dir: bool, top: bool = False) -> None:
    """Refuse what others own or anyone may write; tighten what is ours but too open."""
    me = os.geteuid()
    quoted = shlex.quote(path)
    private = PRIVATE_DIR if is_dir else PRIVATE_FILE
    what = "state directory" if is_dir else "state file"
    mode = stat.S_IMODE(info.st_mode)
    fsgroup = top and me != 0 and info.st_uid == 0 and info.st_gid == os.getegid()
    if info.st_uid != me and not fsgroup:
        owner = _user_name(info.st_uid)
        raise UnsafeStateError(
            f"{what} {path} belongs to {owner}, not to {_user_name(me)} who runs multiwatch: "
            f"another user could read it or plant events in it; run multiwatch as {owner}, "
            f"or take it over: chown -R {_user_name(me)} {quoted} && chmod -R go-rwx {quoted}")
    if mode & stat.S_IWOTH:
        raise UnsafeStateError(
            f"{what} {path} is writable by every user (mode {mode:04o}), so anyone may have "
            f"planted entries in it; check its contents, then: chmod {private:o} {quoted}")
    # Writable by a group that is not ours: its members may have planted entries or rows,
    # as anyone may in a world-writable one.  Our own group's write bit is only tightened:
    # Kubernetes' fsGroup (our runAsGroup) adds g+rw to the whole volume at every mount,
    # and a umask 002 leaves it on files of our own user-private group.
    if mode & stat.S_IWGRP and info.st_gid != os.getegid():
        group = _group_name(info.st_gid)
        raise UnsafeStateError(
            f"{what} {path} is writable by group {group} (mode {mode:04o}), whose members "
            f"may have planted entries in it; check its contents, then: "
            f"chmod {private:o} {quoted}")
    if fsgroup or not mode & 0o077 or not policy.create:
        return
    assert fd is not None
    os.fchmod(fd, private | (mode & 0o700))  # (keeps an owner bit we had on top of it)
    log.warning("tightened a state path others could read or write", extra={
        "path": path, "mode_before": f"{mode:04o}", "mode_after": f"{private | mode & 0o700:04o}"})


def _exists(directory: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _entries(directory: int) -> list[str]:
    with os.scandir(directory) as entries:
        return [entry.name for entry in entries]


def _user_name(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        import grp

        return grp.getgrgid(gid).gr_name
    except (ImportError, KeyError):
        return str(gid)
