"""The watchdog side: turn filesystem notifications into plain tuples on a queue.

The handler runs on watchdog's thread and must never raise (an exception there kills the
observer while the process lives on), so it only converts paths and enqueues; all
decisions happen on the pipeline loop.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
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
from watchdog.observers.inotify import InotifyEmitter, InotifyWatchGroup
from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent, InotifyFD
from watchdog.observers.inotify_move_event_grouper import PathedInotifyEvent
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

    def is_root(self, path: bytes) -> bool:
        return self._relative(path) == ""

    def put(self, kind: str, is_directory: bool, src: bytes, dest: bytes | None) -> None:
        """Enqueue one notification from the inotify reader (see _DirectGrouper)."""
        try:
            self._events.put(RawEvent(kind, is_directory, self._relative(src),
                                      self._relative(dest) if dest is not None else None))
        except Exception:  # never let the reader thread die
            log.exception("dropped a filesystem notification", extra={"path": repr(src)})

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            dest = self._relative(event.dest_path) if event.dest_path else None
            self._events.put(
                RawEvent(event.event_type, event.is_directory, self._relative(event.src_path), dest)
            )
        except Exception:  # never let the observer thread die
            log.exception("dropped a filesystem notification", extra={"path": str(event.src_path)})


class DirectInotifyObserver(BaseObserver):
    """watchdog's inotify observer, with notifications delivered on its reader thread.

    Stock watchdog hands every kernel event from its reader thread to an emitter thread
    (through a queue that holds moves back to pair them), builds event objects there, and
    hands those to a dispatcher thread that calls the handler: two thread handoffs and
    several objects per event, about a third of the watcher's CPU in a burst.  Here the
    watch group's move grouper is replaced by _DirectGrouper, which turns each event into
    a RawEvent at once; the emitter thread only expires unpaired moves, and the
    dispatcher thread idles.  Watches, recursion and overflow recovery stay watchdog's.

    With `subdirectories_later`, starting watches the root alone, and the caller's walk
    calls `watch_directory` on every directory below it before listing that directory
    (the startup scan does, see scan.scan_batches): one listing of the tree instead of
    two, and still nothing created behind the walk goes unnoticed, since each directory
    is watched before it is read.  Watches added later (new directories, an overflow's
    rebuild) are watchdog's own recursive ones."""

    def __init__(self, handler: _Enqueuer, *, subdirectories_later: bool = False) -> None:
        self.reader = BatchingInotifyFD()  # this observer's own, stopped with it
        self.reader.start()
        super().__init__(emitter_class=_direct_emitter(handler, subdirectories_later),
                         inotify_fd=self.reader)
        self.subdirectories_later = subdirectories_later

    def on_thread_stop(self) -> None:
        super().on_thread_stop()
        self.reader.stop()
        self.reader.join()

    def watch_directory(self, path: str) -> None:
        """Watch one directory below the root, unless it already is (see the class)."""
        encoded = os.fsencode(path)
        for emitter in self.emitters:
            group = getattr(emitter, "_inotify", None)
            if isinstance(group, _DeferringWatchGroup):
                group.watch_directory(encoded)


class BatchingInotifyFD(InotifyFD):
    """watchdog's inotify reader, pausing BATCH_PAUSE_SECONDS after each read that found
    events, and passing on only the last content event of a file within one read.

    Stock, it wakes for every event a writer makes (a poll and a read each, about a fifth
    of the watcher's CPU in a burst); after the pause one read takes all that arrived
    meanwhile.  A lone event is still handled the moment it arrives: the pause only
    delays events that follow within it."""

    BATCH_PAUSE_SECONDS = 0.002

    def run(self) -> None:
        while self.should_keep_running():
            events = self.read_events()
            for event in latest_content_events(events):
                self.handle_event(event)
            if events:
                time.sleep(self.BATCH_PAUSE_SECONDS)


