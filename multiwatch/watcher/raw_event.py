"""The watcher's event vocabulary: watchdog's events turned into plain tuples on a queue.

`Enqueuer` runs on watchdog's threads (the inotify emitter or the polling observer): it
only converts paths and enqueues, and never raises (an exception there kills the thread
while the process lives on); all decisions happen on the main loop (pipeline.py).
"""

from __future__ import annotations

import logging
import os
import queue
from enum import StrEnum
from typing import NamedTuple

from watchdog.events import (
    DirAttribEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    EventsLostEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

log = logging.getLogger("multiwatch.watcher.observe")  # (the logger these lines always had)

WATCHED_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileAttribEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    DirAttribEvent,
]


class EventKind(StrEnum):
    """What a RawEvent says happened (a str: equal to its value, cheap to compare)."""

    CREATED = "created"
    MODIFIED = "modified"
    CLOSED = "closed"  # closed after a write
    DELETED = "deleted"
    MOVED = "moved"
    ATTRIB = "attrib"  # mode or owner changed
    OVERFLOW = "overflow"  # events were lost: rescan
    # Wake-ups of the main loop, with no path (the pipeline ignores them):
    UNMOUNTED = "unmounted"  # a watched filesystem was unmounted: check the mounts now
    HASHED = "hashed"  # the hash pool finished a job
    WAKE = "wake"  # SIGTERM


# watchdog event class → RawEvent kind.  Anything else (a directory's "modified", opens,
# closes without a write) is of no use to the pipeline and is dropped.


_KINDS: dict[type[FileSystemEvent], EventKind] = {
    FileCreatedEvent: EventKind.CREATED, DirCreatedEvent: EventKind.CREATED,
    FileModifiedEvent: EventKind.MODIFIED,
    FileClosedEvent: EventKind.CLOSED,
    FileDeletedEvent: EventKind.DELETED, DirDeletedEvent: EventKind.DELETED,
    FileMovedEvent: EventKind.MOVED, DirMovedEvent: EventKind.MOVED,
    FileAttribEvent: EventKind.ATTRIB, DirAttribEvent: EventKind.ATTRIB,
}


class RawEvent(NamedTuple):
    """A notification with paths relative to the watched root; None = outside the tree.

    A tuple rather than a dataclass: one is built per kernel event, on watchdog's thread."""

    kind: EventKind
    is_directory: bool
    src: str | None
    dest: str | None = None


OVERFLOW = RawEvent(EventKind.OVERFLOW, True, "")
# A watched filesystem was unmounted: only wakes the loop, whose mount check (mount.py)
# then sees it at once instead of at its next idle turn.  (No path: the pipeline ignores it.)
UNMOUNTED = RawEvent(EventKind.UNMOUNTED, True, None)
# The kernel refused a watch of an "auto" observer: only wakes the loop, which then
# replaces the observer by a polling one (see inotify_refused).
REFUSED = RawEvent(EventKind.WAKE, True, None)


class Enqueuer(FileSystemEventHandler):
    """The handler every observer is given: watchdog events → RawEvents on the queue."""

    def __init__(self, root: str, events: queue.SimpleQueue[RawEvent]) -> None:
        self._root = root.rstrip("/")
        self._prefix = self._root + "/"
        self._events = events

    def _relative(self, path: str | bytes) -> str | None:
        """Path relative to the root ("" for the root itself); None if outside the tree."""
        text = os.fsdecode(path)
        if text == self._root:
            return ""
        return text[len(self._prefix) :] if text.startswith(self._prefix) else None

    def put(self, event: RawEvent) -> None:
        self._events.put(event)

    def dispatch(self, event: FileSystemEvent) -> None:
        """One watchdog event → at most one RawEvent; never raises (see the module)."""
        try:
            if isinstance(event, EventsLostEvent):
                self._events.put(OVERFLOW)
                return
            kind = _KINDS.get(type(event))
            # Synthetic events are watchdog's walk of a directory moved or created in the
            # tree, or moved out: the directory's own event covers them (the pipeline scans
            # a created directory, and moves or forgets what it tracked below a moved one).
            if kind is None or event.is_synthetic:
                return
            dest = self._relative(event.dest_path) if event.dest_path else None
            self._events.put(RawEvent(kind, event.is_directory,
                                      self._relative(event.src_path), dest))
        except Exception:
            log.exception("dropped a filesystem notification",
                          extra={"path": repr(event.src_path)})
