"""What the publisher thread reports to the watcher's main loop (and on to /status).

Written only by the publisher thread, read by the main loop: plain attributes, each
assignment atomic under the GIL.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

# How far past the deadline it set itself the publisher may be before the main loop calls
# it stuck: room for a GIL held by hashing or a slow disk, not for a wait without an end.
STALL_GRACE_SECONDS = 10.0


@dataclass
class PublisherStats:
    """Counters and conditions of the publisher, for heartbeats."""

    connected: bool = False
    published: int = 0
    failures: int = 0
    last_error: str = ""
    unroutable: int = 0  # publishes the broker returned (no queue bound for the key)
    nacked: int = 0  # publishes the broker rejected
    held: str = ""  # why the head event is held ("" while none is)
    blocked: str = ""  # the broker's Connection.Blocked reason, while it blocks us
    fatal: str = ""  # why the thread ended on its own

    @property
    def problem(self) -> str:
        """What keeps events from leaving while connected ("" when nothing does)."""
        if self.held:
            return f"publishing held: {self.held}"
        if self.blocked:
            return f"the broker blocked the connection: {self.blocked}"
        return ""


class Progress:
    """When the publisher expects to be back from its current wait, and what it waits for.

    The thread calls expect() before every bounded wait; the main loop calls stuck()."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._due = clock() + STALL_GRACE_SECONDS
        self.doing = "starting"

    def expect(self, seconds: float, doing: str) -> None:
        """The current wait ends within `seconds` (plus the grace)."""
        self.doing = doing
        self._due = self._clock() + max(seconds, 0.0)

    def overdue(self, now: float) -> float:
        return now - self._due

    def stuck(self, now: float) -> str:
        """Why the publisher counts as stuck ("" while it keeps its deadlines)."""
        late = self.overdue(now)
        if late <= STALL_GRACE_SECONDS:
            return ""
        return f"publisher stuck {late:.0f}s past its deadline while {self.doing}"
