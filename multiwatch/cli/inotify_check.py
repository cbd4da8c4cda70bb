"""`multiwatch check`: does the roster fit the kernel's inotify limits?  (Runs in the
`check` command's process, after the roster is valid; warnings only: a watcher the kernel
refuses polls instead, see watcher/observe.py.)

Each instance that may use inotify (observer auto or inotify) needs one inotify instance
and one watch per directory of its tree.  They are compared with the binding limits
(multiwatch.inotify_limits) minus what this user's processes already hold; the watchers
of a multiwatch already running this roster ("multiwatch: watcher ID") are left out, since
this roster's own count replaces them.  The directories are counted by one scandir walk
per tree, no stat of files, all trees within COUNT_BUDGET_SECONDS (the warning then says
"at least").
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from multiwatch import inotify_limits
from multiwatch.inotify_limits import INSTANCES, WATCHES, at_least, read_limit

if TYPE_CHECKING:
    from multiwatch.config import Roster

COUNT_BUDGET_SECONDS = 5.0
_PERSIST = "to keep it: README, Deploying it"


@dataclass
class InotifyFindings:
    """Warnings (one line each) and, when everything fits, a one-line summary."""

    warnings: list[str] = field(default_factory=list)
    summary: str = ""


def check_inotify(roster: Roster, *, proc: str = inotify_limits.PROC,
                  proc_sys: str = inotify_limits.PROC_SYS) -> InotifyFindings:
    found = InotifyFindings()
    watching = [i for i in roster.instances if i.observer != "polling"]
    if not watching:
        return found
    max_instances, max_watches = read_limit(INSTANCES, proc_sys), read_limit(WATCHES, proc_sys)
    if max_instances is None or max_watches is None:
        found.summary = "inotify: limits unknown (no /proc/sys/fs/inotify)"
        return found
    deadline = time.monotonic() + COUNT_BUDGET_SECONDS
    ours = {f"multiwatch: watcher {i.id}" for i in roster.instances}
    held = inotify_limits.held_by(os.geteuid(), deadline=deadline, proc=proc,
                                  namespace=inotify_limits.counted_in(max_instances, proc))
    others = [h for h in held.holders if h.title not in ours]
    held_instances = sum(h.instances for h in others)
    held_watches = sum(h.watches for h in others)
    directories, complete = 0, held.complete
    for instance in watching:
        count, done = inotify_limits.count_directories(
            instance.directory, recursive=instance.recursive, deadline=deadline)
        directories += count
        complete = complete and done
    counted = f"{at_least(directories, complete)} directories" + (
        "" if complete else f" (counting stopped after {COUNT_BUDGET_SECONDS:g}s)")
    needed = held_instances + len(watching)
    if needed > max_instances.value:
        found.warnings.append(
            f"inotify: {len(watching)} instances use inotify, one inotify instance each, and "
            f"this user's other processes hold {at_least(held_instances, held.complete)}: "
            f"{max_instances.sysctl}={max_instances.value:,} is too low (needs >= "
            f"{needed:,}; the instances beyond it will poll); as root on the host: "
            f"{max_instances.raise_to(needed)} ({_PERSIST}), or set observer: polling")
    if held_watches + directories > max_watches.value:
        need = held_watches + directories
        found.warnings.append(
            f"inotify: the trees of the {len(watching)} instances using inotify hold "
            f"{counted}, one watch each, and this user's other processes hold "
            f"{at_least(held_watches, held.complete)}: {max_watches.sysctl}="
            f"{max_watches.value:,} is too low (needs >= {need:,}; an instance whose "
            f"watches do not fit will poll); as root on the host: "
            f"{max_watches.raise_to(need)} ({_PERSIST}), or set observer: polling")
    if not found.warnings:
        found.summary = (
            f"inotify: {len(watching)} instances ({held_instances} held by others, "
            f"{max_instances.sysctl}={max_instances.value:,}), {counted} to "
            f"watch ({held_watches:,} held by others, {max_watches.sysctl}="
            f"{max_watches.value:,})")
    return found
