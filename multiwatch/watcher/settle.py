"""The settle stage: coalesce events per path until the file has been quiet long enough.

Every event for a path pushes its deadline to now + settle_seconds; a path is handed on
only once its deadline has passed.  A heap orders deadlines; stale heap entries (a path
touched again, or discarded) are skipped lazily, so touch is O(log n) even for a
100,000-file startup scan.
"""

from __future__ import annotations

import heapq

from multiwatch.watcher.hashing import FileVersion
from multiwatch.watcher.path_index import PathIndex


class SettleTable:
    """Paths waiting for their quiet period, with the last version seen of each."""

    def __init__(self, settle_seconds: float) -> None:
        self.settle_seconds = settle_seconds
        self._due: dict[str, float] = {}
        self._seen: dict[str, FileVersion | None] = {}
        # (due, sequence, path): the sequence keeps equal deadlines in arrival order.
        self._heap: list[tuple[float, int, str]] = []
        self._sequence = 0
        # The waiting paths by directory, built at the first `under` (a directory moved
        # or deleted) and kept from then on: a scan over every waiting path per directory
        # event was quadratic when thousands of directories arrive at once.
        self._index: PathIndex | None = None

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, relative_path: object) -> bool:
        return relative_path in self._due

    def touch(self, relative_path: str, now: float, seen: FileVersion | None = None,
              quiet: float | None = None) -> None:
        """Start or restart the quiet period of a path (settle_seconds unless `quiet`)."""
        due = now + (self.settle_seconds if quiet is None else quiet)
        if self._index is not None and relative_path not in self._due:
            self._index.add(relative_path)
        self._due[relative_path] = due
        if seen is not None or relative_path not in self._seen:
            self._seen[relative_path] = seen
        self._sequence += 1
        heapq.heappush(self._heap, (due, self._sequence, relative_path))

    def discard(self, relative_path: str) -> bool:
        """Forget a path; True if it was waiting."""
        self._seen.pop(relative_path, None)
        if self._due.pop(relative_path, None) is None:
            return False
        if self._index is not None:
            self._index.discard(relative_path)
        return True

    def under(self, directory: str) -> list[str]:
        """Waiting paths inside a directory, at any depth."""
        if self._index is None:
            self._index = PathIndex(self._due)
        return self._index.under(directory)

    def next_due(self) -> float | None:
        """The earliest live deadline, or None when nothing waits."""
        while self._heap:
            due, _, path = self._heap[0]
            if self._due.get(path) == due:
                return due
            heapq.heappop(self._heap)
        return None

    def pop_due(self, now: float, limit: int) -> list[tuple[str, FileVersion | None]]:
        """Up to `limit` (path, last version seen) whose quiet period is over, earliest first."""
        ready: list[tuple[str, FileVersion | None]] = []
        while self._heap and len(ready) < limit:
            due, _, path = self._heap[0]
            if self._due.get(path) != due:
                heapq.heappop(self._heap)
                continue
            if due > now:
                break
            heapq.heappop(self._heap)
            del self._due[path]
            if self._index is not None:
                self._index.discard(path)
            ready.append((path, self._seen.pop(path, None)))
        return ready
