"""The watchdog side: turn filesystem notifications into plain tuples on a queue.

Nothing here may raise on watchdog's threads (an exception there kills the thread while
the process lives on), so they only convert paths and enqueue; all decisions happen on
the pipeline loop.  Lost events (a kernel queue overflow, a watch the kernel refused) are
detected from watchdog's events and its inotify reader, never from its log records, so
they work at every log level.

Pinned to watchdog 7.1.x (pyproject.toml): the inotify watch group, its `_add_callback` and
`_lock`, and the emitter's `_inotify`, `_inotify_fd` and `build_and_queue_event` are not
public API; tests/watcher/test_observe_internals.py fails loudly if they change shape.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

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
from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify import InotifyEmitter, InotifyWatchGroup
from watchdog.observers.inotify_c import (
    CallbackId,
    InotifyConstants,
    InotifyEvent,
    InotifyFD,
    Mask,
    WatchCallback,
    WatchDescriptor,
)
from watchdog.observers.polling import PollingObserverVFS

from multiwatch import inotify_limits
from multiwatch.watcher.confined import ConfinedRoot
from multiwatch.watcher.polled import ConfinedSnapshotIO

log = logging.getLogger(__name__)

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

# The kernel refused a watch: out of watches (fs.inotify.max_user_watches) or instances.
_WATCH_LIMIT_ERRNOS = frozenset({errno.ENOSPC, errno.EMFILE})

# While a directory is unwatched, the tree is rescanned this often at least (a full walk:
# the polling interval's 1 s would be a walk and a log line every second).
UNWATCHED_RESCAN_SECONDS = 10.0
READER_JOIN_SECONDS = 5.0


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


class DirectInotifyObserver(BaseObserver):
    """watchdog's inotify observer, with events delivered on its emitter thread.

    Stock watchdog hands every kernel event from a reader thread to a dispatch thread, on
    to the emitter thread (whose move grouper pairs renames), and each resulting event to
    the observer's dispatcher thread, which calls the handler.  Here the reader thread
    handles what it reads itself (BatchingInotifyFD) and the emitter hands each event
    straight to the handler (DirectInotifyEmitter.queue_event, EventEmitter's public
    hook): two thread hand-offs fewer, and the dispatcher thread idles.  The grouping of
    moves, the bookkeeping of watches (directories moved out lose theirs) and overflow
    recovery are watchdog's own, unchanged.

    With `subdirectories_later`, starting watches the root alone, and the caller's walk
    calls `watch_directory` on every directory below it before listing that directory
    (the startup scan does, see scan.scan_batches): one listing of the tree instead of
    two, and still nothing created behind the walk goes unnoticed, since each directory
    is watched before it is read.  Watches added later (new directories, an overflow's
    rebuild) are watchdog's own recursive ones.

    A directory the kernel refuses to watch (out of watches): with `give_way` (observer:
    auto) the observer stops adding watches and `inotify_refused` tells the loop to poll
    instead; without, it is reported once, and the tree is rescanned every
    `rescan_seconds` while any directory is unwatched (see _UnwatchedDirectories)."""

    def __init__(self, handler: _Enqueuer, *, subdirectories_later: bool = False,
                 rescan_seconds: float = 10.0, give_way: bool = False) -> None:
        self.reader = BatchingInotifyFD()  # this observer's own, stopped with it
        self.reader.on_unmount = lambda: handler.put(UNMOUNTED)
        self.reader.start()
        self.unwatched = _UnwatchedDirectories(handler, rescan_seconds, give_way=give_way)
        super().__init__(DirectInotifyEmitter, inotify_fd=self.reader, handler=handler,
                         subdirectories_later=subdirectories_later, unwatched=self.unwatched)
        self.subdirectories_later = subdirectories_later

    def on_thread_stop(self) -> None:
        super().on_thread_stop()
        self.unwatched.stop()
        self.reader.stop()
        self.reader.join(READER_JOIN_SECONDS)  # stop() wakes its poll through a pipe

    def watch_directory(self, path: str) -> None:
        """Watch one directory below the root, unless it already is (see the class)."""
        if self.unwatched.refusal is not None:
            return  # giving way to polling: every further watch would be refused too
        encoded = os.fsencode(path)
        for emitter in self.emitters:
            group = getattr(emitter, "_inotify", None)
            if isinstance(group, DeferringWatchGroup):
                group.watch_directory(encoded)


class BatchingInotifyFD(InotifyFD):
    """watchdog's inotify reader, handling what it reads on its own thread, pausing
    BATCH_PAUSE_SECONDS after each read that found events, and passing on only the last
    content event of a file within one read.

    Stock, it wakes for every event a writer makes and hands each read to a second thread;
    after the pause one read takes all that arrived meanwhile.  A lone event is still
    handled the moment it arrives: the pause only delays events that follow within it.

    It also tells a watch group when the kernel refuses one of its watches (ENOSPC,
    EMFILE), which watchdog itself only logs."""

    BATCH_PAUSE_SECONDS = 0.002
    on_unmount: Callable[[], None] | None = None  # called when a watched filesystem goes

    def run(self) -> None:
        while self.should_keep_running():
            events = self.read_events()
            for event in latest_content_events(events):
                self.handle_event(event)
            if events:
                if self.on_unmount is not None and any(
                        e.mask & InotifyConstants.IN_UNMOUNT for e in events):
                    self.on_unmount()
                time.sleep(self.BATCH_PAUSE_SECONDS)

    def add_callback(self, path: bytes, mask: Mask, callback: WatchCallback,
                     id_: CallbackId) -> WatchDescriptor:
        try:
            return super().add_callback(path, mask, callback, id_)
        except OSError as exc:
            if exc.errno in _WATCH_LIMIT_ERRNOS and isinstance(callback, DeferringWatchGroup):
                callback.watch_refused(path, exc)
            raise


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


@dataclass
class DeferringWatchGroup(InotifyWatchGroup):
    """watchdog's watch group, whose first activation may leave the subdirectories to the
    caller (`watch_directory`), and which reports watches the kernel refused.

    It subclasses a private class because watchdog has no public way to add one
    directory's watch to a recursive watch: `_add_callback` (which returns at once for a
    directory already watched, O(depth)) and `_lock` are used as they are."""

    subdirectories_later: bool = False
    unwatched: _UnwatchedDirectories | None = None

    def __post_init__(self) -> None:
        self._defer_subdirectories = self.subdirectories_later and self.is_recursive
        super().__post_init__()

    def _add_all_callbacks(self, path: bytes) -> None:
        if self._defer_subdirectories:
            self._defer_subdirectories = False  # only the activation: later calls walk
            self._add_callback(path)
            return
        super()._add_all_callbacks(path)

    def watch_directory(self, path: bytes) -> None:
        """Watch `path` unless it is watched already; a directory gone meanwhile is
        skipped, as in a walk.  A path already here is watched, or was replaced by a
        directory whose creation event watchdog is about to handle (it re-adds it then)."""
        with self._lock:
            if self.is_active:
                self._add_callback(path)

    def watch_tree(self, path: bytes) -> None:
        """Watch `path` and every directory below it not yet watched."""
        with self._lock:
            if self.is_active:
                try:
                    self._add_all_callbacks(path)
                except OSError:
                    pass  # the root refused again (watch_refused has recorded it)

    def watch_refused(self, path: bytes, exc: OSError) -> None:
        """The kernel refused the watch of `path` (called by BatchingInotifyFD, under
        `_lock`).  On activation the failure is raised to the caller instead."""
        if self.is_active and self.unwatched is not None:
            self.unwatched.add(self, path, exc)


class _UnwatchedDirectories:
    """Directories the kernel refused to watch: no event comes from inside them.

    With `give_way` (observer: auto) the first refusal is only recorded (`refusal`) and
    wakes the loop, which replaces the whole observer by a polling one (main.py).
    Otherwise (observer: inotify) the first refusal is logged (one line) and an "overflow"
    makes the pipeline rescan; then every `rescan_seconds`, the watches are retried (the
    first one alone while the kernel still refuses it) and the tree rescanned, until every
    directory is watched."""

    def __init__(self, handler: _Enqueuer, rescan_seconds: float, *,
                 give_way: bool = False) -> None:
        self._handler = handler
        self._rescan_seconds = rescan_seconds
        self._give_way = give_way
        self.refusal: OSError | None = None  # the first refusal, when giving way
        self._lock = threading.Lock()
        self._paths: dict[bytes, DeferringWatchGroup] = {}  # insertion order: parents first
        self._retrying: threading.Thread | None = None
        self._stopped = threading.Event()

    def __len__(self) -> int:
        with self._lock:
            return len(self._paths)

    def add(self, group: DeferringWatchGroup, path: bytes, exc: OSError) -> None:
        """Called on any thread, under the group's lock: record, never block on it."""
        if self._give_way:
            if self.refusal is None:
                self.refusal = exc
                self._handler.put(REFUSED)
            return
        with self._lock:
            self._paths[path] = group
            if self._retrying is not None or self._stopped.is_set():
                return
            self._retrying = threading.Thread(target=self._retry, daemon=True,
                                              name="multiwatch-unwatched-retry")
            self._retrying.start()
        limit = inotify_limits.read_limit(inotify_limits.WATCHES)
        log.error("the kernel refused an inotify watch (%s): directories below %s are not "
                  "watched; rescanning the tree every %.0fs until they are (raise %s, or "
                  "set observer: auto or polling)",
                  exc.strerror or exc, os.fsdecode(path), self._rescan_seconds,
                  f"{limit.sysctl}={limit.value}" if limit else "fs.inotify.max_user_watches",
                  extra={"path": os.fsdecode(path)})
        self._handler.put(OVERFLOW)

    def stop(self) -> None:
        self._stopped.set()

    def _retry(self) -> None:
        while not self._stopped.wait(self._rescan_seconds):
            if self._rewatch():
                log.info("every directory is watched again; rescanning once more")
                self._handler.put(OVERFLOW)
                return
            self._handler.put(OVERFLOW)

    def _rewatch(self) -> bool:
        """Retry the refused watches; True when none is left (and the retries end)."""
        with self._lock:
            pending = list(self._paths.items())
            self._paths.clear()
        for index, (path, group) in enumerate(pending):
            group.watch_tree(path)  # a refusal re-adds it (add)
            with self._lock:
                if path in self._paths:  # still refused: keep the rest for the next turn
                    self._paths.update(pending[index + 1:])
                    return False
        with self._lock:
            if self._paths:
                return False
            self._retrying = None
            return True


