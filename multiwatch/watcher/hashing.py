"""One read of a regular file feeding SHA-256 and XXH128 together.

Only regular files are opened, with O_NOFOLLOW|O_NONBLOCK so that neither a symlink
nor a FIFO swapped in at the last moment can redirect or block the watcher.
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

CHUNK_BYTES = 1 << 20
PROGRESS_EVERY_BYTES = 64 << 20


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


def stat_regular(path: str) -> os.stat_result | None:
    """lstat the path; None if it is missing or not a regular file (symlinks are not followed).

    PermissionError (a directory on the way became unreadable) is raised: that file is
    not gone, and must not be announced as deleted."""
    try:
        st = os.lstat(path)
    except PermissionError:
        raise
    except OSError:  # missing, a path component that is no directory, too long, a loop
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def resolve_regular(path: str, inside: str | None) -> tuple[str, os.stat_result] | None:
    """The file to read for `path` and its stat, or None if it is not a regular file.

    With `inside` (a real path) a symlink is followed when its final target is a regular
    file within that directory; anything pointing elsewhere is treated as absent.  Without
    it symlinks are never followed."""
    st = stat_regular(path)
    if st is not None or inside is None:
        return (path, st) if st is not None else None
    try:
        if not stat.S_ISLNK(os.lstat(path).st_mode):
            return None
    except OSError:
        return None
    target = os.path.realpath(path)
    if os.path.commonpath([target, inside]) != inside:
        return None  # never outside the watched root
    target_st = stat_regular(target)
    return (target, target_st) if target_st is not None else None


def hash_file(path: str, progress: Callable[[], None] | None = None, *,
              cancelled: threading.Event | None = None,
              expected: FileVersion | None = None) -> Hashed:
    """Hash `path` in one pass. Raises FileNotFoundError, NotRegularFile, ChangedWhileHashing.

    `progress` is called every PROGRESS_EVERY_BYTES, so a huge file on a slow mount does
    not silence the watcher's heartbeat (and get it killed as hung).  Once `cancelled` is
    set the read stops at the next chunk with HashCancelled.  With `expected`, a file
    found with another version when opened raises ChangedWhileHashing before any read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # a symlink, or a socket
            raise NotRegularFile(path) from exc
        raise
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise NotRegularFile(path)
        if expected is not None and FileVersion.of(before) != expected:
            raise ChangedWhileHashing(path)
        sha256 = hashlib.sha256()
        xxh128 = xxhash.xxh128()
        # A small file gets a buffer its size (+1 to meet EOF in the same read), not a
        # zeroed megabyte: in a burst of small files that allocation was most of the cost.
        buffer = bytearray(min(CHUNK_BYTES, before.st_size + 1))
        view = memoryview(buffer)
        since_progress = 0
        while True:
            count = os.readv(fd, [buffer])
            if not count:
                break
            if cancelled is not None and cancelled.is_set():
                raise HashCancelled(path)
            chunk = view[:count]
            sha256.update(chunk)
            xxh128.update(chunk)
            since_progress += count
            if count == before.st_size < len(buffer):
                break  # a small file read whole in one go: no extra read just to meet EOF
            if progress is not None and since_progress >= PROGRESS_EVERY_BYTES:
                since_progress = 0
                progress()
    finally:
        os.close(fd)
    version = FileVersion.of(before)
    # Re-stat by path: the same inode's current size and mtime (what an fstat of our fd
    # would say), and a rename-over, which replaces the inode without touching our fd.
    current = stat_regular(path)
    if current is None or FileVersion.of(current) != version:
        raise ChangedWhileHashing(path)
    return Hashed(version=version, sha256=sha256.hexdigest(), xxh128=xxh128.hexdigest(),
                  ctime_ns=current.st_ctime_ns)
