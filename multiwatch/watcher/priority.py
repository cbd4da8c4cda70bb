"""`nice` and `ionice`: a watcher's CPU and disk priority, set at its start.

Both are per thread on Linux and inherited by the threads a thread starts, so they are set
on the main thread before any other thread exists.  A kernel that refuses (a negative nice
or the realtime class without CAP_SYS_NICE / CAP_SYS_ADMIN) is told in one log line: the
watcher runs on at the priority it inherited, rather than not at all.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

# ionice(1)'s level for best-effort and realtime when none is given (the kernel's at nice 0).
DEFAULT_IONICE_LEVEL = 4


def apply_priority(nice: int | None, ionice: str | None) -> None:
    """Set this process's nice value and I/O class ("idle", "best-effort:7"...); None: inherit."""
    if nice is not None:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        except OSError as exc:
            log.warning("cannot set nice %d: %s; running at nice %d", nice,
                        exc.strerror or exc, os.getpriority(os.PRIO_PROCESS, 0))
    if ionice is not None:
        _set_ionice(ionice)


def _set_ionice(ionice: str) -> None:
    import psutil  # only a watcher with an ionice class needs it

    name, _, level = ionice.partition(":")
    io_class = {"idle": psutil.IOPRIO_CLASS_IDLE, "best-effort": psutil.IOPRIO_CLASS_BE,
                "realtime": psutil.IOPRIO_CLASS_RT}[name]
    value = None if name == "idle" else int(level or DEFAULT_IONICE_LEVEL)
    try:
        psutil.Process().ionice(io_class, value)
    except psutil.AccessDenied:  # its text is only "(pid=N)"
        _refused(ionice, "Permission denied")
    except (psutil.Error, OSError) as exc:
        _refused(ionice, getattr(exc, "strerror", None) or str(exc))


def _refused(ionice: str, why: str) -> None:
    log.warning("cannot set ionice %s: %s; running at the inherited I/O priority", ionice, why)
