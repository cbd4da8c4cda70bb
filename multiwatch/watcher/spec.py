"""What the supervisor hands a watcher child, importable without the watcher itself.

The supervisor imports this module, not `multiwatch.watcher.main`: main pulls in watchdog,
kombu, sqlite and the pipeline, which only the child needs (the template process imports
them once, watcher/template.py).  `run_child` is the target each child runs once forked
from the template; it runs in the child.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from multiprocessing.connection import Connection

from multiwatch.config import BrokerConfig, InstanceConfig

EXIT_DIRECTORY_GONE = 3
# A replica (ha) that was active found another holding the lease: an expected outcome, not
# a crash.  The supervisor starts it again at once (it stands by), uncounted, unpenalized.
EXIT_LEASE_LOST = 5
# Set in the template process (watcher/template.py); a child forked from it inherits it.
TEMPLATE_PID: int | None = None
# Ignored by the template (the supervisor leads); a watcher ignores only SIGINT.
GROUP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Report(StrEnum):
    """What a watcher tells the supervisor over its pipe, as (Report, payload dict)."""

    READY = "ready"  # watching; payload: pid
    HEARTBEAT = "heartbeat"  # payload: the status snapshot (snapshot.py), {} if unchanged
    WAITING = "waiting"  # payload: reason (a directory or mount not there yet)
    EXITING = "exiting"  # payload: reason, just before exiting on its own


@dataclass(frozen=True)
class ChildSpec:
    """Everything a child needs, handed over by pickling."""

    instance: InstanceConfig
    broker: BrokerConfig
    state_dir: str
    log_level: str
    stop_timeout_seconds: float
    parent_pid: int  # the supervisor's; a child of the template puts the template's (run_child)
    max_parallel_hashes: int = 2  # machine-wide cap, one lock file per slot under state_dir
    log_format: str = "auto"  # the roster's; auto looks at the stdout the child shares
    roster: str = field(default="", compare=False)  # its file, for commands a log line suggests
    # Sets the heartbeat cadence.  Not part of equality, like the supervisor settings the
    # running Child keeps: a reload that only changes it restarts nobody.
    hang_timeout_seconds: float = field(default=60.0, compare=False)


def run_child(spec: ChildSpec, to_parent: Connection) -> None:
    """A watcher process's entry point: run the watcher (imported already in a child of
    the template; a spawned process imports it here)."""
    if TEMPLATE_PID is not None and os.getpid() != TEMPLATE_PID:
        for signum in (signal.SIGTERM, signal.SIGHUP):  # (SIGINT: child_main ignores it)
            signal.signal(signum, signal.SIG_DFL)
        spec = _forked_from(TEMPLATE_PID, spec)
    import_watcher()(spec, to_parent)


def _forked_from(template_pid: int, spec: ChildSpec) -> ChildSpec:
    """The spec as a child of the template sees it: its parent is the template, which
    lives exactly as long as the supervisor (it exits once the supervisor's end of its
    "alive" pipe closes), so the child dies with the template (watcher/main.py
    `_die_with_parent`).  The forkserver gives each child a copy of that pipe's writing
    end, for children that start processes of their own; a watcher starts none, and its
    copy would keep the template alive after a kill -9 of the supervisor: closed here.
    (That copy is private to multiprocessing: if it cannot be found, nothing rests on it;
    the watcher still sees its pipe to the dead supervisor break at its next heartbeat.)"""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    alive_fd = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(alive_fd, int):
        with contextlib.suppress(OSError):
            os.close(alive_fd)
        server._forkserver_alive_fd = None  # type: ignore[union-attr]
    return dataclasses.replace(spec, parent_pid=template_pid)


def import_watcher() -> Callable[[ChildSpec, Connection], None]:
    """The watcher's entry point, imported without PyYAML (see _without_module)."""
    with _without_module("yaml"):
        from multiwatch.watcher.main import child_main

    return child_main


@contextlib.contextmanager
def _without_module(name: str) -> Iterator[None]:
    """Make `import name` fail (ImportError) inside the block, if it is not imported yet.

    For PyYAML: kombu.serialization imports it at import time, only to register a YAML
    codec, and falls back to an "install PyYAML" stub without it.  The child publishes
    JSON bytes and never parses YAML (the supervisor read the roster), so the import is
    pure start-up cost (bench/README.md has the figure).  A None entry in sys.modules is
    the import system's documented way to make an import fail; it is removed afterwards,
    so a later `import yaml` in the child still works.
    """
    if name in sys.modules:
        yield
        return
    sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if sys.modules.get(name, "") is None:
            del sys.modules[name]
