"""`read_rate_limit`: the bytes per second one watcher may read to hash, on all its threads.

One token bucket per child, shared by the pipeline thread (small files) and the hash pool's
workers (big files).  A reader pays for each chunk after reading it: the balance may go
below zero (a debt that whoever reads next pays too), and the reader waits until it is back
to zero.  So over any stretch longer than the burst the child reads at most the rate, with
no byte counted twice and no chunk split.

Waits are short slices (SLICE_SECONDS at most), never one long sleep:
- between slices the pipeline thread's `tick` sends heartbeats, so a throttled hash of a big
  file is not taken for a hung watcher;
- a cancelled hash (an Event: the wait wakes at once) stops waiting;
- once the watcher is stopping (`released`, read from SIGTERM's flag) throttling ends, so a
  stop is never slower than it would be without a limit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# The bucket holds at most this many seconds' worth of bytes: a small file after a quiet
# spell is read at once, and a big file runs at the rate after its first quarter second.
BURST_SECONDS = 0.25
SLICE_SECONDS = 0.1

Pause = Callable[[float, "threading.Event | None"], None]


def _pause(seconds: float, cancelled: threading.Event | None) -> None:
    if cancelled is not None:
        cancelled.wait(seconds)
    else:
        time.sleep(seconds)


def _never() -> bool:
    return False


class ReadLimit:
    """A thread-safe token bucket of `bytes_per_second`, refilled on `clock`."""

    def __init__(self, bytes_per_second: float, *, burst_seconds: float = BURST_SECONDS,
                 released: Callable[[], bool] = _never,
                 clock: Callable[[], float] = time.monotonic, pause: Pause = _pause) -> None:
        if bytes_per_second <= 0:
            raise ValueError(f"a read rate must be above 0, got {bytes_per_second}")
        self.rate = float(bytes_per_second)
        self.burst = self.rate * burst_seconds
        self._released = released
        self._clock = clock
        self._pause = pause
        self._lock = threading.Lock()
        self._balance = self.burst  # full: the first small files go at once
        self._stamp = clock()

    def take(self, count: int, *, cancelled: threading.Event | None = None,
             tick: Callable[[], None] | None = None) -> None:
        """Pay for `count` bytes just read; return once the balance is no longer in debt,
        `cancelled` is set, or the watcher is stopping.  `tick` is called between slices."""
        if count <= 0 or self._released():
            return
        until = self._reserve(count)
        while (left := until - self._clock()) > 0:
            if self._released() or (cancelled is not None and cancelled.is_set()):
                return
            if tick is not None:
                tick()
            self._pause(min(left, SLICE_SECONDS), cancelled)

    def _reserve(self, count: int) -> float:
        """Refill for the time passed, take `count`; when the debt is paid (on the clock)."""
        with self._lock:
            now = self._clock()
            self._balance = min(self.burst, self._balance + (now - self._stamp) * self.rate)
            self._stamp = now
            self._balance -= count
            return now + max(0.0, -self._balance) / self.rate


_installed: ReadLimit | None = None


def install_read_limit(bytes_per_second: int, *,
                       released: Callable[[], bool] = _never) -> ReadLimit | None:
    """Set this process's limit (0: none); every hash_file call reads under it from now on.

    Called once at the watcher's start; `released` says when the watcher is stopping."""
    global _installed
    _installed = ReadLimit(bytes_per_second, released=released) if bytes_per_second > 0 else None
    return _installed


def current_read_limit() -> ReadLimit | None:
    """The limit installed in this process, if any."""
    return _installed