class DirectInotifyEmitter(InotifyEmitter):
    """watchdog's InotifyEmitter (its move grouping and `build_and_queue_event` unchanged),
    delivering each event to the handler on this thread instead of the observer's queue,
    through EventEmitter's public `queue_event` hook."""

    def __init__(self, *args: Any, handler: _Enqueuer, subdirectories_later: bool,
                 unwatched: _UnwatchedDirectories, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handler = handler
        self._subdirectories_later = subdirectories_later
        self._unwatched = unwatched

    def on_thread_start(self) -> None:
        # InotifyEmitter.on_thread_start with our watch group (no public way to pick one).
        self._inotify = DeferringWatchGroup(
            self._inotify_fd, os.fsencode(self.watch.path),
            is_recursive=self.watch.is_recursive,
            event_mask=self.get_event_mask_from_filter(),
            follow_symlink=self.watch.follow_symlink,
            subdirectories_later=self._subdirectories_later, unwatched=self._unwatched)

    def get_event_mask_from_filter(self) -> Mask:
        # watchdog maps no filter class to IN_ATTRIB but the modified ones: ask explicitly.
        return Mask(super().get_event_mask_from_filter() | InotifyConstants.IN_ATTRIB)

    def queue_event(self, event: FileSystemEvent) -> None:
        self._handler.dispatch(event)

    def queue_events(self, timeout: float, *, full_events: bool = False) -> None:
        try:
            super().queue_events(timeout, full_events=full_events)
        except Exception:  # the thread must live on; what it was handling may be lost
            log.exception("inotify event handling failed; rescanning")
            self._handler.put(OVERFLOW)


class _RefusedWatchFilter(logging.Filter):
    """Drops watchdog's warning per directory it could not watch (thousands, when the
    kernel is out of watches): _UnwatchedDirectories says it once, at ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith("Unable to watch"))


def listen_for_lost_events(events: queue.SimpleQueue[RawEvent]) -> None:
    """Once per process.  Lost events no longer depend on watchdog's log records (see the
    module): this only quiets watchdog's per-directory warnings that repeat ours."""
    del events  # kept for callers; the observer reports lost events itself
    logger = logging.getLogger("watchdog.observers.inotify")
    logger.filters[:] = [f for f in logger.filters if not isinstance(f, _RefusedWatchFilter)]
    logger.addFilter(_RefusedWatchFilter())


