"""Which filesystem a watched root lives on, and whether that is still the one it was.

An unmounted share leaves its bare mount point behind: an empty directory (or one with
whatever was written under the mount).  Reconciling against it would announce every
tracked file as deleted, so the watcher compares the root's device and mount with the
ones it saw (or the state database remembers) and waits while they are gone.

The mount a path belongs to is the deepest mount point above it in /proc/self/mountinfo
(the last listed, for mounts stacked on one point); its device is the root's st_dev.
"""

from __future__ import annotations

import json
import logging
import os
import re
import select
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from multiwatch.watcher.confined import ConfinedRoot

log = logging.getLogger(__name__)

MOUNTINFO = "/proc/self/mountinfo"
# The reason the supervisor shows (state WAITING) while the mount is gone.
UNMOUNTED = "directory unmounted"
# The state database's meta entry holding the last mount seen (a Mount as JSON).
META_KEY = "mount"
# Without change notifications (below), mountinfo is read at most this often by the loop.
SUBMOUNT_CHECK_SECONDS = 1.0
_CHANGED = select.POLLPRI | select.POLLERR

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    """The filesystem a watched root was found on."""

    device: int  # the root's st_dev
    mount_point: str  # the deepest mount point at or above the root
    fs_type: str
    source: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> Mount | None:
        """The remembered mount, or None when nothing (or nothing readable) is stored."""
        if not text:
            return None
        try:
            raw = json.loads(text)
            return cls(device=int(raw["device"]), mount_point=str(raw["mount_point"]),
                       fs_type=str(raw["fs_type"]), source=str(raw["source"]))
        except (ValueError, KeyError, TypeError):
            return None

    def fields(self) -> dict[str, object]:
        """For log lines: which mount this is."""
        return {"mount_point": self.mount_point, "fs_type": self.fs_type,
                "source": self.source}


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo (the fields used here)."""

    mount_point: str
    fs_type: str
    source: str


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040...)."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(lines: Iterable[str]) -> list[MountEntry]:
    """The mounts in mountinfo order (proc(5): optional fields end at a lone "-")."""
    entries = []
    for line in lines:
        fields = line.split()
        try:
            separator = fields.index("-", 6)
            entries.append(MountEntry(mount_point=_unescape(fields[4]),
                                      fs_type=fields[separator + 1],
                                      source=_unescape(fields[separator + 2])))
        except (ValueError, IndexError):
            continue  # a line of another shape: not one we can use
    return entries


def read_mounts() -> list[MountEntry]:
    try:
        with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
            return parse_mountinfo(f)
    except OSError:
        return []  # no /proc (not Linux): only devices are compared


class MountTable:
    """The mount table as the loop's checks see it: read again only when it changed.

    poll() on an open /proc/self/mountinfo reports POLLPRI|POLLERR once after each change
    of the process's mount table (proc(5)); the poll itself clears it.  The descriptor is
    registered before the table is read, so a change during the read is reported at the
    next call.  It is opened at the first call, in the process that uses it (a descriptor
    inherited over fork would share that flag with the other processes).  Where mountinfo
    cannot be opened or polled, the table is read again when SUBMOUNT_CHECK_SECONDS have
    passed.  `generation` grows by one at each read: a check whose inputs did not change
    since it last ran can skip itself."""

    def __init__(self) -> None:
        self._poll: select.poll | None = None
        self._file: object = None  # kept open: the poll watches its descriptor
        self._opened = False
        self._read_at = -SUBMOUNT_CHECK_SECONDS
        self._mounts: list[MountEntry] = []
        self.generation = 0

    def current(self, *, force: bool = False) -> tuple[int, list[MountEntry]]:
        """(generation, the mounts), read again if the table changed (or `force`)."""
        now = time.monotonic()
        if not self._opened:
            self._opened, force = True, True
            self._watch()
        if self._poll is not None:
            try:
                changed = bool(self._poll.poll(0))
            except OSError:
                changed, self._poll = True, None
        else:
            changed = now >= self._read_at + SUBMOUNT_CHECK_SECONDS
        if changed or force:
            self._read_at = now
            self._mounts = read_mounts()
            self.generation += 1
        return self.generation, self._mounts

    def _watch(self) -> None:
        try:
            file = open(MOUNTINFO, "rb", buffering=0)  # noqa: SIM115 - kept open for poll
        except OSError:
            return
        poll = select.poll()
        poll.register(file.fileno(), _CHANGED)
        self._file, self._poll = file, poll


def _below(path: str, mount_point: str) -> bool:
    """True if `path` is `mount_point` or inside it."""
    return (mount_point == "/" or path == mount_point
            or path.startswith(mount_point.rstrip("/") + "/"))


def containing_mount(path: str, mounts: list[MountEntry]) -> MountEntry | None:
    """The deepest mount at or above `path` (a real path); the last listed on a tie."""
    best: MountEntry | None = None
    for entry in mounts:
        if _below(path, entry.mount_point) and (
                best is None or len(entry.mount_point) >= len(best.mount_point)):
            best = entry
    return best


def mount_of(root: str) -> Mount | None:
    """The filesystem `root` is on now; None if it is not a directory that can be stat'ed."""
    try:
        st = os.stat(root)
    except OSError:
        return None
    real = os.path.realpath(root)
    entry = containing_mount(real, read_mounts())
    if entry is None:
        return Mount(device=st.st_dev, mount_point="/", fs_type="", source="")
    return Mount(device=st.st_dev, mount_point=entry.mount_point, fs_type=entry.fs_type,
                 source=entry.source)


