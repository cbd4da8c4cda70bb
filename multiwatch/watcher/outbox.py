"""The outbox between the pipeline and the publisher thread.

An event leaves the outbox only when the publisher acknowledges it, i.e. after the
broker confirmed it.  This in-memory version keeps order and survives broker outages;
the durable sqlite outbox replaces it behind the same interface.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from multiwatch.watcher.message import Event


class Outbox:
    """FIFO of events awaiting broker confirmation; safe across two threads."""

    def __init__(self) -> None:
        self._events: deque[Event] = deque()
        self._changed = threading.Condition()

    def __len__(self) -> int:
        with self._changed:
            return len(self._events)

    def put(self, event: Event) -> None:
        with self._changed:
            self._events.append(event)
            self._changed.notify_all()

    def peek(self, timeout: float) -> Event | None:
        """The oldest unconfirmed event, waiting up to `timeout` for one to arrive."""
        with self._changed:
            if not self._events:
                self._changed.wait(timeout)
            return self._events[0] if self._events else None

    def ack(self, event: Event) -> None:
        """Remove `event`, which the broker has confirmed."""
        with self._changed:
            if self._events and self._events[0] is event:
                self._events.popleft()
                self._changed.notify_all()

    def wait_empty(self, deadline: float) -> bool:
        """Block until the outbox is empty or time.monotonic() reaches deadline."""
        with self._changed:
            while self._events:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True
