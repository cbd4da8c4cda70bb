"""The watchdog side: turn filesystem notifications into plain tuples on a queue.

The handler runs on watchdog's thread and must never raise (an exception there kills the
observer while the process lives on), so it only converts paths and enqueues; all
decisions happen on the pipeline loop.
"""

from __future__ import annotations

import logging
import os
import queue
from typing import NamedTuple

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify import InotifyEmitter
from watchdog.observers.polling import PollingObserver

log = logging.getLogger(__name__)

WATCHED_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
]


class RawEvent(NamedTuple):
    """A notification with paths relative to the watched root; None = outside the tree.

    A tuple rather than a dataclass: one is built per kernel event, on watchdog's thread."""

    kind: str  # created | modified | closed | deleted | moved | overflow (events were lost)
    is_directory: bool
    src: str | None
    dest: str | None = None


class _Enqueuer(FileSystemEventHandler):
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

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            dest = self._relative(event.dest_path) if event.dest_path else None
            self._events.put(
                RawEvent(event.event_type, event.is_directory, self._relative(event.src_path), dest)
            )
        except Exception:  # never let the observer thread die
            log.exception("dropped a filesystem notification", extra={"path": str(event.src_path)})


class DirectInotifyObserver(BaseObserver):
    """An inotify observer whose emitter calls `handler` itself (see _direct_emitter)."""

    def __init__(self, handler: _Enqueuer) -> None:
        super().__init__(emitter_class=_direct_emitter(handler))


def _direct_emitter(handler: _Enqueuer) -> type[InotifyEmitter]:
    """watchdog's inotify emitter, handing each wanted event straight to our handler.

    The stock path queues every event (and a directory-modified event beside most of them)
    for the observer's dispatcher thread, which then calls the handler: a second thread
    handoff per event that cost about a sixth of the watcher's CPU in a burst.  The
    dispatcher thread still runs, idle."""
    wanted = frozenset(WATCHED_EVENTS)

    class DirectInotifyEmitter(InotifyEmitter):
        def queue_event(self, event: FileSystemEvent) -> None:
            if type(event) in wanted:
                handler.dispatch(event)

    return DirectInotifyEmitter


class _LostEventsListener(logging.Handler):
    """watchdog only logs when the kernel queue overflows or a watch cannot be re-added;
    turn those warnings into an "overflow" notification so the pipeline rescans."""

    def __init__(self, events: queue.SimpleQueue[RawEvent]) -> None:
        super().__init__(logging.WARNING)
        self._events = events

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage().lower()
        if "overflow" in text or "unable to" in text:
            self._events.put(RawEvent("overflow", True, ""))


def listen_for_lost_events(events: queue.SimpleQueue[RawEvent]) -> None:
    """Install the listener once per process (a child watches a single tree)."""
    logger = logging.getLogger("watchdog.observers")
    logger.handlers[:] = [h for h in logger.handlers if not isinstance(h, _LostEventsListener)]
    logger.addHandler(_LostEventsListener(events))


def start_observer(
    root: str, *, recursive: bool, events: queue.SimpleQueue[RawEvent], mode: str = "auto",
    polling_interval: float = 1.0,
) -> BaseObserver:
    """Start watching `root` with inotify or by polling.

    "auto" falls back to polling, with a warning, when inotify cannot be used (watch or
    instance limits reached: ENOSPC, EMFILE); "inotify" raises instead.
    """
    if mode != "polling":
        try:
            handler = _Enqueuer(root, events)
            observer: BaseObserver = DirectInotifyObserver(handler)
            observer.schedule(handler, root, recursive=recursive, event_filter=WATCHED_EVENTS)
            observer.start()
            return observer
        except (OSError, RecursionError) as exc:
            if mode == "inotify":
                raise
            log.warning(
                "inotify unavailable (%s); falling back to polling every %.1fs",
                exc, polling_interval, extra={"path": root},
            )
    observer = PollingObserver(timeout=polling_interval)
    observer.schedule(_Enqueuer(root, events), root, recursive=recursive,
                      event_filter=WATCHED_EVENTS)
    observer.start()
    return observer
