"""watchdog internals observe.py relies on: a watchdog upgrade that changes them fails here."""

from __future__ import annotations

import dataclasses
import queue
from pathlib import Path

import watchdog.version
from watchdog.observers.inotify import InotifyEmitter, InotifyWatchGroup
from watchdog.observers.inotify_c import InotifyFD

from multiwatch.watcher import inotify_observer, observe
from multiwatch.watcher.observe import start_observer
from multiwatch.watcher.raw_event import RawEvent
from tests.watcher.test_observe_trees import kernel_watches


def test_watchdog_internals_the_observer_relies_on_keep_their_shape() -> None:
    """Fails loudly when a watchdog upgrade changes the private pieces observe.py uses."""
    assert watchdog.version.VERSION_STRING.startswith("7.1."), "re-check observe.py's pin"
    fields = {f.name for f in dataclasses.fields(InotifyWatchGroup)}
    assert {"_inotify_fd", "path", "event_mask", "is_recursive", "follow_symlink",
            "_lock", "_id", "_root", "_nodes_by_wd"} <= fields
    for name in ("_add_callback", "_add_all_callbacks", "__post_init__", "is_active",
                 "on_queue_overflow", "on_events_lost", "remove_watched_directory"):
        assert hasattr(InotifyWatchGroup, name), name
    for name in ("build_and_queue_event", "queue_events", "on_thread_start",
                 "get_event_mask_from_filter", "queue_event"):
        assert hasattr(InotifyEmitter, name), name
    for name in ("read_events", "handle_event", "add_callback", "remove_callbacks",
                 "should_keep_running"):
        assert hasattr(InotifyFD, name), name
    emitter = InotifyEmitter.__init__.__code__.co_varnames
    assert "inotify_fd" in emitter
    # inotify_observer.DeferringWatchGroup is a dataclass subclass: its extra fields must come last.
    assert [f.name for f in dataclasses.fields(inotify_observer.DeferringWatchGroup)][-2:] == [
        "subdirectories_later", "unwatched"]


def test_watching_a_watched_directory_again_asks_the_kernel_nothing(tmp_path: Path) -> None:
    """watchdog's _add_callback returns early for a directory watched already (what makes
    the startup walk linear): no second kernel watch, no second callback."""
    (tmp_path / "a").mkdir()
    events: queue.SimpleQueue[RawEvent] = queue.SimpleQueue()
    observer = start_observer(str(tmp_path), recursive=True, events=events, mode="inotify",
                              subdirectories_later=True)
    try:
        calls: list[bytes] = []
        original = observer.reader.add_callback  # type: ignore[attr-defined]

        def counted(path: bytes, *args: object) -> object:
            calls.append(path)
            return original(path, *args)

        observer.reader.add_callback = counted  # type: ignore[attr-defined]
        for _ in range(3):
            observe.directory_watcher(observer)(str(tmp_path / "a"))  # type: ignore[misc]
        assert calls == [str(tmp_path / "a").encode()]
        assert len(kernel_watches(observer)) == 2
    finally:
        observer.stop()
        observer.join(timeout=5)
