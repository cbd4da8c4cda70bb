"""How full the outbox is, shared by the pipeline (adds) and the publisher (removes).

The rows live in the state database (state.py); this gauge keeps their count and size in
memory so the bound can be checked on every loop turn without a query, and wakes the
publisher when something new was committed.
"""

from __future__ import annotations

import threading


class OutboxGauge:
    """Events and bytes waiting for the broker's confirm, against their configured bound."""

    def __init__(self, *, events: int, size: int, max_events: int, max_bytes: int) -> None:
        self._lock = threading.Lock()
        self._events = events
        self._bytes = size
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.new_events = threading.Event()
        # message_id → when its change was first noticed (monotonic); the publisher pops it
        # on confirm to measure latency.  Lost on restart, which only skips a measurement.
        self.noticed_at: dict[str, float] = {}

    def added(self, events: int, size: int) -> None:
        with self._lock:
            self._events += events
            self._bytes += size
        self.new_events.set()

    def removed(self, events: int, size: int) -> None:
        # Not clamped: the publisher may confirm and delete a row the pipeline committed
        # before the pipeline has counted it (added() follows the commit); the late added()
        # then brings the count back to the truth.  Only what is shown is clamped.
        with self._lock:
            self._events -= events
            self._bytes -= size

    @property
    def depth(self) -> int:
        return max(0, self._events)

    @property
    def size(self) -> int:
        return max(0, self._bytes)

    @property
    def full(self) -> bool:
        return self._events >= self.max_events or self._bytes >= self.max_bytes