def is_mounted(mount_point: str) -> bool:
    return any(entry.mount_point == mount_point for entry in read_mounts())


def _device_below(root: ConfinedRoot, relative: str) -> int:
    """The device of the directory `relative` below the root, reached with no symlink on the
    way (confined.py), as every lookup in the tree; the root is released at once (a
    watched mount is never pinned)."""
    try:
        fd = root.open(relative, os.O_PATH | os.O_DIRECTORY, follow=False)
    finally:
        root.release()
    try:
        return os.fstat(fd).st_dev
    finally:
        os.close(fd)


def _is_empty(directory: str) -> bool:
    try:
        with os.scandir(directory) as entries:
            return next(entries, None) is None
    except OSError:
        return False


class MountGuard:
    """The mount one watcher expects its root on, and the checks against it.

    `expected` is the mount seen when watching began (or resumed); `lost` is the cheap
    check the loop and every deletion make (a stat or two); `why_waiting` the full one
    (mountinfo) made at start and while `unmounted`.

    With `follow_submounts` (one_filesystem: false), the mounts inside the tree are
    followed too: `submounts` maps each one's directory (relative to the root) to its
    device; below one that is gone nothing counts as deleted (`lost(relative)`), and
    `check_submounts` says which went away or came (back).  Only those in directories
    `wanted` (the instance's filters) count: an automounted `.zfs/snapshot/x` coming and
    going is none of the instance's business."""

    def __init__(self, root: str, *, required: bool, remembered: Mount | None,
                 follow_submounts: bool = False,
                 wanted: Callable[[str], bool] = lambda _directory: True) -> None:
        self.root = root
        self._confined = ConfinedRoot(root)  # (for the sub-mounts' directories)
        self.required = required
        self.expected = remembered
        self.unmounted = False
        self.follow_submounts = follow_submounts
        self._wanted = wanted
        self.submounts: dict[str, int] = {}  # relative directory -> device when last seen
        self.submounts_gone: set[str] = set()
        self._table = MountTable()
        # The table's generation each check last ran against (-1: run at the next call).
        self._submounts_checked = -1
        self._root_checked = -1

    @property
    def any_unmounted(self) -> bool:
        """The root's mount, or one inside the tree, is gone (the status flag)."""
        return self.unmounted or bool(self.submounts_gone)

    def lost(self, relative: str = "") -> bool:
        """True if the root is no longer on the expected filesystem, or `relative` lies
        in a sub-mount that is no longer the one seen (a stat or two: the pipeline asks
        before each deletion and each announcement)."""
        if self.unmounted:
            return True
        for directory, device in self.submounts.items():
            if relative == directory or relative.startswith(directory + "/"):
                try:
                    if _device_below(self._confined, directory) != device:
                        return True
                except OSError:
                    return True
        expected = self.expected
        if expected is None:
            return False
        try:
            device = os.stat(self.root).st_dev
        except OSError:
            # Gone with its mount (a root inside the share), or only deleted: the loop's
            # directory check handles the second.
            return not is_mounted(expected.mount_point)
        return device != expected.device

    def mount_gone(self) -> bool:
        """The expected mount is no longer listed in mountinfo: what `lost` cannot see
        when a bind mount of the root's own filesystem goes (the device stays).  The loop
        calls it every turn; it looks only when the mount table changed (MountTable)."""
        expected = self.expected
        if expected is None or expected.mount_point == "/":
            return False
        generation, mounts = self._table.current()
        if generation == self._root_checked:
            return False
        self._root_checked = generation
        return not any(entry.mount_point == expected.mount_point for entry in mounts)

    def why_waiting(self, *, tracked_files: int = 0) -> str | None:
        """Why the root cannot be watched now (None when it can), compared with `expected`.

        Not usable: with mount_required, a root that is no mount point; a root whose mount
        is above the expected one (the expected mount is gone: a bare mount point);
        `tracked_files` given (at start), an empty root on another device than the one
        they were tracked on."""
        current = mount_of(self.root)
        if current is None:
            return "the directory is missing"
        if self.required and current.mount_point != os.path.realpath(self.root):
            return "mount_required is set and the directory is not a mount point"
        expected = self.expected
        if expected is None:
            return None
        if current.mount_point != expected.mount_point and _below(expected.mount_point,
                                                                   current.mount_point):
            return (f"the directory was on {expected.fs_type or 'a'} mount "
                    f"{expected.mount_point} ({expected.source}), now on "
                    f"{current.mount_point} ({current.fs_type})")
        if tracked_files and current.device != expected.device and _is_empty(self.root):
            return (f"the directory is empty and on another device than the "
                    f"{tracked_files} files tracked there")
        return None

    def adopt(self) -> Mount | None:
        """Expect the root's filesystem (and sub-mounts) as they are now; returns the
        root's (None if unreadable)."""
        current = mount_of(self.root)
        if current is not None:
            self.expected = current
        self.unmounted = False
        self.submounts, self.submounts_gone = {}, set()
        self._root_checked = -1  # (checked against the new expectation at the next turn)
        self.check_submounts(force=True)
        return current

    def check_submounts(self, *, force: bool = False) -> tuple[list[str], list[str]]:
        """(directories whose sub-mount went away, directories mounted since the last
        check or back), relative to the root; both empty unless `follow_submounts`, and
        when the mount table has not changed since the last check (unless `force`): a
        sub-mount's device cannot change without a change of the table."""
        if not self.follow_submounts:
            return [], []
        generation, mounts = self._table.current(force=force)
        if generation == self._submounts_checked and not force:
            return [], []
        self._submounts_checked = generation
        real = os.path.realpath(self.root)
        prefix = real.rstrip("/") + "/"
        now: dict[str, int] = {}
        for entry in mounts:
            if entry.mount_point.startswith(prefix):
                relative = entry.mount_point[len(prefix):]
                if not self._wanted(relative):
                    continue
                try:
                    now[relative] = _device_below(self._confined, relative)
                except OSError:
                    continue  # (a mount hidden under another one)
        gone = sorted(d for d in self.submounts
                      if d not in self.submounts_gone and now.get(d) != self.submounts[d])
        came = sorted(d for d, device in now.items()
                      if d in self.submounts_gone or self.submounts.get(d) != device)
        self.submounts_gone.update(gone)
        for directory in came:
            self.submounts[directory] = now[directory]
            self.submounts_gone.discard(directory)
        return [d for d in gone if d not in came], came