# Events about a file's content: the pipeline's state after any run of them for one path
# is the state after the last (each restarts the quiet period; a close may shorten it).
_CONTENT_MASKS = frozenset({InotifyConstants.IN_CREATE, InotifyConstants.IN_MODIFY,
                            InotifyConstants.IN_CLOSE_WRITE})


def latest_content_events(events: list[InotifyEvent]) -> list[InotifyEvent]:
    """`events` without the file content events (create, modify, close-after-write) that a
    later one for the same name in the same watched directory supersedes.

    A writer's open-write-close makes three events; the pipeline needs only the last.
    Anything else for that name in between (a deletion, a move) keeps the earlier ones,
    so per-path order is never changed; directories' events are all kept."""
    if len(events) < 2:
        return events
    superseded: set[tuple[int, bytes]] = set()  # names with a later content event
    kept: list[InotifyEvent] = []
    for event in reversed(events):
        key = (event.wd, event.name)
        if event.mask in _CONTENT_MASKS and event.name:  # (a directory's carry IN_ISDIR)
            if key in superseded:
                continue
            superseded.add(key)
        else:
            superseded.discard(key)
        kept.append(event)
    kept.reverse()
    return kept


class _DeferringWatchGroup(InotifyWatchGroup):
    """A watch group whose first activation may leave the subdirectories to the caller."""

    _subdirectories_later = False

    def _add_all_callbacks(self, path: bytes) -> None:
        if self._subdirectories_later:
            self._subdirectories_later = False  # only the activation: later calls walk
            self._add_callback(path)
            return
        super()._add_all_callbacks(path)

    def watch_directory(self, path: bytes) -> None:
        # A path already here is watched, or was replaced by a directory whose creation
        # event watchdog is about to handle (it re-adds the path then): either way, done.
        with self._lock:
            if self.is_active and path not in self._active_callbacks_by_path:
                self._add_callback(path)  # a directory gone meanwhile is skipped, as in a walk


def _direct_emitter(handler: _Enqueuer, subdirectories_later: bool) -> type[InotifyEmitter]:
    class DirectWatchGroup(_DeferringWatchGroup):
        def __post_init__(self) -> None:
            self._move_event_grouper = _DirectGrouper(handler)  # type: ignore[assignment]
            self._subdirectories_later = subdirectories_later and self.is_recursive
            super().__post_init__()

    class DirectInotifyEmitter(InotifyEmitter):
        def on_thread_start(self) -> None:
            self._inotify = DirectWatchGroup(
                self._inotify_fd, os.fsencode(self.watch.path),
                is_recursive=self.watch.is_recursive,
                event_mask=self.get_event_mask_from_filter(),
                follow_symlink=self.watch.follow_symlink)

    return DirectInotifyEmitter


