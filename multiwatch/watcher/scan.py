"""Walk a watched tree without following symlinks, yielding regular files as they are found.

A generator, so the pipeline can interleave the walk with live events and heartbeats
instead of blocking for minutes on a large tree.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator

from multiwatch.watcher.filters import PathFilter
from multiwatch.watcher.hashing import FileVersion, resolve_regular

log = logging.getLogger(__name__)


def walk_files(
    root: str, start: str, path_filter: PathFilter, *, recursive: bool,
    unlistable: set[str] | None = None, follow_inside: str | None = None,
) -> Iterator[tuple[str, FileVersion]]:
    """Yield (relative path, version) for each wanted regular file under root/start.

    `unlistable` remembers directories already reported as unreadable, so a periodic
    rescan does not repeat the warning; a directory that lists again is forgotten."""
    reported = unlistable if unlistable is not None else set()
    pending = [start]
    while pending:
        relative_dir = pending.pop()
        absolute_dir = os.path.join(root, relative_dir) if relative_dir else root
        try:
            # Below the root, only a real directory is entered: a symlink that took a
            # directory's place (or arrived inside a moved-in tree) must not lead outside.
            if relative_dir and not stat.S_ISDIR(os.lstat(absolute_dir).st_mode):
                continue
            with os.scandir(absolute_dir) as entries:
                for entry in entries:
                    relative = f"{relative_dir}/{entry.name}" if relative_dir else entry.name
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # vanished between readdir and stat
                    if stat.S_ISDIR(st.st_mode):
                        if recursive and path_filter.wants_directory(relative):
                            pending.append(relative)
                    elif stat.S_ISREG(st.st_mode) and path_filter.wants_file(relative):
                        yield relative, FileVersion.of(st)
                    elif (follow_inside is not None and stat.S_ISLNK(st.st_mode)
                          and path_filter.wants_file(relative)):
                        resolved = resolve_regular(entry.path, follow_inside)
                        if resolved is not None:  # a symlinked file inside the tree
                            yield relative, FileVersion.of(resolved[1])
        except (FileNotFoundError, NotADirectoryError):
            continue  # the directory went away mid-scan; its deletion events tell the rest
        except OSError as exc:  # permissions, a path beyond PATH_MAX, an I/O error
            if relative_dir not in reported:
                reported.add(relative_dir)
                log.warning("cannot list directory, skipping it: %s", exc.strerror or exc,
                            extra={"path": absolute_dir})
            continue
        reported.discard(relative_dir)
