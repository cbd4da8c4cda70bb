"""`multiwatch check --connect`: what `run` needs beyond a valid roster, tried for real.

- every broker URL (each node of a cluster list): log in, open a channel, declare the
  exchange and the queue passively; once both exist, declare them again as run does (a no-op
  that the broker checks for configure permission and matching arguments); nothing is
  created;
- the state directory (or the nearest existing parent `run` would create it in) accepts a
  new file.

(The inotify limits are compared with the roster by plain `check`, cli/inotify_check.py,
which warns; with --connect a shortfall is one more problem line.)
Every wait is bounded, the broker's by connect_timeout_seconds per step.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
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


@dataclass
class Findings:
    """Problems (each one line: exit 2) and what was checked (the summary: exit 0)."""

    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)


def preflight(roster: Roster) -> Findings:
    found = Findings()
    _check_brokers(roster, found)
    _check_state_dir(roster.state_dir, found)
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
                missing.append(what)  # run declares it (if the user may: not known here)
        if not missing:  # what run declares, as run declares it: a no-op on the broker
            for _, declare in _declares_as_run(broker, connection):
                declare()  # refused without configure permission, or declared otherwise
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


def _declares_as_run(broker: BrokerConfig,
                     connection: Connection) -> Iterator[tuple[str, Callable[[], object]]]:
    """(what, declare) for the exchange and the queue, each declared as run declares it
    (not passively; no binding), on a fresh channel: once both exist this creates nothing,
    and the broker checks the user's configure permission and the arguments (type,
    durability, x-queue-type) as it will for run."""
    exchange = exchange_for(broker)
    yield (f"exchange {broker.exchange!r}", lambda: exchange(connection.channel()).declare())
    if broker.queue is not None:
        queue = named_queue(broker, broker.queue)
        yield (f"queue {broker.queue!r}",
               lambda: queue(connection.channel()).queue_declare())


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


def check_connect(roster: Roster, also_checked: Sequence[str] = (),
                  also_problems: Sequence[str] = ()) -> int:
    """Print one line per problem on stderr (exit 2), else a short summary (exit 0) with
    `also_checked` (what plain check found fine) at its end; `also_problems`: what plain
    check only warns about (the inotify limits) counts here."""
    import sys

    found = preflight(roster)
    found.problems.extend(also_problems)
    found.checked.extend(also_checked)
    for problem in found.problems:
        print(f"multiwatch: problem: {problem}", file=sys.stderr)
    if found.problems:
        return 2
    print("# check --connect: everything run needs answered", *found.checked, sep="\n# ")
    return 0


_STATE_FOLDERS = ("supervisors", "hash-slots", "spool", "spool/messages", "spool/control")
_INSTANCE_FILES = ("state.db", "state.db-wal", "state.db-shm", "run.lock", "watcher.lock")


def unwritable(state_dir: str, instance_ids: Sequence[str] = ()) -> str:
    """Why `run` could not write under state_dir ("" if it can), without writing anything:
    access(2) reports a read-only mount (EROFS) even to root.  The nearest existing parent
    is asked when state_dir does not exist yet (run creates it there); then what exists of
    the folders and files run writes in (instances/<id>/ of `instance_ids`, their
    databases and locks, the lock folders and the spool)."""
    folder = state_dir
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    if folder != state_dir:
        return _why_unwritable(folder, f"{folder}, where run would create it,")
    if why := _why_unwritable(state_dir, "it"):
        return why
    inside = ["instances", *_STATE_FOLDERS]
    for ident in instance_ids:
        inside.append(os.path.join("instances", ident))
        inside.extend(os.path.join("instances", ident, name) for name in _INSTANCE_FILES)
    for name in inside:
        path = os.path.join(state_dir, name)
        if os.path.lexists(path) and (why := _why_unwritable(path, path)):
            return why
    return ""


def _why_unwritable(path: str, which: str) -> str:
    """"" if this user may write path (and enter it, a folder), else why, naming it `which`."""
    if os.access(path, os.W_OK | (os.X_OK if os.path.isdir(path) else 0)):
        return ""
    with contextlib.suppress(OSError):
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return f"{which} is on a read-only file system"
    return f"{which} is not writable by this user"
