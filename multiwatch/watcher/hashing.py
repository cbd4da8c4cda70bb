"""One read of a regular file feeding SHA-256 and XXH128 together.

Only regular files are opened, below the watched root's descriptor with no symlink on the
way (confined.py) and O_NONBLOCK, so that neither a symlink nor a FIFO swapped in at the
last moment, in any component, can redirect or block the watcher.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import xxhash

from multiwatch.watcher.confined import ConfinedRoot
from multiwatch.watcher.hash_split import Update, read_big, read_buffer
from multiwatch.watcher.read_limit import ReadLimit, current_read_limit

CHUNK_BYTES = 1 << 20
PROGRESS_EVERY_BYTES = 64 << 20
# From this size on SHA-256 may run on a helper thread beside the read (hash_split); below
# it the thread's start costs more than the overlap gains.
SPLIT_MIN_BYTES = 4 << 20


Version = tuple[int, int, int]
"""(size, mtime_ns, inode): a FileVersion as a plain tuple, as a scan reports it (equal to
the FileVersion of the same file; cheaper to build by the hundred thousand)."""


class FileVersion(NamedTuple):
    """What identifies one version of a file's content on disk.

    A tuple (several are made per file; a frozen dataclass costs several times more), equal
    to a scan's plain (size, mtime_ns, inode)."""

    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileVersion:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)


@dataclass(frozen=True)
class Hashed:
    """A file's content hashes, valid for `version`.

    ctime_ns is not part of the version (a chmod must not cause a re-hash) but marks each
    rename or re-creation, so message ids of otherwise identical events differ.
    """

    version: FileVersion
    sha256: str
    xxh128: str
    ctime_ns: int = 0


class ChangedWhileHashing(Exception):
    """The file changed between the first and the last byte read: settle it again."""


class HashCancelled(Exception):
    """The caller gave up on this hash (a newer event for the path made it useless)."""


class NotRegularFile(Exception):
    """The path is not (or no longer) a regular file; it is never opened for reading."""


def stat_regular(root: ConfinedRoot, relative: str) -> os.stat_result | None:
    """lstat `relative` below the root; None if it is missing or not a regular file.

    No symlink is followed in any component (with follow_symlinks, only those that stay
    beneath the root: see confined.py).  Any other error is raised: PermissionError (a
    directory on the way became unreadable), EIO or ESTALE (a network mount failing for a
    while): that file is not gone, and must not be announced as deleted."""
    try:
        st = root.stat(relative)
    except (FileNotFoundError, NotADirectoryError):  # missing, or a file took a directory's place
        return None
    except OSError as exc:
        if exc.errno in _ABSENT:
            return None
        raise
    return st if stat.S_ISREG(st.st_mode) else None


# Errors that say the path cannot name a file in the tree, now or later: too long, a symlink
# on the way (ELOOP), or one leading outside the root (EXDEV).
_ABSENT = frozenset({errno.ENAMETOOLONG, errno.ELOOP, errno.EXDEV})


class _ReadWatch:
    """What happens between chunks, whichever loop reads: cancellation, the read rate limit
    (a wait that keeps calling `progress`), then progress."""

    def __init__(self, path: str, progress: Callable[[], None] | None,
                 cancelled: threading.Event | None, limit: ReadLimit | None = None) -> None:
        self.path = path
        self.progress = progress
        self.cancelled = cancelled
        self.limit = limit
        self.since_progress = 0

    def after_read(self, count: int) -> None:
        if self.limit is not None:
            self.limit.take(count, cancelled=self.cancelled, tick=self.progress)
        if self.cancelled is not None and self.cancelled.is_set():
            raise HashCancelled(self.path)

    def after_feed(self, count: int) -> None:
        self.since_progress += count
        if self.progress is not None and self.since_progress >= PROGRESS_EVERY_BYTES:
            self.since_progress = 0
            self.progress()


