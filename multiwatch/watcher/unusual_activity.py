"""Unusual activity: a rolling count of the deletions, modifications and renames one watcher
announces, and a signal when they pass the roster's `unusual_activity` threshold.

A signal, not a brake: announcing goes on.  It starts with one WARNING line carrying the
figures (repeated at most once per window while it lasts) and ends with one INFO line; the
heartbeat snapshot carries the flag and the window's counts to /status and /metrics.

The window is kept as per-second buckets with running totals, so memory is bounded by
`window_seconds` buckets whatever the event rate, and recording an event is O(1).
Only files older than the window count (see `record`).  The percent is of the files
tracked when the window began, approximated as the files
tracked now plus those deleted within the window (a tree whose files were all deleted is at
100 %, not at a division by zero).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

from multiwatch.config.activity import UnusualActivityConfig
from multiwatch.status_view import UnusualActivitySnapshot
from multiwatch.watcher.message import FILE_DELETED, FILE_MODIFIED, FILE_MOVED

log = logging.getLogger(__name__)

KINDS = ("deleted", "modified", "moved")
_KIND_OF_EVENT = {FILE_DELETED: 0, FILE_MODIFIED: 1, FILE_MOVED: 2}  # index into KINDS


class UnusualActivity:
    """Counts one instance's deletions, modifications and renames over a rolling window.

    `record` is called for every announced event (others are ignored), `snapshot` with each
    heartbeat: both check the threshold, so the signal ends within a heartbeat of the window
    emptying even when no event arrives.  `tracked` returns the tracked-file count now."""

    def __init__(self, config: UnusualActivityConfig | None, tracked: Callable[[], int], *,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._tracked = tracked
        self._clock = clock
        self.wall_clock = wall_clock  # the age test's and `since`'s clock (tests move it)
        self._buckets: deque[list[int]] = deque()  # [second, deleted, modified, moved]
        self._totals = [0, 0, 0]
        self.active = False
        self._since = 0.0  # wall-clock start of the current episode
        self._warned_at = 0.0  # monotonic time of the last WARNING line

    def record(self, event_type: str, before_ctime_ns: int = 0) -> None:
        """Count one announced event on a file that was there before the window began.

        `before_ctime_ns` is the ctime of the version the event deletes, replaces or renames
        (0: unknown, counted).  Ransomware and runaway scripts change files that were there
        before; a new file (file_discovered) is not counted, nor a change to a file that
        arrived or changed within the window: a spool its consumer empties, a log rewritten
        in a loop.  (ctime, not mtime: `cp -p` and rsync set an old mtime on a new file.)"""
        kind = _KIND_OF_EVENT.get(event_type)
        config = self.config
        if kind is None or config is None:
            return
        if before_ctime_ns > (self.wall_clock() - config.window_seconds) * 1e9:
            return  # the file is younger than the window
        now = self._clock()
        second = int(now)
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0, 0])
        self._buckets[-1][kind + 1] += 1
        self._totals[kind] += 1
        self._check(now)

    def counts(self) -> dict[str, int]:
        """The events of each kind within the window (as of the last record or snapshot)."""
        return dict(zip(KINDS, self._totals, strict=True))

    def snapshot(self) -> UnusualActivitySnapshot:
        """The heartbeat's `unusual_activity` entry (after checking the threshold)."""
        config = self.config
        if config is None:
            return {"enabled": False, "active": False}
        base, percent = self._check(self._clock())
        return {
            "enabled": True,
            "active": self.active,
            "since": self._since if self.active else None,
            "window_seconds": config.window_seconds,
            "events": self.counts(),
            "files_tracked": base,
            "percent": round(percent, 1),
            "threshold_percent": config.percent,
            "min_events": config.min_events,
        }

    def _check(self, now: float) -> tuple[int, float]:
        """Expire old buckets, start or end the signal; (files base, percent) now."""
        config = self.config
        assert config is not None
        oldest = now - config.window_seconds
        while self._buckets and self._buckets[0][0] + 1 <= oldest:
            expired = self._buckets.popleft()
            for i in range(3):
                self._totals[i] -= expired[i + 1]
        events = sum(self._totals)
        base = self._tracked() + self._totals[0]  # deleted files were tracked at the start
        percent = 100.0 * events / base if base else 0.0
        unusual = events >= config.min_events and percent > config.percent
        if unusual and (not self.active or now >= self._warned_at + config.window_seconds):
            if not self.active:
                self.active, self._since = True, self.wall_clock()
            self._warned_at = now
            self._warn(events, base, percent)
        elif not unusual and self.active:
            self.active = False
            log.info("unusual activity ended", extra={
                "events": events, "window_seconds": config.window_seconds,
                "files_tracked": base, "percent": round(percent, 1),
                "lasted_seconds": round(self.wall_clock() - self._since, 1)})
        return base, percent

    def _warn(self, events: int, base: int, percent: float) -> None:
        config = self.config
        assert config is not None
        counts = self.counts()
        kind = max(KINDS, key=lambda k: counts[k])
        log.warning(
            "unusual activity: %d files deleted, modified or renamed within %g s, %.1f%% of "
            "%d tracked files (threshold %g%%, at least %d events); announcing goes on",
            events, config.window_seconds, percent, base, config.percent, config.min_events,
            extra={"kind": kind, "events": events, **counts,
                   "window_seconds": config.window_seconds, "files_tracked": base,
                   "percent": round(percent, 1), "threshold_percent": config.percent,
                   "min_events": config.min_events})
