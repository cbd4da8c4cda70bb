"""The template process the supervisor forks its watchers from (runs in the supervisor).

A watcher child is not a fresh interpreter: multiprocessing's `forkserver`, preloading
watcher/template.py, imports the watcher once and forks each child from that process, so
every child shares the template's modules copy-on-write instead of importing its own
(bench/README.md: memory per child).  Still one process per instance: a crash costs one
directory.

    supervisor ── forkserver request ──> template ("multiwatch: template")
        │                                   └── fork ──> watcher ("multiwatch: watcher ID")
        └── report pipe, SIGTERM/SIGKILL, exit status (relayed by the template) ──┘

`multiwatch run` starts the template before it reads the roster, so the template imports
while the supervisor starts.  The template is in the supervisor's process group and
ignores the group's signals (SIGINT, SIGTERM, SIGHUP: the supervisor leads); it exits when
the supervisor does (even by SIGKILL: its "alive" pipe closes), and its children die with
it (PR_SET_PDEATHSIG, watcher/main.py).  If it dies alone, its children stop, their exits
are reported as status 255, and the next start launches a new template.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import tempfile
import time
from multiprocessing import forkserver
from multiprocessing.context import ForkServerContext
from typing import Any

# The template's preload.  Named, not imported: importing it is what makes a process the
# template (and the supervisor starts it before importing any configuration code).
TEMPLATE_MODULE = "multiwatch.watcher.template"
STOP_TIMEOUT_SECONDS = 5.0
# The template listens on a socket file (mode 0600) in a private directory it makes in the
# temporary directory.  A read-only root (`docker run --read-only`) leaves no usable
# temporary directory but /dev/shm, a tmpfs of its own; and a socket's path is at most 107
# bytes, "pymp-XXXXXXXX/listener-XXXXXXXX" included.
SOCKET_DIR_FALLBACKS = ("/dev/shm",)
MAX_SOCKET_DIR_CHARS = 70
_REAP_POLL_SECONDS = 0.02


def template_context() -> ForkServerContext:
    """The context watchers are started in, forking from the template (started by the
    first start in it, unless start_template did already)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([TEMPLATE_MODULE])
    socket_dir = _socket_dir()
    if socket_dir is not None:
        tempfile.tempdir = socket_dir  # where multiprocessing makes its private directory
    return context


def start_template() -> ForkServerContext:
    """Start the template now (it imports while the caller goes on); idempotent.  Raises
    OSError if it cannot (each watcher's start then tries again)."""
    context = template_context()
    forkserver.ensure_running()
    return context


def _socket_dir() -> str | None:
    """The temporary directory if it is writable and short enough, else a fallback."""
    candidates: list[str] = []
    with contextlib.suppress(OSError):  # (FileNotFoundError: no usable temporary directory)
        candidates.append(tempfile.gettempdir())
    for path in (*candidates, *SOCKET_DIR_FALLBACKS):
        if len(path) <= MAX_SOCKET_DIR_CHARS and os.access(path, os.W_OK | os.X_OK):
            return path
    return None


def template_pid() -> int | None:
    """The running template's pid, if one was started by this process."""
    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)  # (private: see stop)
    return pid if isinstance(pid, int) else None


def stop_template(timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    """Stop the template (after the watchers): close its alive pipe, wait up to `timeout`,
    then SIGKILL.  multiprocessing's own stop waits without a deadline."""
    server: Any = forkserver._forkserver  # (its state is private: no public stop with a deadline)
    try:
        with server._lock:  # (ensure_running's lock: no start races this)
            pid, alive_fd = server._forkserver_pid, server._forkserver_alive_fd
            address = server._forkserver_address
            server._forkserver_pid = server._forkserver_alive_fd = None
            server._forkserver_address = None
    except AttributeError:  # another Python's forkserver: it ends when the supervisor does
        return
    if pid is None:
        return
    if alive_fd is not None:
        os.close(alive_fd)  # EOF: the template leaves its loop and exits
    if not _reaped(pid, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _reaped(pid, timeout)
    if isinstance(address, str) and not address.startswith("\0"):
        with contextlib.suppress(OSError):
            os.unlink(address)


def _reaped(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return True  # reaped already
        if done:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_REAP_POLL_SECONDS)