def _read_inline(fd: int, size: int, sha256: Update, xxh128: Update, watch: _ReadWatch) -> None:
    """Read `fd` to EOF into both hashes on this thread."""
    # A small file gets a buffer its size (+1 to meet EOF in the same read), not a
    # zeroed megabyte: in a burst of small files that allocation was most of the cost.
    # A file of a chunk or more gets the thread's page-aligned one (hash_split.read_buffer).
    view = read_buffer(CHUNK_BYTES) if size >= CHUNK_BYTES else memoryview(bytearray(size + 1))
    while True:
        count = os.readv(fd, [view])
        if not count:
            break
        watch.after_read(count)
        chunk = view[:count]
        sha256(chunk)
        xxh128(chunk)
        watch.after_feed(count)
        if count == size < len(view):
            break  # a small file read whole in one go: no extra read just to meet EOF


def hash_file(root: ConfinedRoot, relative: str, progress: Callable[[], None] | None = None,
              *, cancelled: threading.Event | None = None,
              expected: FileVersion | None = None,
              limit: ReadLimit | None = None) -> Hashed:
    """Hash root/relative in one pass. Raises FileNotFoundError, NotRegularFile,
    ChangedWhileHashing.

    The file is opened below the root's descriptor with no symlink on the way (see
    confined.py), and checked again afterwards through its directory's descriptor (a
    rename-over replaces the name's inode without touching ours), never by a new lookup of
    its path.  With `expected` (the version that settled), a file found with another
    version when opened raises ChangedWhileHashing before any read.

    `progress` is called every PROGRESS_EVERY_BYTES, so a huge file on a slow mount does
    not silence the watcher's heartbeat (and get it killed as hung).  Once `cancelled` is
    set the read stops at the next chunk with HashCancelled.  A file of SPLIT_MIN_BYTES or
    more has its SHA-256 on a second thread while a core is spare (hash_split).  Every
    chunk read is paid to `limit`, by default the watcher's read_rate_limit (read_limit)."""
    try:
        parent, name = root.open_parent(relative)
    except IsADirectoryError as exc:
        raise NotRegularFile(relative) from exc
    except OSError as exc:
        if exc.errno in _ABSENT:  # a symlink on the way, or leading out: nothing to read
            raise FileNotFoundError(errno.ENOENT, "not in the watched tree", relative) from exc
        raise
    linked = False
    try:
        try:
            fd = os.open(name, _READ | os.O_NOFOLLOW, dir_fd=parent)
        except OSError as exc:
            if exc.errno == errno.ELOOP and root.follow_symlinks:
                linked = True  # a symlink: its target, if it lies beneath the root
                fd = _open_link(root, relative)
            elif exc.errno in (errno.ELOOP, errno.ENXIO):  # a symlink, or a socket
                raise NotRegularFile(relative) from exc
            else:
                raise
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                raise NotRegularFile(relative)
            if expected is not None and FileVersion.of(before) != expected:
                raise ChangedWhileHashing(relative)
            sha256 = hashlib.sha256()
            xxh128 = xxhash.xxh128()
            watch = _ReadWatch(relative, progress, cancelled, limit or current_read_limit())
            if before.st_size >= SPLIT_MIN_BYTES:
                read_big(fd, CHUNK_BYTES, sha256.update, xxh128.update, watch.after_read,
                         watch.after_feed)
            else:
                _read_inline(fd, before.st_size, sha256.update, xxh128.update, watch)
        finally:
            os.close(fd)
        version = FileVersion.of(before)
        # The name's inode now, and its size and mtime (a write during the read).
        try:
            current = (stat_regular(root, relative) if linked
                       else os.stat(name, dir_fd=parent, follow_symlinks=False))
        except FileNotFoundError:
            current = None
    finally:
        os.close(parent)
    if current is None or not stat.S_ISREG(current.st_mode) or (
            FileVersion.of(current) != version):
        raise ChangedWhileHashing(relative)
    return Hashed(version=version, sha256=sha256.hexdigest(), xxh128=xxh128.hexdigest(),
                  ctime_ns=current.st_ctime_ns)


_READ = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC


def _open_link(root: ConfinedRoot, relative: str) -> int:
    """Open a symlinked file's target beneath the root (follow_symlinks)."""
    try:
        return root.open(relative, _READ)
    except OSError as exc:
        if exc.errno in _ABSENT:
            raise NotRegularFile(relative) from exc
        raise
