"""Resource use of the supervisor and its children, measured with psutil."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import psutil


@dataclass(frozen=True)
class Usage:
    """One sample of a process's resource use."""

    cpu_percent: float
    rss_bytes: int
    open_files: int
    threads: int
    read_bytes: int | None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class ResourceMeter:
    """Keeps one psutil.Process per pid so cpu_percent measures since the previous sample."""

    def __init__(self) -> None:
        self._processes: dict[int, psutil.Process] = {}

    def sample(self, pid: int) -> Usage | None:
        """Resource use of `pid`, or None if it has exited."""
        process = self._processes.get(pid)
        try:
            if process is None:
                process = self._processes[pid] = psutil.Process(pid)
            with process.oneshot():
                try:
                    read_bytes: int | None = process.io_counters().read_bytes
                except (psutil.AccessDenied, AttributeError):
                    read_bytes = None
                return Usage(
                    cpu_percent=process.cpu_percent(interval=None),
                    rss_bytes=process.memory_info().rss,
                    open_files=len(process.open_files()),
                    threads=process.num_threads(),
                    read_bytes=read_bytes,
                )
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            self._processes.pop(pid, None)
            return None

    def retain(self, pids: set[int]) -> None:
        """Drop cached processes that are no longer supervised (pids get reused)."""
        for pid in set(self._processes) - pids:
            del self._processes[pid]
