"""`multiwatch check --connect`: what `run` needs beyond a valid roster, tried for real.

- every broker URL (each node of a cluster list): log in, open a channel, declare the
  exchange and the queue passively (nothing is created);
- the state directory (or the nearest existing parent `run` would create it in) accepts a
  new file;
- inotify: one instance per watching instance, one watch per directory of each tree, against
  fs.inotify.max_user_instances / max_user_watches minus what this user's processes already
  hold.

Every wait is bounded: the broker by connect_timeout_seconds per step, the directory count
by COUNT_BUDGET_SECONDS overall (and the report says when it stopped counting).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import amqp.exceptions
from kombu import Connection

from multiwatch.broker import (
    connect_once,
    drop_connection,
    exchange_for,
    named_queue,
    open_connection,
)
from multiwatch.broker_errors import describe, resolve_host, where
from multiwatch.config import BrokerConfig, Roster

COUNT_BUDGET_SECONDS = 5.0
INOTIFY = "/proc/sys/fs/inotify"


@dataclass
class Findings:
    """Problems (each one line: exit 2) and what was checked (the summary: exit 0)."""

    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)


def preflight(roster: Roster) -> Findings:
    found = Findings()
    _check_brokers(roster, found)
    _check_state_dir(roster.state_dir, found)
    _check_inotify(roster, found)
    return found


# ---------------------------------------------------------------- the broker


def _check_brokers(roster: Roster, found: Findings) -> None:
    broker = roster.broker
    if broker.embedded:
        found.checked.append("broker: the embedded spool (no network)")
        return
    for url in broker.urls:
        problem, missing = _try_broker(broker, roster.state_dir, url)
        if problem:
            found.problems.append(f"broker {where(url)}: {problem}")
            continue
        note = f"; not there yet, run declares them: {', '.join(missing)}" if missing else ""
        found.checked.append(f"broker {where(url)}: logged in, {_names(broker)} checked{note}")


def _names(broker: BrokerConfig) -> str:
    names = f"exchange {broker.exchange!r}"
    if broker.queue is not None:
        names += f" and queue {broker.queue!r}"
    return names


def _try_broker(broker: BrokerConfig, state_dir: str, url: str) -> tuple[str, list[str]]:
    """(the problem in words or "", what does not exist yet) for one URL."""
    connection = open_connection(broker, state_dir, url=url, connection_name="multiwatch_check")
    missing: list[str] = []
    try:
        resolve_host(url, broker.connect_timeout_seconds)
        connect_once(connection)
        for what, declare in _passive_declares(broker, connection):
            try:
                declare()
            except amqp.exceptions.NotFound:
                missing.append(what)  # run declares it; a refusal to would show above
    except Exception as exc:  # noqa: BLE001 - any failure is the finding, in words
        return describe(exc), missing
    finally:
        drop_connection(connection)
    return "", missing


def _passive_declares(broker: BrokerConfig,
                      connection: Connection) -> Iterator[tuple[str, Callable[[], object]]]:
    """(what, declare) for the exchange and the queue, each on a fresh channel (a failed
    passive declare closes its channel)."""
    exchange = exchange_for(broker)
    yield (f"exchange {broker.exchange!r}",
           lambda: exchange(connection.channel()).declare(passive=True))
    if broker.queue is not None:
        queue = named_queue(broker, broker.queue)
        yield (f"queue {broker.queue!r}",
               lambda: queue(connection.channel()).queue_declare(passive=True))


# ---------------------------------------------------------------- the state directory


def _check_state_dir(state_dir: str, found: Findings) -> None:
    probe_in = state_dir
    while not os.path.isdir(probe_in):  # run creates what is missing, here
        parent = os.path.dirname(probe_in)
        if parent == probe_in:
            break
        probe_in = parent
    try:
        fd, path = tempfile.mkstemp(prefix=".multiwatch-check-", dir=probe_in)
    except OSError as exc:
        found.problems.append(f"state directory {state_dir}: cannot create a file in "
                              f"{probe_in}: {exc.strerror or exc}")
        return
    os.close(fd)
    os.unlink(path)
    found.checked.append(f"state directory {state_dir}: writable")


# ---------------------------------------------------------------- inotify


def _check_inotify(roster: Roster, found: Findings) -> None:
    watching = [i for i in roster.instances if i.observer != "polling"]
    if not watching:
        return
    limits = {name: _read_int(os.path.join(INOTIFY, name))
              for name in ("max_user_instances", "max_user_watches")}
    if None in limits.values():
        found.checked.append("inotify: limits unknown (no /proc/sys/fs/inotify)")
        return
    max_instances, max_watches = limits["max_user_instances"], limits["max_user_watches"]
    assert max_instances is not None and max_watches is not None
    used_instances, used_watches = _inotify_in_use()
    if used_instances + len(watching) > max_instances:
        found.problems.append(
            f"inotify: {len(watching)} instances need {len(watching)} inotify instances, "
            f"{used_instances} of fs.inotify.max_user_instances={max_instances} are in use "
            f"by this user (raise it with sysctl, or set observer: polling)")
    deadline = time.monotonic() + COUNT_BUDGET_SECONDS
    needed, complete = 0, True
    for instance in watching:
        count, done = _count_directories(instance.directory, instance.recursive, deadline)
        needed += count
        complete = complete and done
    counted = f"{needed:,}" + ("" if complete else
                               f"+ (stopped counting after {COUNT_BUDGET_SECONDS:g}s)")
    if used_watches + needed > max_watches:
        found.problems.append(
            f"inotify: the trees hold {counted} directories (one watch each), {used_watches:,} "
            f"of fs.inotify.max_user_watches={max_watches:,} are in use by this user "
            f"(raise it with sysctl, or set observer: polling)")
    else:
        found.checked.append(
            f"inotify: {len(watching)} instances ({used_instances} in use, max "
            f"{max_instances}), {counted} directories to watch ({used_watches:,} watches in "
            f"use, max {max_watches:,})")


def _read_int(path: str) -> int | None:
    try:
        with open(path) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def _inotify_in_use() -> tuple[int, int]:
    """(inotify instances, watches) held by this user's processes, as far as /proc shows."""
    instances = watches = 0
    uid = os.getuid()
    with contextlib.suppress(OSError):
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
        for pid in pids:
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{pid}").st_uid != uid:
                    continue
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                            continue
                        instances += 1
                        with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                            watches += sum(1 for line in info if line.startswith("inotify wd:"))
    return instances, watches


