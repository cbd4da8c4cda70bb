"""Numbers a watcher reports in its heartbeat: event latency and logged problems."""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Callable

from multiwatch.status_view import LatencySnapshot

# Seconds from the first notification of a change to the broker's confirm of its event.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class LatencyHistogram:
    """Prometheus-style histogram, written by the publisher thread, read for heartbeats."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self._sum += seconds

    def snapshot(self) -> LatencySnapshot:
        """Cumulative counts per upper bound, as /metrics exposes them."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, running = [], 0
        for count in counts[:-1]:
            running += count
            cumulative.append(running)
        return {"buckets": list(LATENCY_BUCKETS), "counts": cumulative, "sum": round(total, 6),
                "count": sum(counts)}


class ProblemCounter(logging.Handler):
    """Counts log records at WARNING or above: the instance's error rate.  `wake` (set by the
    main loop) ends the loop's wait, so a problem logged on another thread while the loop
    sleeps (the publisher losing the broker) reaches the supervisor within a heartbeat of a
    busy watcher, not of an idle one."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.wake: Callable[[], None] | None = None  # thread-safe, never blocks

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if self.wake is not None:
            self.wake()
