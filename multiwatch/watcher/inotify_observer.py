"""watchdog's inotify observer, reshaped: events on the emitter thread, batched reads, and
watches the kernel refuses (EMFILE, ENOSPC) reported as lost events, never from log records.

Runs on the observer's threads (the inotify reader and the emitter); it only enqueues
RawEvents (raw_event.py) and never raises there. Pinned to watchdog 7.1.x (pyproject.toml):
the inotify watch group, its `_add_callback`, `_add_all_callbacks`, `_lock`, `_id`, `_root`
and `_nodes_by_wd` (the repair after lost events), and the emitter's `_inotify`,
`_inotify_fd` and `build_and_queue_event` are not public API;
tests/watcher/test_observe_internals.py fails loudly if they change shape.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from watchdog.events import (
    FileSystemEvent,
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

from multiwatch import inotify_limits
from multiwatch.watcher.raw_event import OVERFLOW, REFUSED, UNMOUNTED, Enqueuer

log = logging.getLogger("multiwatch.watcher.observe")  # (the logger these lines always had)

# The kernel refused a watch: out of watches (fs.inotify.max_user_watches) or instances.
_WATCH_LIMIT_ERRNOS = frozenset({errno.ENOSPC, errno.EMFILE})

# While a directory is unwatched, the tree is rescanned this often at least (a full walk:
# the polling interval's 1 s would be a walk and a log line every second).
UNWATCHED_RESCAN_SECONDS = 10.0
READER_JOIN_SECONDS = 5.0
# Callback ids of the watch groups' repairs after lost events (see on_queue_overflow);
# the first ids are id(group), memory addresses, far above these.
_REPAIR_IDS = itertools.count(1)


class DirectInotifyObserver(BaseObserver):
    """watchdog's inotify observer, with events delivered on its emitter thread.

    Stock watchdog hands every kernel event from a reader thread to a dispatch thread, on
    to the emitter thread (whose move grouper pairs renames), and each resulting event to
    the observer's dispatcher thread, which calls the handler.  Here the reader thread
    handles what it reads itself (BatchingInotifyFD) and the emitter hands each event
    straight to the handler (DirectInotifyEmitter.queue_event, EventEmitter's public
    hook): two thread hand-offs fewer, and the dispatcher thread idles.  The grouping of
    moves and the bookkeeping of watches (directories moved out lose theirs) are
    watchdog's own, unchanged; the repair of the watches after lost events keeps the
    watches still right instead of replacing them all (DeferringWatchGroup).

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

    def __init__(self, handler: Enqueuer, *, subdirectories_later: bool = False,
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
            if isinstance(callback, DeferringWatchGroup):
                if exc.errno in _WATCH_LIMIT_ERRNOS:
                    callback.watch_refused(path, exc)
                elif exc.errno == errno.ENAMETOOLONG:
                    callback.path_too_long(path)
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
        self._too_long: set[bytes] = set()  # directories warned about (path_too_long)
        super().__post_init__()

    def _add_all_callbacks(self, path: bytes) -> None:
        if self._defer_subdirectories:
            self._defer_subdirectories = False  # only the activation: later calls walk
            self._add_callback(path)
            return
        super()._add_all_callbacks(path)

    def on_queue_overflow(self) -> None:
        """Repair the watches after the kernel dropped events, keeping those still right.

        watchdog's own repair removes every watch and adds them all again, and the kernel
        queues an "ignored" event per watch removed: in a tree of more directories than
        its queue holds (fs.inotify.max_queued_events) that overflows it again at once,
        and the repair repeats forever, deaf to the tree meanwhile.  Here the tree is
        walked and each directory's watch asked for again, under a new callback id: the
        kernel answers the watch it has for that directory (no event) or a new one.  The
        path map is rebuilt from these answers (directories renamed while events were
        lost are found under their new names), and only the watches no directory of the
        tree answered (moved out, or deleted) are removed.  Runs on the reader thread
        (InotifyFD.handle_event), so no event is read, nor delivered twice, meanwhile."""
        with self._lock:
            if not self.is_active or not self.is_recursive:
                return
            stale, self._id = self._id, CallbackId(next(_REPAIR_IDS))
            watched = list(self._nodes_by_wd)
            self._root, self._nodes_by_wd = None, {}
            try:
                self._add_all_callbacks(self.path)
            except OSError as exc:  # the root itself: gone, and the loop will see it
                log.warning("cannot watch the tree again after lost events: %s",
                            exc.strerror or exc, extra={"path": os.fsdecode(self.path)})
            # A watch answered again holds the new id too: it only loses the old one.
            self._inotify_fd.remove_callbacks([(wd, stale) for wd in watched])

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

    def path_too_long(self, path: bytes) -> None:
        """inotify cannot watch `path`: its absolute path is PATH_MAX bytes or more (the
        walk, relative to the root, still lists it).  watchdog skips it silently; it is
        warned about once, since changes inside it are seen only by a later scan."""
        if path not in self._too_long:
            self._too_long.add(path)
            log.warning("cannot watch directory, its path is too long for inotify (PATH_MAX, "
                        "4096 bytes): changes inside it are found only by the next scan",
                        extra={"path": os.fsdecode(path)})

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

    def __init__(self, handler: Enqueuer, rescan_seconds: float, *,
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

    def __init__(self, *args: Any, handler: Enqueuer, subdirectories_later: bool,
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


def quiet_refused_watch_warnings() -> None:
    """Once per process: drop watchdog's warning per directory it could not watch, which
    repeats ours (lost events are detected from events, never from log records)."""
    logger = logging.getLogger("watchdog.observers.inotify")
    logger.filters[:] = [f for f in logger.filters if not isinstance(f, _RefusedWatchFilter)]
    logger.addFilter(_RefusedWatchFilter())
