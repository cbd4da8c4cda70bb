"""A machine-wide cap on concurrent hashing: N lock files, one flock per hash in progress.

Every watcher of a roster (and every `multiwatch run --only ID` sharing its `state_dir`)
takes one of the files `<state_dir>/hash-slots/slot-<i>.lock` (0600, in a 0700 directory,
like everything under state_dir) with an exclusive,
non-blocking `flock` before it reads a big file, and closes it afterwards.  The kernel
drops a flock when the file description closes, including when its process dies by
SIGKILL, so a watcher killed in the middle of a hash never keeps its slot.

flock is per open file description: two threads of one process that each open the file
exclude each other too, so the cap counts hashes, not processes.
"""

from __future__ import annotations

import fcntl
import os
import stat
import threading

from multiwatch.state_dir import PRIVATE_DIR, PRIVATE_FILE, UnsafeStateError, private_dirs

SLOT_DIRECTORY = "hash-slots"
POLL_FIRST_SECONDS = 0.005
POLL_MAX_SECONDS = 0.05


class HashSlot:
    """One held slot; release() (or the death of the process) frees it."""

    def __init__(self, index: int, fd: int) -> None:
        self.index = index
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the description drops the flock


class HashSlots:
    """`count` slots in `directory`, shared by every process that uses the same directory."""

    def __init__(self, directory: str, count: int, *, state_dir: str | None = None) -> None:
        if count < 1:
            raise ValueError(f"need at least one hash slot, got {count}")
        self.directory = directory
        self.count = count
        self._next = os.getpid() % count  # spread first tries across processes
        self._state_dir = state_dir
        self._directory_checked = False

    @classmethod
    def under(cls, state_dir: str, count: int) -> HashSlots:
        return cls(os.path.join(state_dir, SLOT_DIRECTORY), count, state_dir=state_dir)

    def _check_directory(self) -> None:
        """Once: the directory exists, 0700 and ours (like everything under state_dir)."""
        if self._directory_checked:
            return
        if self._state_dir is not None:
            private_dirs(self._state_dir, [SLOT_DIRECTORY])
        else:
            os.makedirs(self.directory, mode=PRIVATE_DIR, exist_ok=True)
        self._directory_checked = True

    def _open(self, index: int) -> int:
        """The slot's lock file, created 0600; refused if it is a link or not ours."""
        fd = os.open(self.path(index), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     PRIVATE_FILE)
        try:
            info = os.fstat(fd)
            if info.st_uid != os.geteuid():
                raise UnsafeStateError(f"hash slot {self.path(index)} belongs to another user")
            if stat.S_IMODE(info.st_mode) != PRIVATE_FILE:
                os.fchmod(fd, PRIVATE_FILE)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def path(self, index: int) -> str:
        return os.path.join(self.directory, f"slot-{index}.lock")

    def try_acquire(self) -> HashSlot | None:
        """A free slot, or None if all `count` are held right now (never blocks)."""
        self._check_directory()
        start = self._next
        for offset in range(self.count):
            index = (start + offset) % self.count
            fd = self._open(index)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            self._next = (index + 1) % self.count
            return HashSlot(index, fd)
        return None

    def acquire(self, cancelled: threading.Event) -> HashSlot | None:
        """Wait for a free slot; None if `cancelled` was set first.

        Polls (5 ms, doubling to 50 ms): a waiting watcher notices a freed slot within
        50 ms, which is small beside the hash of a big file it waits behind."""
        delay = POLL_FIRST_SECONDS
        while not cancelled.is_set():
            slot = self.try_acquire()
            if slot is not None:
                return slot
            if cancelled.wait(delay):
                break
            delay = min(delay * 2, POLL_MAX_SECONDS)
        return None
