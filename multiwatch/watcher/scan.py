"""Walk a watched tree without following symlinks, yielding regular files as they are found.

A generator, so the pipeline can interleave the walk with live events and heartbeats
instead of blocking for minutes on a large tree.  `scan_batches` is what the pipeline
uses: it hands over plain tuples a directory (or BATCH_ENTRIES) at a time, because a
restart over a large unchanged tree is mostly this loop and its per-file overhead.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Iterator
from stat import S_ISDIR, S_ISLNK, S_ISREG

from multiwatch.watcher.confined import ConfinedRoot
from multiwatch.watcher.filters import PathFilter
from multiwatch.watcher.hashing import FileVersion, Version, stat_regular

log = logging.getLogger(__name__)

BATCH_ENTRIES = 1000



class ScanBatch(dict[str, Version]):
    """relative path → version, for up to BATCH_ENTRIES files of one directory.

    `directory` is that directory's relative path; `complete` is True on the batch that
    ends a listing of the whole directory (a directory that could not be listed to its
    end has none).  `directories` is how many directories were opened to produce it (1
    on the first batch of each): every directory listed yields at least one batch, empty
    if it has no wanted file, and so does each filtered-out one walked for its watch.
    `examined` is how many entries were looked at for it, wanted or not: a batch ends
    after BATCH_ENTRIES of them too, so a consumer can bound its work per directory and
    per entry, whatever the filters leave."""

    __slots__ = ("complete", "directories", "directory", "examined")

    def __init__(self, directory: str, directories: int = 0) -> None:
        super().__init__()
        self.directory = directory
        self.complete = False
        self.directories = directories
        self.examined = 0


def walk_files(
    root: ConfinedRoot, start: str, path_filter: PathFilter, *, recursive: bool,
    unlistable: set[str] | None = None,
) -> Iterator[tuple[str, FileVersion]]:
    """Yield (relative path, version) for each wanted regular file under root/start."""
    for batch in scan_batches(root, start, path_filter, recursive=recursive,
                              unlistable=unlistable):
        for relative, (size, mtime_ns, inode) in batch.items():
            yield relative, FileVersion(size=size, mtime_ns=mtime_ns, inode=inode)


def _skipped(root: ConfinedRoot, relative: str, path_filter: PathFilter, *,
             directory: bool = False) -> None:
    """The DEBUG line for what a filter passes over (a directory: everything below it)."""
    log.debug("directory skipped by a filter" if directory else "file skipped by a filter",
              extra={"path": os.path.join(root.path, relative),
                     "reason": path_filter.why_unwanted(relative)})


def scan_batches(
    root: ConfinedRoot, start: str, path_filter: PathFilter, *, recursive: bool,
    unlistable: set[str] | None = None,
    batch_entries: int | None = None, watch: Callable[[str], object] | None = None,
    one_filesystem: bool = False,
) -> Iterator[ScanBatch]:
    """Yield {relative path: (size, mtime_ns, inode)} for the wanted regular files under
    root/start, at most `batch_entries` (BATCH_ENTRIES) at a time, each file once, after one
    lstat; at least one batch (maybe empty) per directory opened, see ScanBatch.

    Each directory is opened below the root's descriptor with no symlink in any component
    (confined.py), so a directory swapped for a symlink, at any depth and at any moment,
    is never listed; with follow_symlinks, a symlinked file counts when its target is a
    regular file beneath the root.

    `unlistable` remembers directories already reported as unreadable, so a periodic
    rescan does not repeat the warning; a directory that lists again is forgotten.

    `watch(absolute path)` is called on every real directory below root/start before it
    is listed, filtered out or not (observe.start_observer's `subdirectories_later`):
    filtered-out directories are then walked too, for their watches only.

    `one_filesystem` (like `find -xdev`): a directory on another device than the root (a
    mount inside the tree) is neither listed nor watched."""
    reported = unlistable if unlistable is not None else set()
    if start and not path_filter.wants_directory(start):
        return  # every file below would be excluded by one of its directories
    sorter = _EntrySorter(root, path_filter, recursive=recursive, watch=watch,
                          root_device=_device(root.path) if one_filesystem else None)
    limit = batch_entries or BATCH_ENTRIES
    sorter.pending.append(start)
    while sorter.pending or sorter.hidden:
        if not sorter.pending:
            directory = sorter.hidden.pop()
            if watch is not None:  # (only then is anything hidden)
                _watch_below(root, directory, watch, sorter.hidden)
            yield ScanBatch(directory, directories=1)  # nothing to report, but work done
            continue
        yield from _list_directory(sorter, sorter.pending.pop(), limit, reported)


def _list_directory(sorter: _EntrySorter, relative_dir: str, limit: int,
                    reported: set[str]) -> Iterator[ScanBatch]:
    """List one directory: its wanted files in batches of at most `limit` entries examined,
    the last one `complete` if the listing reached its end; subdirectories go to `sorter`."""
    root, watch = sorter.root, sorter.watch
    absolute_dir = os.path.join(root.path, relative_dir) if relative_dir else root.path
    prefix = f"{relative_dir}/" if relative_dir else ""
    found = ScanBatch(relative_dir, directories=1)
    examined = 0  # entries looked at for `found`
    try:
        # Only a real directory is entered, reached through real directories: a symlink
        # that took a directory's place (or arrived inside a moved-in tree) must not
        # lead outside.
        directory_fd = root.open_directory(relative_dir)
    except (FileNotFoundError, NotADirectoryError):
        reported.discard(relative_dir)  # gone: not unreadable any more
        yield found  # (empty) gone, or a file took its place; its own events tell the rest
        return
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            _cannot_list(relative_dir, absolute_dir, exc, reported)
        yield found  # (empty) ELOOP: a symlink took the directory's place
        return
    sort = sorter.sort
    try:
        if watch is not None and relative_dir:
            watch(absolute_dir)  # before the listing: nothing created after it is missed
        # Listed through the directory's descriptor, each entry's lstat is an fstatat
        # of one name instead of a walk of the whole path: 10-15% of a restart's walk.
        with os.scandir(directory_fd) as entries:
            for entry in entries:
                examined += 1
                if examined >= limit:  # (wanted or not: a batch bounds the work)
                    found.examined, examined = examined, 0
                    yield found
                    found = ScanBatch(relative_dir)
                sort(entry, prefix, found)
    except (FileNotFoundError, NotADirectoryError):
        yield found  # the directory went away mid-scan; its deletion events tell the rest
        return
    except OSError as exc:  # permissions, an I/O error
        yield found
        _cannot_list(relative_dir, absolute_dir, exc, reported)
        return
    finally:
        os.close(directory_fd)
    reported.discard(relative_dir)
    found.examined, found.complete = examined, True
    yield found  # empty for a directory with no wanted file: it still cost a listing


class _EntrySorter:
    """Sorts the entries of the directories one walk lists: wanted regular files into the
    batch, directories to list into `pending`, filtered-out ones to watch into `hidden`."""

    def __init__(self, root: ConfinedRoot, path_filter: PathFilter, *, recursive: bool,
                 watch: Callable[[str], object] | None, root_device: int | None) -> None:
        self.root = root
        self.path_filter = path_filter
        self.recursive = recursive
        self.watch = watch
        self.root_device = root_device
        self.follow = root.follow_symlinks
        self.pending: list[str] = []  # directories to list
        self.hidden: list[str] = []  # filtered-out directories, walked only to `watch` them
        skip_name, self.wants = path_filter.scan_tests()
        # NameSkip's test, inlined in sort(): a call per entry would cost what it saves.
        self.skip_prefixes, self.skip_suffixes, self.skip_others = (
            (skip_name.prefixes, skip_name.suffixes, skip_name.others)
            if skip_name is not None else ((), (), None))
        # "Why wasn't my file announced?": files a filter passes over, at DEBUG (decided
        # once per walk; the reason is only worked out when the line is logged).
        self.trace = log.isEnabledFor(logging.DEBUG)

    def sort(self, entry: os.DirEntry[str], prefix: str, found: ScanBatch) -> None:
        name = entry.name
        skip_others = self.skip_others
        if ((self.skip_prefixes and name.startswith(self.skip_prefixes))
                or (self.skip_suffixes and name.endswith(self.skip_suffixes))
                or (skip_others is not None and skip_others(name))):
            # Excluded by name, whatever it is: no stat needed.
            if self.watch is not None and self.recursive and entry.is_dir(follow_symlinks=False):
                self.hidden.append(prefix + name)
            if self.trace:
                _skipped(self.root, prefix + name, self.path_filter,
                         directory=entry.is_dir(follow_symlinks=False))
            return
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            return  # vanished between readdir and stat
        mode = st.st_mode
        wants = self.wants
        if S_ISREG(mode):
            relative = prefix + name
            if wants is None or wants(relative, name):
                found[relative] = (st.st_size, st.st_mtime_ns, st.st_ino)
            elif self.trace:
                _skipped(self.root, relative, self.path_filter)
        elif S_ISDIR(mode) and self.recursive:
            relative = prefix + name
            if self.root_device is not None and st.st_dev != self.root_device:
                log.debug("directory on another filesystem skipped (one_filesystem)",
                          extra={"path": os.path.join(self.root.path, relative)})
            elif self.path_filter.wants_directory(relative):
                self.pending.append(relative)
            else:
                if self.watch is not None:
                    self.hidden.append(relative)
                if self.trace:
                    _skipped(self.root, relative, self.path_filter, directory=True)
        elif self.follow and S_ISLNK(mode):
            relative = prefix + name
            target = (stat_regular(self.root, relative)
                      if wants is None or wants(relative, name) else None)
            if target is not None:  # a symlinked file inside the tree
                found[relative] = (target.st_size, target.st_mtime_ns, target.st_ino)


def _device(path: str) -> int | None:
    try:
        return os.stat(path).st_dev
    except OSError:
        return None  # the walk finds nothing either


def _cannot_list(relative_dir: str, absolute_dir: str, exc: OSError, reported: set[str]) -> None:
    """Warn once per directory that stays unreadable (permissions, an I/O error, a path
    beyond PATH_MAX)."""
    if relative_dir not in reported:
        reported.add(relative_dir)
        log.warning("cannot list directory, skipping it: %s", exc.strerror or exc,
                    extra={"path": absolute_dir})


def _watch_below(root: ConfinedRoot, relative_dir: str, watch: Callable[[str], object],
                 hidden: list[str]) -> None:
    """Watch one filtered-out directory and queue its subdirectories for the same; one
    that vanished or cannot be listed (or is no real directory) is skipped, as watchdog's
    own walk skips it."""
    try:
        directory_fd = root.open_directory(relative_dir)
    except OSError:
        return
    try:
        watch(os.path.join(root.path, relative_dir))
        with os.scandir(directory_fd) as entries:
            hidden.extend(f"{relative_dir}/{entry.name}" for entry in entries
                          if entry.is_dir(follow_symlinks=False))
    except OSError:
        pass
    finally:
        os.close(directory_fd)