class _DirectGrouper:
    """Stands in for watchdog's InotifyMoveEventGrouper (same methods, called by the watch
    group under its lock): converts events as they are read, pairing renames by cookie.

    A moved-from waits up to MOVE_PAIRING_SECONDS for its moved-to (the kernel queues the
    two together); unpaired, it becomes "deleted" (moved out of the tree).  Any later
    event for the same path releases it first, so per-path order is kept."""

    MOVE_PAIRING_SECONDS = 0.5

    def __init__(self, handler: _Enqueuer) -> None:
        self._handler = handler
        self._held: dict[int, tuple[float, PathedInotifyEvent]] = {}  # cookie → moved-from
        self._changed = threading.Condition()
        self._closed = False

    # -- called on the reader thread, under the watch group's lock -----------------------

    def put_event(self, event: PathedInotifyEvent) -> None:
        ev = event.ev
        if ev.is_moved_from:
            with self._changed:
                self._held[ev.cookie] = (time.monotonic() + self.MOVE_PAIRING_SECONDS, event)
                self._changed.notify()
            return
        if self._held:
            with self._changed:
                held = self._held.pop(ev.cookie, None) if ev.is_moved_to else None
                released = [] if held else self._release(lambda e: e.path == event.path)
            if held is not None:
                self._deliver("moved", held[1], event)
                return
            for moved_from in released:
                self._deliver("deleted", moved_from)
        if ev.is_moved_to or ev.is_create:
            self._deliver("created", event)
        elif ev.is_delete or (ev.is_delete_self and self._handler.is_root(event.path)):
            self._deliver("deleted", event)
        elif not ev.is_directory:
            if ev.is_modify:
                self._deliver("modified", event)
            elif ev.is_close_write:
                self._deliver("closed", event)

    def get_queued_moved_from_event(self, cookie: int) -> PathedInotifyEvent | None:
        with self._changed:
            held = self._held.get(cookie)
        return held[1] if held is not None else None

    def discard_pending_events(self) -> None:
        """After an overflow the pairing is untrustworthy; the rescan that follows decides."""
        with self._changed:
            self._held.clear()

    # -- called on the emitter thread ----------------------------------------------------

    def read_event(self) -> None:
        """Wait until a held moved-from expires (or close()), and deliver it as deleted."""
        expired: list[PathedInotifyEvent] = []
        with self._changed:
            while not self._closed and not expired:
                now = time.monotonic()
                expired = self._release(lambda e: False, now)
                if not expired:
                    deadlines = [deadline for deadline, _ in self._held.values()]
                    self._changed.wait(min(deadlines) - now if deadlines else None)
        for moved_from in expired:
            self._deliver("deleted", moved_from)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def _release(self, matches: Callable[[PathedInotifyEvent], bool],
                 now: float | None = None) -> list[PathedInotifyEvent]:
        """Take out held moved-froms that match, or that expired by `now` (lock held)."""
        out = [cookie for cookie, (deadline, e) in self._held.items()
               if matches(e) or (now is not None and deadline <= now)]
        return [self._held.pop(cookie)[1] for cookie in out]

    def _deliver(self, kind: str, event: PathedInotifyEvent,
                 moved_to: PathedInotifyEvent | None = None) -> None:
        self._handler.put(kind, event.ev.is_directory, event.path,
                          moved_to.path if moved_to is not None else None)


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
    polling_interval: float = 1.0, subdirectories_later: bool = False,
) -> BaseObserver:
    """Start watching `root` with inotify or by polling.

    "auto" falls back to polling, with a warning, when inotify cannot be used (watch or
    instance limits reached: ENOSPC, EMFILE); "inotify" raises instead.

    `subdirectories_later`: an inotify observer watches the root alone, and the caller
    must pass `directory_watcher(observer)` to a walk of the whole tree (see
    DirectInotifyObserver); a polling observer needs no such walk.
    """
    if mode != "polling":
        inotify: DirectInotifyObserver | None = None
        try:
            handler = _Enqueuer(root, events)
            inotify = DirectInotifyObserver(handler, subdirectories_later=subdirectories_later)
            inotify.schedule(handler, root, recursive=recursive, event_filter=WATCHED_EVENTS)
            inotify.start()
            return inotify
        except (OSError, RecursionError) as exc:
            if inotify is not None:
                inotify.stop()  # and its inotify reader thread, started with it
            if mode == "inotify":
                raise
            log.warning(
                "inotify unavailable (%s); falling back to polling every %.1fs",
                exc, polling_interval, extra={"path": root},
            )
    polling = PollingObserver(timeout=polling_interval)
    polling.schedule(_Enqueuer(root, events), root, recursive=recursive,
                     event_filter=WATCHED_EVENTS)
    polling.start()
    return polling


def directory_watcher(observer: BaseObserver) -> Callable[[str], None] | None:
    """What a walk must call on each directory (absolute path) before listing it, for an
    observer started with `subdirectories_later`; None when nothing is needed."""
    if isinstance(observer, DirectInotifyObserver) and observer.subdirectories_later:
        return observer.watch_directory
    return None
