"""What the supervisor hands a watcher child, importable without the watcher itself.

The supervisor imports this module, not `multiwatch.watcher.main`: main pulls in watchdog,
kombu, sqlite and the pipeline, which only the child needs, and every millisecond the
supervisor spends importing them comes before the first child is spawned.  `run_child` is
the spawn target; the child imports main itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from multiwatch.config import BrokerConfig, InstanceConfig

EXIT_DIRECTORY_GONE = 3


@dataclass(frozen=True)
class ChildSpec:
    """Everything a child needs, handed over by pickling (spawn)."""

    instance: InstanceConfig
    broker: BrokerConfig
    state_dir: str
    log_level: str
    stop_timeout_seconds: float
    parent_pid: int
    max_parallel_hashes: int = 2  # machine-wide cap, one lock file per slot under state_dir
    # Sets the heartbeat cadence.  Not part of equality, like the supervisor settings the
    # running Child keeps: a reload that only changes it restarts nobody.
    hang_timeout_seconds: float = field(default=60.0, compare=False)


def run_child(spec: ChildSpec, to_parent: Connection) -> None:
    """The spawned process's entry point: import the watcher and run it."""
    from multiwatch.watcher.main import child_main

    child_main(spec, to_parent)
