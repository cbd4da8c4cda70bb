"""When to try again a file that could not be read, or a directory that could not be listed.

A permission change sends an event (the pipeline reacts to it at once), but a network
mount recovering from EIO/ESTALE sends none: so each failure is retried on its own,
after RETRY_FIRST_SECONDS, doubling up to RETRY_MAX_SECONDS, until it succeeds or the
path goes away.  A heap orders the deadlines; stale entries are skipped lazily, as in
settle.SettleTable.
"""

from __future__ import annotations

import heapq

RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 300.0


class RetrySchedule:
    """Keys (relative paths) that failed, each with its next attempt and backoff."""

    def __init__(self, first: float | None = None, cap: float | None = None) -> None:
        self._first = RETRY_FIRST_SECONDS if first is None else first
        self._cap = RETRY_MAX_SECONDS if cap is None else cap
        self._due: dict[str, float] = {}
        self._delay: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, key: object) -> bool:
        """True while the key is failing (whether or not an attempt is pending)."""
        return key in self._delay

    def pending(self, key: str) -> bool:
        """True if an attempt is scheduled and not yet due-and-taken."""
        return key in self._due

    def failed(self, key: str, now: float) -> bool:
        """Schedule the next attempt; True on the first failure (the one to report)."""
        delay = self._delay.get(key)
        first = delay is None
        delay = self._first if delay is None else min(self._cap, delay * 2)
        self._delay[key] = delay
        self._due[key] = now + delay
        heapq.heappush(self._heap, (now + delay, key))
        return first

    def forget(self, key: str) -> None:
        """It succeeded, or the path is gone: no more attempts."""
        self._due.pop(key, None)
        self._delay.pop(key, None)

    def failing(self) -> list[str]:
        """Every failing key."""
        return list(self._delay)

    def next_due(self) -> float | None:
        """The earliest pending attempt, or None."""
        while self._heap:
            due, key = self._heap[0]
            if self._due.get(key) == due:
                return due
            heapq.heappop(self._heap)
        return None

    def pop_due(self, now: float) -> list[str]:
        """The keys whose attempt is due; they stay known (with their backoff) until
        forgotten or failed again."""
        ready = []
        while self._heap and self._heap[0][0] <= now:
            due, key = heapq.heappop(self._heap)
            if self._due.get(key) == due:
                del self._due[key]
                ready.append(key)
        return ready