def _count_directories(root: str, recursive: bool, deadline: float) -> tuple[int, bool]:
    """Directories under `root` (itself included) and whether the count finished before
    `deadline`.  A missing root counts as one (an optional instance waits for it)."""
    if not recursive:
        return 1, True
    count, pending = 0, [root]
    while pending:
        if time.monotonic() >= deadline:
            return count, False
        folder = pending.pop()
        count += 1
        with contextlib.suppress(OSError), os.scandir(folder) as entries:
            pending.extend(e.path for e in entries if e.is_dir(follow_symlinks=False))
    return count, True


def check_connect(roster: Roster) -> int:
    """Print one line per problem on stderr (exit 2), else a short summary (exit 0)."""
    import sys

    found = preflight(roster)
    for problem in found.problems:
        print(f"multiwatch: problem: {problem}", file=sys.stderr)
    if found.problems:
        return 2
    print("# check --connect: everything run needs answered", *found.checked, sep="\n# ")
    return 0


def unwritable(state_dir: str) -> str:
    """Why `run` could not write under state_dir ("" if it can), without writing anything:
    access(2) reports a read-only mount (EROFS) even to root.  The nearest existing parent
    is asked when state_dir does not exist yet (run creates it there)."""
    folder = state_dir
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    if os.access(folder, os.W_OK | os.X_OK):
        return ""
    which = "it" if folder == state_dir else f"{folder}, where run would create it,"
    with contextlib.suppress(OSError):
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return f"{which} is on a read-only file system"
    return f"{which} is not writable by this user"