class ConfinedPollingObserver(PollingObserverVFS):
    """watchdog's polling observer over the confined walk (polled.py); `because` says why
    it polls when the roster did not ask for it ("inotify limit")."""

    because = ""


def start_observer(
    root: str, *, recursive: bool, events: queue.SimpleQueue[RawEvent], mode: str = "auto",
    polling_interval: float = 1.0, subdirectories_later: bool = False,
    one_filesystem: bool = False, refused: OSError | None = None,
) -> BaseObserver:
    """Start watching `root` with inotify or by polling.

    "auto" falls back to polling, with one WARNING line naming the limit and the value it
    needs (inotify_limits), when the kernel refuses an inotify instance (EMFILE) or a watch
    (ENOSPC); "inotify" raises instead.  A watch refused later: an "auto" observer gives
    way (`inotify_refused`), and the caller starts a polling one with `refused` (that
    refusal), which says so the same way; an "inotify" one retries (DirectInotifyObserver).

    `subdirectories_later`: an inotify observer watches the root alone, and the caller
    must pass `directory_watcher(observer)` to a walk of the whole tree (see
    DirectInotifyObserver); a polling observer needs no such walk.  `one_filesystem`: the
    polling walk leaves out directories on another device (inotify's watches below the
    root come from that walk, which does the same).
    """
    if mode != "polling" and refused is None:
        inotify: DirectInotifyObserver | None = None
        try:
            handler = _Enqueuer(root, events)
            inotify = DirectInotifyObserver(handler, subdirectories_later=subdirectories_later,
                                            rescan_seconds=max(polling_interval,
                                                               UNWATCHED_RESCAN_SECONDS),
                                            give_way=mode == "auto")
            inotify.schedule(handler, root, recursive=recursive, event_filter=WATCHED_EVENTS)
            inotify.start()
            return inotify
        except (OSError, RecursionError) as exc:
            if inotify is not None:
                inotify.stop()  # and its inotify reader thread, started with it
            if mode == "inotify":
                if isinstance(exc, OSError) and exc.errno in _LIMIT_ERRNOS:
                    raise OSError(exc.errno, _refusal_line(exc, root, recursive, "")) from exc
                raise
            if isinstance(exc, OSError) and exc.errno in _LIMIT_ERRNOS:
                refused = exc
            else:
                log.warning("inotify unavailable (%s); falling back to polling every %gs",
                            exc, polling_interval, extra={"path": root})
    polling = _start_polling(root, recursive=recursive, events=events,
                             polling_interval=polling_interval, one_filesystem=one_filesystem)
    if refused is not None:
        polling.because = "inotify limit"
        log.warning(_refusal_line(refused, root, recursive, f"polling every {polling_interval:g}s"),
                    extra={"path": root})
    return polling


