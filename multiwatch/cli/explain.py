"""`multiwatch explain -c ROSTER PATH`: why a file was (or was not) announced.

Read only: the state database is opened read-only (and only if it exists), the file is
looked at through the same confined lookups the watcher uses (so a symlink or a FIFO is
judged as the watcher would, and never opened), and it is read only with --hash.

Output: one "key: value" line per fact, the last one `would announce: ...`.  Exit status 0
if an instance watches PATH, 1 if none does.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import stat
import sys
from fnmatch import fnmatchcase
from typing import TextIO

from multiwatch.cli.resync import open_state
from multiwatch.cli.state import state_db
from multiwatch.config import ConfigError, InstanceConfig, Roster
from multiwatch.watcher.confined import ConfinedRoot
from multiwatch.watcher.filters import PathFilter
from multiwatch.watcher.hashing import (
    ChangedWhileHashing,
    Hashed,
    NotRegularFile,
    hash_file,
)
from multiwatch.watcher.sql import subtree
from multiwatch.watcher.state import pending_events, tracked_file

NOT_WATCHED = 1


def explain(roster: Roster, path: str, *, hash_changed: bool = False,
            out: TextIO | None = None) -> int:
    out = out or sys.stdout
    absolute = os.path.abspath(path)
    found = _watching(roster, absolute) or _watching(roster, os.path.realpath(path))
    if found is None:
        lines = _Lines(out)
        lines("instance", f"none: no instance watches {absolute}")
        for instance in _nearest(roster, absolute):
            lines("nearest", f"{instance.id} ({instance.directory})")
        return NOT_WATCHED
    instance, relative = found
    lines = _Lines(out)
    lines("path", os.path.join(instance.directory, relative) if relative else instance.directory)
    lines("instance", f"{instance.id} (directory {instance.directory}), " + (
        f"relative path {relative}" if relative else "the watched directory itself"))
    if not relative or _is_directory(instance, relative):
        return _explain_directory(roster, instance, relative, lines)
    if not instance.recursive and "/" in relative:
        lines("filters", "not announced: in a subdirectory, and recursive is false")
        wanted = False
    else:
        wanted = _filters(instance, relative, lines)
        if wanted != PathFilter(instance.include, instance.exclude).wants_file(relative):
            wanted = not wanted  # (the watcher's own filter is the truth)
            lines("filters", f"but the watcher's filter {'wants' if wanted else 'skips'} it")
    current = _kind(instance, relative, lines)
    announced = _state(roster, instance, relative, lines)
    lines("would announce", _verdict(instance, relative, wanted, current, announced,
                                     hash_changed=hash_changed))
    return 0


class _Lines:
    def __init__(self, out: TextIO) -> None:
        self._out = out

    def __call__(self, key: str, value: str) -> None:
        # A name may hold control characters (or undecodable bytes): shown escaped.
        shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in value)
        self._out.write(f"{key}: {shown}\n")


def _watching(roster: Roster, absolute: str) -> tuple[InstanceConfig, str] | None:
    """The instance with the deepest directory holding `absolute` (or that is it), and the
    relative path ("" for the directory itself)."""
    best: tuple[InstanceConfig, str] | None = None
    for instance in roster.instances:
        relative = os.path.relpath(absolute, instance.directory)
        if relative == os.pardir or relative.startswith(os.pardir + os.sep):
            continue
        if best is None or len(instance.directory) > len(best[0].directory):
            best = (instance, "" if relative == os.curdir else relative)
    return best


def _is_directory(instance: InstanceConfig, relative: str) -> bool:
    """True if the watcher would see a directory there (a symlink to one is a symlink)."""
    root = ConfinedRoot(instance.directory, follow_symlinks=instance.follow_symlinks)
    try:
        return stat.S_ISDIR(root.stat(relative).st_mode)
    except OSError:
        return False


def _explain_directory(roster: Roster, instance: InstanceConfig, relative: str,
                       lines: _Lines) -> int:
    """A directory: nothing is announced for it; an exclude pattern matching one of its
    names prunes everything below it (as PathFilter.wants_directory), include patterns
    apply to the names of the files below it, one by one."""
    if relative and not instance.recursive:
        lines("filters", "not watched: a subdirectory, and recursive is false (nothing below "
              "it is announced)")
    elif not _directory_excluded(instance, relative, lines):
        lines("filters", "not excluded: each file below it is judged by its own name and path "
              "(include patterns apply to file names)")
    lines("file", "a directory: its files are announced, not the directory itself")
    _directory_state(roster, instance, relative, lines)
    lines("would announce", "nothing for the directory itself (explain a file below it to "
          "see what it would announce)")
    return 0


def _directory_excluded(instance: InstanceConfig, relative: str, lines: _Lines) -> bool:
    names = relative.split("/") if relative else []
    for pattern in (p for p in instance.exclude if "/" not in p):
        for position, name in enumerate(names):
            if fnmatchcase(name, pattern):
                part = "its name" if position == len(names) - 1 else "the directory"
                lines("filters", f"excluded by exclude pattern {pattern!r} (matches {part} "
                      f"{name!r}): nothing below it is announced")
                return True
    return False


def _directory_state(roster: Roster, instance: InstanceConfig, relative: str,
                     lines: _Lines) -> None:
    """How many tracked files, and events waiting in the outbox, are below the directory."""
    db = state_db(roster, instance)
    if not os.path.exists(db.path):
        lines("state", "no state database (the instance has not run yet)")
        return
    if which := db.describe():
        lines("state database", which)
    # The bodies are compact JSON: every event for a file below has this prefix.
    prefix = b'"relative_path":' + (json.dumps(relative + "/", ensure_ascii=True)[:-1].encode()
                                    if relative else b"")
    below = ("WHERE path >= ? AND path < ?", subtree(relative)) if relative else ("", ())
    conn = open_state(roster, instance, readonly=True, db=db)
    try:
        tracked = conn.execute(f"SELECT count(*) FROM files {below[0]}", below[1]).fetchone()[0]
        waiting = conn.execute("SELECT count(*) FROM outbox WHERE instr(body, ?) > 0",
                               (prefix,)).fetchone()[0]
    except sqlite3.Error as exc:
        raise ConfigError(f"instance {instance.id}: state database: {exc}") from None
    finally:
        conn.close()
    lines("state", f"{tracked} tracked file{'' if tracked == 1 else 's'} below it")
    lines("waiting in the outbox", f"{waiting} event{'' if waiting == 1 else 's'} for files "
          "below it" if waiting else "nothing")


def _nearest(roster: Roster, absolute: str) -> list[InstanceConfig]:
    """Instances by how much of the path their directory shares (the best three)."""
    def shared(instance: InstanceConfig) -> int:
        return len(os.path.commonpath([absolute, instance.directory]))
    return sorted(roster.instances, key=shared, reverse=True)[:3]


def _filters(instance: InstanceConfig, relative: str, lines: _Lines) -> bool:
    """Say which pattern decides; True if the filters let the path through."""
    names = relative.split("/")
    for pattern in instance.exclude:
        if "/" in pattern:
            if fnmatchcase(relative, pattern):
                lines("filters", f"excluded by exclude pattern {pattern!r} (matches the "
                      "relative path)")
                return False
            continue
        for position, name in enumerate(names):
            if fnmatchcase(name, pattern):
                part = "name" if position == len(names) - 1 else "directory"
                lines("filters", f"excluded by exclude pattern {pattern!r} (matches the "
                      f"{part} {name!r})")
                return False
    for pattern in instance.include:
        target = relative if "/" in pattern else names[-1]
        if fnmatchcase(target, pattern):
            lines("filters", f"included by include pattern {pattern!r}")
            return True
    shown = ", ".join(repr(p) for p in instance.include)
    lines("filters", f"not announced: matches no include pattern ({shown})")
    return False


def _kind(instance: InstanceConfig, relative: str, lines: _Lines) -> os.stat_result | None:
    """Describe what is at the path; its stat if the watcher would hash it, else None."""
    root = ConfinedRoot(instance.directory, follow_symlinks=instance.follow_symlinks)
    try:
        st = root.stat(relative)
    except (FileNotFoundError, NotADirectoryError):
        lines("file", "does not exist")
        return None
    except OSError as exc:
        lines("file", _lookup_error(exc, instance))
        return None
    if stat.S_ISREG(st.st_mode):
        lines("file", f"regular file, {st.st_size} bytes, mtime_ns {st.st_mtime_ns}, "
              f"inode {st.st_ino}")
        return st
    if stat.S_ISLNK(st.st_mode):
        lines("file", "a symbolic link: not announced (follow_symlinks is off; with it on, "
              "links whose target stays inside the directory are)")
    elif stat.S_ISDIR(st.st_mode):
        lines("file", "a directory: its files are announced, not the directory itself")
    else:
        what = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(
            st.st_mode) else "a device")
        lines("file", f"{what}: never announced (never opened)")
    return None


def _lookup_error(exc: OSError, instance: InstanceConfig) -> str:
    if exc.errno == errno.ENAMETOOLONG:
        return "the name is too long for the filesystem: never announced"
    if exc.errno in (errno.ELOOP, errno.EXDEV):
        return ("a symbolic link on the way, or one leading outside the directory: never "
                "announced" + ("" if instance.follow_symlinks else " (follow_symlinks is off)"))
    return f"cannot look at it: {exc.strerror or exc}"


def _state(roster: Roster, instance: InstanceConfig, relative: str,
           lines: _Lines) -> Hashed | None:
    """Print what the state database knows; the announced version."""
    db = state_db(roster, instance)
    if not os.path.exists(db.path):
        lines("state", "no state database (the instance has not run yet)")
        return None
    if which := db.describe():
        lines("state database", which)
    conn = open_state(roster, instance, readonly=True, db=db)
    try:
        announced = tracked_file(conn, relative)
        fragment = b'"relative_path":' + json.dumps(relative, ensure_ascii=True).encode()
        waiting = _pending(conn, fragment)
    except sqlite3.Error as exc:
        raise ConfigError(f"instance {instance.id}: state database: {exc}") from None
    finally:
        conn.close()
    if announced is None:
        lines("state", "not tracked (never announced, or announced as deleted)")
    else:
        version = announced.version
        lines("state", f"tracked: {version.size} bytes, mtime_ns {version.mtime_ns}, inode "
              f"{version.inode}, sha256 {announced.sha256}, xxh128 {announced.xxh128}")
    if waiting:
        lines("waiting in the outbox", ", ".join(
            event_type + (" (resync)" if resync else "") for event_type, resync in waiting))
    else:
        lines("waiting in the outbox", "nothing")
    return announced


def _pending(conn: sqlite3.Connection, fragment: bytes) -> list[tuple[str, bool]]:
    try:
        return pending_events(conn, fragment)
    except sqlite3.OperationalError:  # a database of an older schema (no resync column)
        return [(etype, False) for (etype,) in conn.execute(
            "SELECT event_type FROM outbox WHERE instr(body, ?) > 0 ORDER BY seq",
            (fragment,))]


def _verdict(instance: InstanceConfig, relative: str, wanted: bool,
             current: os.stat_result | None, announced: Hashed | None, *,
             hash_changed: bool) -> str:
    if current is None:
        return "nothing" if announced is None else "file_deleted"
    if not wanted:
        # A tracked file the filters now skip is not "gone": it stays tracked, unannounced.
        return "nothing"
    if announced is None:
        return "file_discovered (once it has been quiet for settle_seconds)"
    version = announced.version
    if (current.st_size, current.st_mtime_ns, current.st_ino) == (
            version.size, version.mtime_ns, version.inode):
        return "nothing (unchanged since announced)"
    if current.st_size != version.size:
        return "file_modified (its size changed)"
    if not hash_changed:
        return "file_modified if its content changed (--hash to check)"
    root = ConfinedRoot(instance.directory, follow_symlinks=instance.follow_symlinks)
    try:
        now = hash_file(root, relative)
    except OSError as exc:
        return f"unknown: cannot read it ({exc.strerror or exc})"
    except (NotRegularFile, ChangedWhileHashing):
        return "unknown: it changed while being read (the watcher will settle it again)"
    if now.sha256 == announced.sha256:
        return "nothing (same content; only the version changed)"
    return "file_modified (its content changed)"
