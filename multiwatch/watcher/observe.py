"""Which observer watches an instance's tree, and what the rest of the watcher asks of it.

`start_observer` picks inotify (inotify_observer.py) or polling (polled.py: a confined
walk, no symlink followed), and falls back to polling when the kernel refuses inotify
(inotify_limits.py words the one line that says so). Both deliver RawEvents
(raw_event.py) on the queue the main loop reads; lost events (a kernel queue overflow, a
refused watch) arrive as events too, so they work at every log level.
"""

from __future__ import annotations

import errno
import logging
import queue
from collections.abc import Callable

from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserverVFS

from multiwatch import inotify_limits
from multiwatch.watcher import inotify_observer
from multiwatch.watcher.confined import ConfinedRoot
from multiwatch.watcher.inotify_observer import DirectInotifyObserver
from multiwatch.watcher.polled import ConfinedSnapshotIO
from multiwatch.watcher.raw_event import WATCHED_EVENTS, Enqueuer, RawEvent

log = logging.getLogger(__name__)


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
            handler = Enqueuer(root, events)
            inotify = DirectInotifyObserver(handler, subdirectories_later=subdirectories_later,
                                            rescan_seconds=max(
                                                polling_interval,
                                                inotify_observer.UNWATCHED_RESCAN_SECONDS),
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
    polling.schedule(Enqueuer(root, events), root, recursive=recursive,
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
