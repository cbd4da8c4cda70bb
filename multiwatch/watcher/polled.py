"""The polling observer's walk of the tree, confined like every other lookup (confined.py).

watchdog's DirectorySnapshot lists and stats absolute paths through the two callables a
PollingObserverVFS is given.  Its default (os.stat, os.scandir by path) follows directory
symlinks out of the tree and round loops (`ln -s . loop`: loop/loop/...).  Here each
directory is opened below the root's descriptor with no symlink on the way, and its
entries are stat'ed relative to that descriptor without following: a symlink is one entry
like a file, never entered (a loop costs one entry), and a directory swapped for a
symlink mid-walk lists nothing.

One statx(2) per entry also gives the birth time watchdog compares to tell a recycled inode
from the same file; without it, watchdog would statx every path again by its name.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import threading
from collections.abc import Iterator

from multiwatch.watcher.confined import ConfinedRoot

_AT_FDCWD = -100
_AT_SYMLINK_NOFOLLOW = 0x100
_STATX_BASIC_AND_BTIME = 0x07FF | 0x0800


class _Timestamp(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_uint32),
                ("reserved", ctypes.c_int32)]


class _Statx(ctypes.Structure):  # struct statx, statx(2)
    _fields_ = [
        ("stx_mask", ctypes.c_uint32), ("stx_blksize", ctypes.c_uint32),
        ("stx_attributes", ctypes.c_uint64), ("stx_nlink", ctypes.c_uint32),
        ("stx_uid", ctypes.c_uint32), ("stx_gid", ctypes.c_uint32),
        ("stx_mode", ctypes.c_uint16), ("spare0", ctypes.c_uint16),
        ("stx_ino", ctypes.c_uint64), ("stx_size", ctypes.c_uint64),
        ("stx_blocks", ctypes.c_uint64), ("stx_attributes_mask", ctypes.c_uint64),
        ("stx_atime", _Timestamp), ("stx_btime", _Timestamp), ("stx_ctime", _Timestamp),
        ("stx_mtime", _Timestamp),
        ("stx_rdev_major", ctypes.c_uint32), ("stx_rdev_minor", ctypes.c_uint32),
        ("stx_dev_major", ctypes.c_uint32), ("stx_dev_minor", ctypes.c_uint32),
        ("spare", ctypes.c_uint64 * 14),
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_statx = getattr(_libc, "statx", None)  # glibc >= 2.28
if _statx is not None:
    _statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint,
                       ctypes.POINTER(_Statx)]
    _statx.restype = ctypes.c_int


class PolledStat:
    """What DirectorySnapshot reads of an entry's stat, plus its birth time (0: unknown,
    which watchdog then takes as "same entry", as on a filesystem without birth times)."""

    __slots__ = ("st_birthtime_ns", "st_dev", "st_gid", "st_ino", "st_mode", "st_mtime",
                 "st_mtime_ns", "st_size", "st_uid")

    def __init__(self, mode: int, ino: int, dev: int, uid: int, gid: int, size: int,
                 mtime_ns: int, birthtime_ns: int) -> None:
        self.st_mode, self.st_ino, self.st_dev = mode, ino, dev
        self.st_uid, self.st_gid, self.st_size = uid, gid, size
        self.st_mtime_ns, self.st_mtime = mtime_ns, mtime_ns / 1e9
        self.st_birthtime_ns = birthtime_ns

    @classmethod
    def of(cls, st: os.stat_result) -> PolledStat:
        return cls(st.st_mode, st.st_ino, st.st_dev, st.st_uid, st.st_gid, st.st_size,
                   st.st_mtime_ns, 0)


def _statx_at(dir_fd: int, name: str, flags: int) -> PolledStat:
    buffer = _Statx()
    if _statx is None or _statx(dir_fd, os.fsencode(name), flags, _STATX_BASIC_AND_BTIME,
                                ctypes.byref(buffer)) != 0:
        err = ctypes.get_errno() if _statx is not None else errno.ENOSYS
        if err not in (errno.ENOSYS, errno.EPERM):
            raise OSError(err, os.strerror(err), name)
        return PolledStat.of(os.stat(name, dir_fd=None if dir_fd == _AT_FDCWD else dir_fd,
                                     follow_symlinks=not flags & _AT_SYMLINK_NOFOLLOW))
    mtime, btime = buffer.stx_mtime, buffer.stx_btime
    return PolledStat(
        buffer.stx_mode, buffer.stx_ino, os.makedev(buffer.stx_dev_major, buffer.stx_dev_minor),
        buffer.stx_uid, buffer.stx_gid, buffer.stx_size, mtime.tv_sec * 10**9 + mtime.tv_nsec,
        btime.tv_sec * 10**9 + btime.tv_nsec if buffer.stx_mask & 0x0800 else 0)


class ConfinedSnapshotIO:
    """`stat` and `listdir` for watchdog's PollingObserverVFS, confined below `root`.

    DirectorySnapshot lists a directory, then stats each of its entries: `listdir` stats
    them all while it holds the directory's descriptor, and `stat` hands those results
    over.  No descriptor is kept between calls (nor the root's: a watched mount is never
    pinned between polls).  The root's own stat is by its configured path, so a deleted
    root ends the poller as watchdog expects."""

    def __init__(self, root: ConfinedRoot, *, one_filesystem: bool = False) -> None:
        self.root = root
        # one_filesystem (find -xdev): directories on another device are left out.
        self._device = os.stat(root.path).st_dev if one_filesystem else None
        self._prefix = root.path.rstrip("/") + "/"
        self._listed = threading.local()  # absolute path -> stat, of the last listing

    def _relative(self, path: str) -> str:
        if not path.startswith(self._prefix):
            raise OSError(errno.EXDEV, "outside the watched directory", path)
        return path[len(self._prefix):]

    def stat(self, path: str) -> PolledStat:
        if path == self.root.path:
            return _statx_at(_AT_FDCWD, path, 0)
        listed: dict[str, PolledStat] = getattr(self._listed, "stats", {})
        found = listed.pop(path, None)
        if found is not None:
            return found
        parent, name = self.root.open_parent(self._relative(path))
        try:
            return _statx_at(parent, name, _AT_SYMLINK_NOFOLLOW)
        finally:
            os.close(parent)
            self.root.release()

    def listdir(self, path: str | None) -> Iterator[os.DirEntry[str]]:
        if path is None:
            raise OSError(errno.EINVAL, "no directory", path)
        relative = "" if path == self.root.path else self._relative(path)
        try:
            fd = self.root.open_directory(relative)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EXDEV):  # a symlink took its place: nothing
                return iter(())
            raise
        finally:
            self.root.release()
        stats: dict[str, PolledStat] = {}
        try:
            with os.scandir(fd) as scanned:
                entries = list(scanned)
            prefix = path.rstrip("/") + "/"
            for entry in entries:
                try:
                    stats[prefix + entry.name] = _statx_at(fd, entry.name, _AT_SYMLINK_NOFOLLOW)
                except OSError:
                    pass  # vanished: watchdog's own stat skips it the same way
        finally:
            os.close(fd)
        self._listed.stats = stats
        if self._device is not None:
            entries = [e for e in entries if (st := stats.get(prefix + e.name)) is None
                       or not stat.S_ISDIR(st.st_mode) or st.st_dev == self._device]
        return iter(entries)
