"""Events per minute of one watcher, from the event totals its heartbeats carry.

Computed in the supervisor as heartbeats arrive (not per page load), so the first look at
the page or `status` already shows a rate. A watcher's counters start from 0 when it starts:
that moment is the first sample, so one heartbeat is enough.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

WINDOW_SECONDS = 60.0
_MIN_SPAN_SECONDS = 1.0  # a span shorter than this makes a noisy rate
_MAX_SAMPLES = 120


def event_total(heartbeat: Mapping[str, Any]) -> int | None:
    """All events a heartbeat says its watcher announced since it started; None if unknown."""
    events = heartbeat.get("events")
    if not isinstance(events, Mapping):
        return None
    return sum(v for v in events.values() if isinstance(v, int) and not isinstance(v, bool))


class EventRate:
    """(time, total) samples over the last minute; time is time.monotonic()."""

    def __init__(self, started_at: float) -> None:
        self._samples: deque[tuple[float, int]] = deque([(started_at, 0)], maxlen=_MAX_SAMPLES)

    def observe(self, total: int, now: float) -> None:
        if total < self._samples[-1][1]:
            self._samples.clear()  # counters restarted: history starts over
        self._trim(now)
        if self._samples and now - self._samples[-1][0] < _MIN_SPAN_SECONDS:
            self._samples[-1] = (self._samples[-1][0], total)
        else:
            self._samples.append((now, total))

    def per_minute(self, now: float) -> float | None:
        """Events per minute over the last minute; the latest total holds until `now`."""
        self._trim(now)
        if not self._samples:
            return None
        first_time, first_total = self._samples[0]
        span = now - first_time
        if span < _MIN_SPAN_SECONDS:
            return None
        return round((self._samples[-1][1] - first_total) * 60.0 / span, 1)

    def _trim(self, now: float) -> None:
        # Keep the newest sample at least a window old: the rate spans a whole minute.
        while len(self._samples) > 1 and now - self._samples[1][0] >= WINDOW_SECONDS:
            self._samples.popleft()
