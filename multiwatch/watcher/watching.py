"""The observer's life in a watcher: started with a reconcile scan, replaced when it dies,
stopped while the directory's filesystem is unmounted and started again once it is back.
Runs on the watcher's main thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time

from watchdog.observers.api import BaseObserver

from multiwatch.config import InstanceConfig
from multiwatch.watcher.mount import META_KEY, UNMOUNTED, MountGuard
from multiwatch.watcher.observe import directory_watcher, start_observer
from multiwatch.watcher.parent_link import ParentLink, sigterm_for_main_thread_only
from multiwatch.watcher.pipeline import Pipeline
from multiwatch.watcher.raw_event import RawEvent
from multiwatch.watcher.spec import Report
from multiwatch.watcher.state import StateStore

log = logging.getLogger("multiwatch.watcher.main")  # (the logger these lines always had)

OBSERVER_JOIN_SECONDS = 5.0


def stop_observer(observer: BaseObserver, within: float) -> bool:
    """Stop the observer, waiting at most `within` seconds; True once it has stopped.

    watchdog's stop() joins each emitter without a deadline, and a polling emitter ends
    only when its walk in progress does: minutes on a slow network mount, never on a hung
    one.  So stop() runs on a thread of its own; one that has not ended in time is left
    behind (watchdog's threads and this one are daemons: they end with the process)."""
    deadline = time.monotonic() + within
    with sigterm_for_main_thread_only():
        stopper = threading.Thread(target=observer.stop, name="observer-stop", daemon=True)
        stopper.start()
    stopper.join(within)
    if stopper.is_alive():
        log.warning("the filesystem observer did not stop within %gs (a walk of a slow or "
                    "hung mount in progress?); leaving it behind", within)
        return False
    observer.join(timeout=max(deadline - time.monotonic(), 0.0))
    return not observer.is_alive()


def start_watching(instance: InstanceConfig, pipeline: Pipeline, mounts: MountGuard,
                    store: StateStore) -> BaseObserver:
    """Remember the root's mount, start the observer, then reconcile by scan (observer
    first: nothing created during the scan can slip through; the scan also adds the
    watches below the root, each before it lists the directory)."""
    mount = mounts.adopt()
    if mount is not None:
        try:  # so the next start can tell a bare mount point from this filesystem
            store.set_meta(META_KEY, mount.to_json())
        except sqlite3.Error as exc:
            log.warning("cannot record the directory's mount: %s", exc)
    observer = observe(instance, pipeline)
    pipeline.request_scan(watch=directory_watcher(observer))
    return observer


def follow_mount(instance: InstanceConfig, pipeline: Pipeline, mounts: MountGuard,
                  store: StateStore, parent: ParentLink,
                  observer: BaseObserver | None) -> BaseObserver | None:
    """Stop watching when the root's filesystem goes away (nothing it seems to lose is
    announced), and resume with a reconcile scan once it is back; None while waiting."""
    if not mounts.unmounted:
        if not (mounts.lost() or mounts.mount_gone()):
            if observer is not None:
                follow_submounts(instance, pipeline, mounts, observer)
            return observer
        gone = mounts.expected
        log.warning(UNMOUNTED, extra={"path": instance.directory,
                                      **(gone.fields() if gone else {})})
        mounts.unmounted = True
        if observer is not None:
            stop_observer(observer, OBSERVER_JOIN_SECONDS)
        _discard(pipeline.notifications)  # what the unmount looked like (polling: deletions)
        pipeline.root_missing = False
    why_waiting = mounts.why_waiting(tracked_files=len(pipeline.tracked))
    if why_waiting is not None:
        parent.send(Report.WAITING, {"reason": UNMOUNTED})  # (also tells the hang check we live)
        return None
    _discard(pipeline.notifications)
    observer = start_watching(instance, pipeline, mounts, store)
    log.info("directory mounted; watching and reconciling", extra={
        "path": instance.directory, "tracked_files": len(pipeline.tracked),
        **(mounts.expected.fields() if mounts.expected else {})})
    parent.send(Report.READY, {"pid": os.getpid()})
    return observer


def follow_submounts(instance: InstanceConfig, pipeline: Pipeline, mounts: MountGuard,
                      observer: BaseObserver) -> None:
    """A mount inside the tree that went away: nothing below it is announced (see
    MountGuard.lost); one mounted (again): watched and reconciled like a new directory."""
    gone, came = mounts.check_submounts()
    for relative in gone:
        log.warning(UNMOUNTED, extra={"path": os.path.join(instance.directory, relative),
                                      "mount_point": os.path.join(instance.directory, relative)})
    for relative in came:
        log.info("directory mounted; watching and reconciling",
                 extra={"path": os.path.join(instance.directory, relative)})
        pipeline.request_scan(relative, watch=directory_watcher(observer))


def _discard(notifications: queue.SimpleQueue[RawEvent]) -> None:
    with contextlib.suppress(queue.Empty):
        while True:
            notifications.get_nowait()


def observe(instance: InstanceConfig, pipeline: Pipeline,
             refused: OSError | None = None) -> BaseObserver:
    """Start an observer feeding the pipeline, whose walks from now on add its watches."""
    with sigterm_for_main_thread_only():
        observer = start_observer(instance.directory, recursive=instance.recursive,
                                  events=pipeline.notifications, mode=instance.observer,
                                  polling_interval=instance.polling_interval_seconds,
                                  subdirectories_later=True,
                                  one_filesystem=instance.one_filesystem, refused=refused)
    pipeline.watch_directories(directory_watcher(observer))
    return observer


def observer_alive(observer: BaseObserver) -> bool:
    """The observer thread, every emitter thread and the inotify reader (each can die alone,
    e.g. of a RecursionError while adding watches, leaving the observer deaf but alive)."""
    reader = getattr(observer, "reader", None)  # DirectInotifyObserver's; polling has none
    return (observer.is_alive() and all(e.is_alive() for e in observer.emitters)
            and (reader is None or reader.is_alive()))
