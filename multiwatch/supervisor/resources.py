"""Resource use of the supervisor and its children, measured with psutil.

Counting open files (one readlink, stat and fdinfo read per descriptor) costs more than
everything else in a sample together, so the count is refreshed only when asked for and
reused in between.  psutil reads /proc, so it fails like any open() when file descriptors
run out (EMFILE): such a sample is skipped (None), never raised into the supervisor loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psutil

from multiwatch.status_view import Resources

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Usage:
    """One sample of a process's resource use."""

    cpu_percent: float
    rss_bytes: int
    open_files: int
    threads: int
    read_bytes: int | None

    def as_dict(self) -> Resources:
        return {"cpu_percent": self.cpu_percent, "rss_bytes": self.rss_bytes,
                "open_files": self.open_files, "threads": self.threads,
                "read_bytes": self.read_bytes}


class ResourceMeter:
    """Keeps one psutil.Process per pid so cpu_percent measures since the previous sample."""

    def __init__(self) -> None:
        self._processes: dict[int, psutil.Process] = {}
        self._open_files: dict[int, int] = {}  # pid → last count

    def sample(self, pid: int, *, count_files: bool = True) -> Usage | None:
        """Resource use of `pid`, or None if it has exited or cannot be measured now.
        Without `count_files` the open-files figure is the one counted last (a new pid is
        always counted)."""
        process = self._processes.get(pid)
        try:
            if process is None:
                process = self._processes[pid] = psutil.Process(pid)
            if count_files or pid not in self._open_files:
                self._open_files[pid] = len(process.open_files())
            with process.oneshot():
                try:
                    read_bytes: int | None = process.io_counters().read_bytes
                except (psutil.AccessDenied, AttributeError):
                    read_bytes = None
                return Usage(
                    cpu_percent=process.cpu_percent(interval=None),
                    rss_bytes=process.memory_info().rss,
                    open_files=self._open_files[pid],
                    threads=process.num_threads(),
                    read_bytes=read_bytes,
                )
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            self._processes.pop(pid, None)
            self._open_files.pop(pid, None)
            return None
        except (psutil.Error, OSError) as exc:  # EMFILE/ENFILE, access denied: try next time
            log.debug("resource sample failed", extra={"pid": pid, "error": str(exc)})
            return None

    def retain(self, pids: set[int]) -> None:
        """Drop cached processes that are no longer supervised (pids get reused)."""
        for pid in set(self._processes) - pids:
            del self._processes[pid]
            self._open_files.pop(pid, None)