# inotify_init: EMFILE (fs.inotify.max_user_instances, or RLIMIT_NOFILE), ENFILE (the
# system's file table); inotify_add_watch: ENOSPC (fs.inotify.max_user_watches).
_LIMIT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOSPC})


def _refusal_line(exc: OSError, root: str, recursive: bool, polling: str) -> str:
    """The one line saying which limit refused inotify and the value it needs; `polling`
    is what the watcher does instead ("" when it does not: observer: inotify)."""
    instead = polling or "not watching"
    if exc.errno == errno.ENOSPC:
        return inotify_limits.watch_refused(exc, root, recursive=recursive, polling=instead)
    return inotify_limits.instance_refused(exc, polling=instead)


def _start_polling(root: str, *, recursive: bool, events: queue.SimpleQueue[RawEvent],
                   polling_interval: float, one_filesystem: bool) -> ConfinedPollingObserver:
    # watchdog's own polling walk follows directory symlinks out of the tree and round loops:
    # it lists and stats below the root's descriptor instead, never through a symlink.
    confined = ConfinedSnapshotIO(ConfinedRoot(root), one_filesystem=one_filesystem)
    polling = ConfinedPollingObserver(confined.stat, confined.listdir,  # type: ignore[arg-type]
                                      polling_interval=polling_interval)
    polling.schedule(_Enqueuer(root, events), root, recursive=recursive,
                     event_filter=WATCHED_EVENTS)
    polling.start()
    return polling


def inotify_refused(observer: BaseObserver) -> OSError | None:
    """The watch the kernel refused an "auto" inotify observer, which then waits to be
    replaced: stopped (its watches go back to the kernel, for the other watchers of this
    user) and a polling observer started with `refused=` this, then the tree rescanned
    (what changed in between)."""
    if isinstance(observer, DirectInotifyObserver):
        return observer.unwatched.refusal
    return None


def observer_mode(observer: BaseObserver | None) -> str:
    """How the tree is watched, for the heartbeat: "inotify", "polling", "polling
    (inotify limit)", or "none" (waiting for the directory's mount)."""
    if observer is None:
        return "none"
    if isinstance(observer, ConfinedPollingObserver):
        return f"polling ({observer.because})" if observer.because else "polling"
    return "inotify"


def directory_watcher(observer: BaseObserver) -> Callable[[str], None] | None:
    """What a walk must call on each directory (absolute path) before listing it, for an
    observer started with `subdirectories_later`; None when nothing is needed."""
    if isinstance(observer, DirectInotifyObserver) and observer.subdirectories_later:
        return observer.watch_directory
    return None
