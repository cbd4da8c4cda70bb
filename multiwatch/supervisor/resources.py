"""Resource use of the supervisor and its children, measured with psutil.

Counting open files (a readlink and a stat per descriptor) costs more than everything
else in a sample together, so the count is refreshed only when asked for and reused in
between.  Where /proc is there (Linux), a sample reads two files per process
(/proc/<pid>/stat and /io) instead of psutil's four: with 200 children sampled every 5 s
that was most of an idle supervisor's work; elsewhere psutil measures.  Reading /proc
fails like any open() when file descriptors run out (EMFILE): such a sample is skipped
(None), never raised into the supervisor loop.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from dataclasses import dataclass

import psutil

from multiwatch.status_view import Resources

log = logging.getLogger(__name__)

_PROC = os.path.isfile("/proc/self/stat") and os.path.isfile("/proc/self/io")
_TICKS = os.sysconf("SC_CLK_TCK") if _PROC else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if _PROC else 4096


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
        # pid → (its start time in ticks, CPU seconds, time.monotonic()) at the last sample
        self._cpu: dict[int, tuple[int, float, float]] = {}

    def sample(self, pid: int, *, count_files: bool = True) -> Usage | None:
        """Resource use of `pid`, or None if it has exited or cannot be measured now.
        Without `count_files` the open-files figure is the one counted last (a new pid is
        always counted).  cpu_percent is over the time since its previous sample (0.0 at
        the first), as psutil's cpu_percent(interval=None)."""
        if _PROC:
            try:
                return self._sample_proc(pid, count_files=count_files)
            except (FileNotFoundError, ProcessLookupError):  # exited
                self._cpu.pop(pid, None)
                self._open_files.pop(pid, None)
                return None
            except OSError as exc:  # EMFILE/ENFILE, access denied: try next time
                log.debug("resource sample failed", extra={"pid": pid, "error": str(exc)})
                return None
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

    def _sample_proc(self, pid: int, *, count_files: bool) -> Usage | None:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        now = time.monotonic()
        # proc(5): after the ")" closing the command name, from field 3 (state) on.
        fields = raw[raw.rindex(b")") + 2:].split()
        if fields[0] in (b"Z", b"X"):  # exited, not reaped yet: nothing to measure
            return None
        cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime
        started = int(fields[19])
        last = self._cpu.get(pid)
        if last is None or last[0] != started:  # a new process (or a reused pid)
            percent = 0.0
            self._open_files.pop(pid, None)
        else:
            percent = 100 * (cpu - last[1]) / (now - last[2]) if now > last[2] else 0.0
        self._cpu[pid] = (started, cpu, now)
        try:
            with open(f"/proc/{pid}/io", "rb") as f:
                read_bytes: int | None = _io_field(f.read(), b"read_bytes:")
        except PermissionError:
            read_bytes = None
        if count_files or pid not in self._open_files:
            self._open_files[pid] = _count_open_files(pid)
        return Usage(cpu_percent=round(percent, 1), rss_bytes=int(fields[21]) * _PAGE,
                     open_files=self._open_files[pid], threads=int(fields[17]),
                     read_bytes=read_bytes)

    def retain(self, pids: set[int]) -> None:
        """Drop cached processes that are no longer supervised (pids get reused)."""
        for pid in set(self._processes) - pids:
            del self._processes[pid]
            self._open_files.pop(pid, None)
        for pid in set(self._cpu) - pids:
            del self._cpu[pid]
            self._open_files.pop(pid, None)


def _io_field(text: bytes, name: bytes) -> int | None:
    for line in text.splitlines():
        if line.startswith(name):
            return int(line[len(name):])
    return None


def _count_open_files(pid: int) -> int:
    """Regular files open in `pid`, as psutil's open_files() counts them: descriptors
    whose link is a path naming a regular file (without psutil's fdinfo read for each)."""
    directory = f"/proc/{pid}/fd"
    count = 0
    for fd in os.listdir(directory):
        try:
            target = os.readlink(f"{directory}/{fd}")
            if target.startswith("/") and stat.S_ISREG(os.stat(target).st_mode):
                count += 1
        except OSError:
            continue  # closed meanwhile, a path that is gone (deleted) or not ours to stat
    return count
