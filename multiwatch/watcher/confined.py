"""Every lookup below a watched root stays inside it, whatever is renamed or swapped meanwhile.

A path is never resolved again by its absolute name: it is resolved relative to a
descriptor of the root, with no symlink in any component (or, with follow_symlinks, with
symlinks followed only while they stay beneath the root).  Linux openat2(2) does this in one
call (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS); Python 3.11 has no os.openat2, so it is called
through ctypes.  Where the kernel lacks it (< 5.6) or a seccomp filter refuses it (ENOSYS,
EPERM), a walk keeps the same rules: one openat(O_NOFOLLOW) per component, each from the
descriptor of the directory before it, ".." never above the root.

The root itself is opened by its configured path (which may be a symlink, and is trusted:
it is the operator's) at the first lookup, kept for the lookups that follow, and closed by
`release` between bursts of work (the pipeline calls it after each step).  A descriptor
kept for the instance's life would pin the watched mount (`umount` fails with EBUSY, even
while nothing happens) and keep naming a root that was replaced or remounted; reopened per
step, it costs one open per step instead of one per file.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
import threading
from collections import deque

MAX_SYMLINKS = 40  # as the kernel's own path walk (ELOOP beyond)

_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_NO_FOLLOW = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
_FOLLOW_BENEATH = _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS

# openat2 has one number on every Linux architecture but alpha (added after the tables were
# unified in 5.1).
_OPENAT2_NR = 437 if platform.system() == "Linux" and platform.machine() != "alpha" else None

_STEP = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_ONLY = os.O_PATH | os.O_CLOEXEC
DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
PATH_MAX = 4096


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)  # CDLL releases the GIL around each call
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
# syscall(2) is variadic; declared with openat2's arguments (all integers and pointers,
# passed alike on Linux's ABIs), plain ints convert without a ctypes object per call.
_syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p,
                     ctypes.c_size_t]
_NR = _OPENAT2_NR or -1
_HOW_SIZE = ctypes.sizeof(_OpenHow)
# (flags, resolve) -> an open_how and its address; read-only once built, shared by threads.
_hows: dict[tuple[int, int], tuple[_OpenHow, int]] = {}

# None: not probed yet; then whether openat2 works in this process (tests may set it False).
openat2_works: bool | None = None


def escape_error(relative: str) -> OSError:
    """What a lookup leading outside the root raises (EXDEV, as openat2 does)."""
    return OSError(errno.EXDEV, "leads outside the watched directory", relative)


def _openat2(dir_fd: int, relative: str, flags: int, resolve: int) -> int:
    cached = _hows.get((flags, resolve))
    if cached is None:
        how = _OpenHow(flags, 0, resolve)
        cached = _hows.setdefault((flags, resolve), (how, ctypes.addressof(how)))
    address = cached[1]
    path = os.fsencode(relative) or b"."
    for _ in range(4):  # EAGAIN: a rename raced a ".." (RESOLVE_BENEATH's own check)
        fd = _syscall(_NR, dir_fd, path, address, _HOW_SIZE)
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err not in (errno.EAGAIN, errno.EINTR):
            break
    raise OSError(err, os.strerror(err), relative)


def _probe_openat2(root_fd: int) -> bool:
    global openat2_works
    if openat2_works is None:
        if _OPENAT2_NR is None:
            openat2_works = False
        else:
            try:
                os.close(_openat2(root_fd, ".", _PATH_ONLY | os.O_DIRECTORY, _NO_FOLLOW))
                openat2_works = True
            except OSError:  # ENOSYS (old kernel), EPERM/ENOSYS (seccomp), E2BIG...
                openat2_works = False
    return openat2_works


class ConfinedRoot:
    """A watched root's descriptor, and opens and stats of relative paths confined below it.

    `follow_symlinks`: `open` and `stat` follow a final symlink (and the links in its
    target) while it stays beneath the root; a directory of the path itself, and a listing
    (`open_directory`), never go through one.  Safe to share between threads."""

    def __init__(self, path: str, *, follow_symlinks: bool = False,
                 use_openat2: bool | None = None) -> None:
        self.path = path
        self.follow_symlinks = follow_symlinks
        self._use_openat2 = use_openat2
        self._lock = threading.Lock()
        self._fd = -1
        self._users = 0  # lookups using the descriptor right now (any thread)
        self._release_pending = False

    # -- the root's descriptor -----------------------------------------------------------

    def _acquire(self) -> int:
        """The root's descriptor (O_PATH), opened by path if it is not open; pair with
        _unuse."""
        with self._lock:
            if self._fd < 0:
                fd = os.open(self.path, _PATH_ONLY | os.O_DIRECTORY)
                if self._use_openat2 is None:
                    self._use_openat2 = _probe_openat2(fd)
                self._fd = fd
            self._users += 1
            self._release_pending = False
            return self._fd

    def _unuse(self) -> None:
        with self._lock:
            self._users -= 1
            if self._release_pending and not self._users:
                self._close_locked()

    def release(self) -> None:
        """Close the root's descriptor once no lookup uses it (the next one opens the root
        by path again): called between bursts of work, so the watched mount is not pinned
        (umount) and a root replaced meanwhile is the one looked up next."""
        with self._lock:
            if self._users:
                self._release_pending = True
            else:
                self._close_locked()

    def _close_locked(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._release_pending = -1, False

    close = release

    def __del__(self) -> None:
        try:
            if self._fd >= 0:
                os.close(self._fd)
        except (OSError, AttributeError, TypeError):  # (at interpreter shutdown)
            pass

    @property
    def uses_openat2(self) -> bool:
        self._acquire()
        self._unuse()
        return bool(self._use_openat2)

    # -- lookups -------------------------------------------------------------------------

    def open(self, relative: str, flags: int, *, follow: bool | None = None) -> int:
        """Open `relative` below the root (O_CLOEXEC added), through real directories only.

        Without following, a final symlink fails with ELOOP (with O_PATH it is opened
        itself, as lstat sees it).  Following (follow_symlinks), a final symlink is
        followed, and the links in its target too, while they stay beneath the root:
        leaving it fails with EXDEV.  A symlinked directory in `relative` itself is never
        entered (a scan never enters one either), following or not."""
        follow = self.follow_symlinks if follow is None else follow
        flags |= os.O_CLOEXEC
        if not follow:
            return self._beneath(relative, flags | os.O_NOFOLLOW, follow=False)
        directory, _, name = relative.rpartition("/")
        if not name or name in (".", ".."):
            return self._beneath(relative, flags | os.O_NOFOLLOW, follow=False)
        parent = self._beneath(directory, _PATH_ONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                               follow=False)
        try:
            try:
                fd = os.open(name, flags | os.O_NOFOLLOW, dir_fd=parent)
                if not (flags & os.O_PATH and stat.S_ISLNK(os.fstat(fd).st_mode)):
                    return fd
                os.close(fd)  # (O_PATH opened the link itself)
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise
            target = os.readlink(name, dir_fd=parent)
        finally:
            os.close(parent)
        if target.startswith("/"):  # from the root, if it lies beneath it
            real = os.path.realpath(self.path)
            if target != real and not target.startswith(real + "/"):
                raise escape_error(relative)
            target = target[len(real):].lstrip("/")
        elif directory:
            target = f"{directory}/{target}"
        return self._beneath(target, flags, follow=True)

    def _beneath(self, relative: str, flags: int, *, follow: bool) -> int:
        root_fd = self._acquire()
        try:
            if self._use_openat2:
                try:
                    return _openat2(root_fd, relative, flags,
                                    _FOLLOW_BENEATH if follow else _NO_FOLLOW)
                except OSError as exc:
                    # RESOLVE_BENEATH refuses every absolute symlink: one into the tree is
                    # the walk's to judge.
                    if not (follow and exc.errno == errno.EXDEV):
                        raise
            return self._walk(root_fd, relative, flags, follow)
        finally:
            self._unuse()

    def open_directory(self, relative: str) -> int:
        """A directory's descriptor for listing; never through a symlink."""
        return self.open(relative, DIRECTORY, follow=False)

    def open_parent(self, relative: str) -> tuple[int, str]:
        """(descriptor of the directory holding `relative` (O_PATH), its last name); the
        directory is reached without any symlink."""
        directory, _, name = relative.rpartition("/")
        if not name or name in (".", ".."):
            raise IsADirectoryError(errno.EISDIR, "not a file", relative)
        return self.open(directory, _PATH_ONLY | os.O_DIRECTORY, follow=False), name

    def stat(self, relative: str) -> os.stat_result:
        """lstat of `relative` below the root (with follow_symlinks: stat, links followed
        while they stay beneath it)."""
        fd = self.open(relative, _PATH_ONLY)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    # -- the walk, where openat2 cannot be used --------------------------------------------

    def _walk(self, root_fd: int, relative: str, flags: int, follow: bool) -> int:
        if len(os.fsencode(relative)) >= PATH_MAX:
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), relative)
        parts = deque(part for part in relative.split("/") if part not in ("", "."))
        stack = [root_fd]  # the directories walked through; [0] is borrowed, never closed
        links = 0
        try:
            while True:
                if not parts:  # the root, or a ".." that ended the path
                    return os.open(".", flags & ~os.O_NOFOLLOW, dir_fd=stack[-1])
                name = parts.popleft()
                if name == "..":
                    if len(stack) == 1:
                        raise escape_error(relative)
                    os.close(stack.pop())
                    continue
                last = not parts
                try:
                    if last and not follow:
                        return os.open(name, flags, dir_fd=stack[-1])
                    if last:
                        st = os.stat(name, dir_fd=stack[-1], follow_symlinks=False)
                        if not stat.S_ISLNK(st.st_mode):
                            return os.open(name, flags | os.O_NOFOLLOW, dir_fd=stack[-1])
                        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), relative)
                    stack.append(os.open(name, _STEP, dir_fd=stack[-1]))
                    continue
                except OSError as exc:
                    if not follow or exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    try:
                        target = os.readlink(name, dir_fd=stack[-1])
                    except OSError:
                        raise exc from None  # not a symlink: a file on the way
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), relative)
                if target.startswith("/"):
                    real = os.path.realpath(self.path)
                    if target != real and not target.startswith(real + "/"):
                        raise escape_error(relative)
                    target = target[len(real):]
                    while len(stack) > 1:
                        os.close(stack.pop())
                parts.extendleft(reversed([p for p in target.split("/") if p not in ("", ".")]))
        finally:
            for fd in stack[1:]:
                os.close(fd)
