"""Reconciliation by scan: walk (part of) the tree and compare it with what was announced.

Runs on the pipeline's thread, a step's budget at a time (`walk_some`), so the loop
heartbeats between steps whatever the shape of the tree.  New or changed files are handed
to the pipeline to settle like notified ones; announced files the walk did not meet are
deleted if they are really gone (through the deletion guard, which holds too many).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator

from multiwatch.config import InstanceConfig
from multiwatch.watcher.confined import ConfinedRoot
from multiwatch.watcher.deletion_guard import DeletionGuard
from multiwatch.watcher.filters import PathFilter
from multiwatch.watcher.hashing import FileVersion, Version
from multiwatch.watcher.path_index import directory_of
from multiwatch.watcher.scan import ScanBatch, scan_batches
from multiwatch.watcher.settle import SettleTable
from multiwatch.watcher.startup_progress import StartupProgress
from multiwatch.watcher.tracked_files import TrackedFiles
from multiwatch.watcher.unreadable import Unreadable

# What a directory costs the walk in files' worth: an open, a listing, an inotify watch.
DIRECTORY_COST = 10
# A directory listing is held until it is whole, to compare its fingerprint, up to this
# many files; a bigger directory is compared with its tracked files one by one.
FINGERPRINT_MAX_FILES = 20_000


@dataclasses.dataclass(eq=False)
class _Scan:
    """One walk in progress and the paths it has met so far."""

    relative_dir: str
    batches: Iterator[ScanBatch]
    started: bool = False
    changes_at_start: int = 0  # tracked.changes when the walk began
    # The batches of the directory being listed, compared once its listing is whole.
    held: list[ScanBatch] = dataclasses.field(default_factory=list)
    oversized: str | None = None  # a directory too big to hold: compared batch by batch
    # What was met: paths compared one by one (and how many of them were tracked), and
    # directories whose fingerprint vouched for all their tracked files.
    seen: set[str] = dataclasses.field(default_factory=set)
    tracked_seen: int = 0
    vouched: int = 0
    vouched_directories: set[str] = dataclasses.field(default_factory=set)


@dataclasses.dataclass
class ReconcileActions:
    """What a walk asks of the pipeline."""

    settle_later: Callable[[str, float, FileVersion], None]  # a new or changed file
    gone: Callable[[str], None]  # announce a deletion
    is_gone: Callable[[str], bool]  # not on disk (and not merely its mount lost)
    save_fingerprints: Callable[[], None]
    progress: Callable[[], None]  # heartbeat during long work


class Reconciler:
    """The walks requested (a stack: the newest goes first) and their comparison."""

    def __init__(self, instance: InstanceConfig, confined: ConfinedRoot,
                 path_filter: PathFilter, tracked: TrackedFiles, settle: SettleTable,
                 unreadable: Unreadable, deletions: DeletionGuard,
                 startup: StartupProgress, actions: ReconcileActions) -> None:
        self.instance = instance
        self._confined = confined
        self._filter = path_filter
        self.tracked = tracked
        self._settle = settle
        self._unreadable = unreadable
        self._deletions = deletions
        self._startup = startup
        self._do = actions
        self.scans: list[_Scan] = []
        # The directories of walks not started yet: a set, as thousands of directories
        # created at once each ask for one.
        self._queued: set[str] = set()
        # The running observer's directory watcher (observe.directory_watcher), set when
        # it starts: every walk adds the watch of each directory before listing it. The
        # observer's own watch of a new directory can fail for good: a directory created
        # in one that is renamed before the mkdir's event is read is looked for under the
        # old name, and nothing else would ever watch it.
        self.watch: Callable[[str], object] | None = None

    def request(self, relative_dir: str = "", *,
                watch: Callable[[str], object] | None = None) -> None:
        """Queue a walk of relative_dir (see Pipeline.request_scan); `watch`: a new
        observer's watcher, else the running one's (`self.watch`)."""
        if watch is None and relative_dir in self._queued:
            return  # the same walk is queued and has not started: it will see everything
        batches = scan_batches(self._confined, relative_dir, self._filter,
                               recursive=self.instance.recursive,
                               unlistable=self._unreadable.directories,
                               watch=watch if watch is not None else self.watch,
                               one_filesystem=self.instance.one_filesystem)
        self.scans.append(_Scan(relative_dir, batches))
        self._queued.add(relative_dir)

    def request_new_directory(self, relative: str | None) -> None:
        """A directory created or moved in: its files may have sent no events."""
        if not (relative and self.instance.recursive and self._filter.wants_directory(relative)):
            return
        # A tree copied or moved in sends an event per directory inside it: a walk of an
        # enclosing directory that has not started yet will see this one too.
        parent = relative
        while parent:
            parent = parent.rpartition("/")[0]
            if parent in self._queued:
                return
        self.request(relative)

    def walk_some(self, max_entries: int, max_seconds: float) -> None:
        """Walk on for one step's budget: entries met, wanted or not, plus DIRECTORY_COST
        per directory opened (a tree of empty directories costs as much as one of files),
        and at most max_seconds, so the loop heartbeats between steps whatever the shape
        of the tree or the speed of its disk."""
        if not self.scans:
            return
        now = time.monotonic()
        deadline = now + max_seconds
        scan = self.scans[-1]
        if not scan.started:
            scan.started, scan.changes_at_start = True, self.tracked.changes
            self._queued.discard(scan.relative_dir)
        cost = 0
        while cost < max_entries and (cost == 0 or time.monotonic() < deadline):
            batch = next(scan.batches, None)
            if batch is None:
                self._finish(scan, now)
                return
            cost += max(len(batch), batch.examined) + DIRECTORY_COST * batch.directories
            self._startup.files_scanned += len(batch)
            if scan.held and scan.held[0].directory != batch.directory:
                self._compare_held(scan, now, whole=False)  # that listing broke off
            held = scan.held  # (a new list once compared)
            if not batch and not held:
                continue  # a directory without wanted files: nothing to compare
            if batch.directory == scan.oversized:
                self._compare(scan, batch, now)
                continue
            held.append(batch)
            if batch.complete:
                self._compare_held(scan, now, whole=True)
            elif sum(map(len, held)) > FINGERPRINT_MAX_FILES:
                scan.oversized = batch.directory
                self._compare_held(scan, now, whole=False)

    def _finish(self, scan: _Scan, now: float) -> None:
        self._compare_held(scan, now, whole=False)
        self.scans.pop()  # (the one walk_some walked: nothing was pushed since)
        self._reconcile_unseen(scan)
        self._do.save_fingerprints()
        self._unreadable.walked(scan.relative_dir, time.monotonic())
        if not self.scans:
            self._startup.scan_finished()

    def _compare_held(self, scan: _Scan, now: float, *, whole: bool) -> None:
        """Compare the held batches of one directory with what was announced; `whole`:
        they list all of it, so its fingerprint can vouch for them instead."""
        batches, scan.held = scan.held, []
        if not batches:
            return
        directory = batches[0].directory
        batches = [batch for batch in batches if batch] or batches  # the last is often empty
        listing: dict[str, Version] = batches[0]
        if whole and len(batches) > 1:
            listing = {}
            for batch in batches:
                listing.update(batch)
        if whole and self.tracked.unchanged_directory(directory, listing):
            scan.vouched += len(listing)
            scan.vouched_directories.add(directory)
            return
        unchanged = True
        for batch in batches:
            unchanged = not self._compare(scan, batch, now) and unchanged
        if whole and unchanged:
            self.tracked.vouch(directory, listing)

    def _compare(self, scan: _Scan, batch: ScanBatch, now: float) -> bool:
        """Settle a batch's new or changed files (unchanged ones are compared as plain
        tuples); True if there were any."""
        scan.seen.update(batch)
        changed = self.tracked.changed(batch, batch.directory)
        scan.tracked_seen += self.tracked.tracked_among(batch) if changed else len(batch)
        for relative, (size, mtime_ns, inode) in changed:
            self._do.settle_later(relative, now,
                                  FileVersion(size=size, mtime_ns=mtime_ns, inode=inode))
        return bool(changed)

    def _reconcile_unseen(self, scan: _Scan) -> None:
        """Tracked files the scan did not meet are deleted, if they are really gone
        (a file renamed behind the walk's back is still on disk and stays tracked)."""
        tracked, vouched = self.tracked, scan.vouched_directories
        if not scan.relative_dir and tracked.changes == scan.changes_at_start and (
                scan.vouched + scan.tracked_seen == len(tracked)):
            self._announce_gone(scan, [])  # every tracked file was met (held ones too)
            return  # and none was tracked meanwhile
        unseen = [p for p in tracked.paths_under(scan.relative_dir)
                  if p not in scan.seen and directory_of(p) not in vouched]
        gone: list[str] = []
        for relative in sorted(unseen):
            self._do.progress()  # (an lstat each: a mass deletion, a slow mount)
            if relative not in self._settle and self._do.is_gone(relative):  # (settle decides)
                gone.append(relative)
        self._announce_gone(scan, gone)

    def _announce_gone(self, scan: _Scan, gone: list[str]) -> None:
        """Announce what a scan found gone, unless too many: those are held (deletion_guard)."""
        for relative in self._deletions.scan_found(scan.relative_dir, gone, len(self.tracked)):
            self._do.progress()
            self._do.gone(relative)
