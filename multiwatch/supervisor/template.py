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

Every start has a deadline (`start_in_template`).  multiprocessing's own start waits for the
template to fork and send the new pid with none: a stopped or hung template would hold the
supervisor's loop at that start for good.  Here a template found stopped (SIGSTOP) fails
the start at once, one that does not answer within FORK_TIMEOUT_SECONDS (a template still
importing: FIRST_FORK_TIMEOUT_SECONDS) fails it then; either way the start fails with the
reason (the instance backs off and retries) and the template is killed and replaced: its
watchers stop with it and are started again from the new one, as after a template's crash.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import tempfile
import threading
import time
from multiprocessing import forkserver
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from typing import Any

log = logging.getLogger(__name__)

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
# A template that has forked once forks the next watcher in milliseconds; one that has not
# is still importing the watcher (seconds on a loaded machine).  Beyond these it is hung.
FORK_TIMEOUT_SECONDS = 10.0
FIRST_FORK_TIMEOUT_SECONDS = 60.0
KILL_TIMEOUT_SECONDS = 5.0  # a SIGKILLed template is reaped within this (else left: logged)
STOPPED_STATES = frozenset("Tt")  # /proc/<pid>/stat: stopped by a signal, or traced

_answered: set[int] = set()  # templates that have forked a watcher (their deadline is short)


class TemplateUnresponsive(OSError):
    """The template did not fork a watcher in time (stopped, hung): it was replaced."""


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


def start_in_template(process: BaseProcess, *, timeout: float | None = None,
                      check_stopped: bool = True) -> None:
    """`process.start()` in the template, within a deadline (`timeout`, default by whether
    the template has forked before).  Raises TemplateUnresponsive (an OSError) if the
    template is stopped (checked first, unless `check_stopped` is false) or does not answer
    in time, after replacing it; or whatever the start itself raised."""
    pid = template_pid()
    if check_stopped and pid is not None and _process_state(pid) in STOPPED_STATES:
        raise _replaced(pid, f"the template process (pid {pid}) is stopped (SIGSTOP)")
    if timeout is None:
        timeout = FORK_TIMEOUT_SECONDS if pid in _answered else FIRST_FORK_TIMEOUT_SECONDS
    done = threading.Event()
    failed: list[BaseException] = []

    def start() -> None:  # (multiprocessing's wait for the pid has no deadline of its own)
        try:
            process.start()
        except Exception as exc:  # noqa: BLE001 - handed to the caller, who raises it
            failed.append(exc)
        finally:
            done.set()

    threading.Thread(target=start, name="multiwatch-template-start", daemon=True).start()
    if not done.wait(timeout):
        pid = template_pid()
        error = _replaced(pid, f"the template process (pid {pid}) did not fork the watcher "
                               f"within {timeout:g} s")
        done.wait(KILL_TIMEOUT_SECONDS)  # killed, it closed its pipes: the start ends (EOF)
        raise error
    if failed:
        raise failed[0]
    pid = template_pid()
    if pid is not None:
        _answered.add(pid)


def _replaced(pid: int | None, reason: str) -> TemplateUnresponsive:
    """Kill the unresponsive template now (the next start launches a new one) and say so;
    returns the error that fails the start."""
    log.error("%s; killing it: its watchers stop and are started again from a new template",
              reason, extra={"template_pid": pid})
    kill_template()
    return TemplateUnresponsive(f"{reason}; it was replaced")


def _process_state(pid: int) -> str:
    """The state letter of /proc/<pid>/stat ("" if unknown: not Linux, or gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            after_name = stat.read().rsplit(b")", 1)[1]
    except (OSError, IndexError):
        return ""
    fields = after_name.split()
    return fields[0].decode("ascii", "replace") if fields else ""


def template_pid() -> int | None:
    """The running template's pid, if one was started by this process."""
    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)  # (private: see stop)
    return pid if isinstance(pid, int) else None


def stop_template(timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    """Stop the template (after the watchers): close its alive pipe, wait up to `timeout`,
    then SIGKILL.  multiprocessing's own stop waits without a deadline."""
    _end_template(timeout, kill_first=False)


def kill_template() -> None:
    """SIGKILL the template now (it is hung or stopped); the next start launches a new one."""
    _end_template(KILL_TIMEOUT_SECONDS, kill_first=True)


def _end_template(timeout: float, *, kill_first: bool) -> None:
    server: Any = forkserver._forkserver  # (its state is private: no public stop with a deadline)
    try:
        lock = server._lock  # (ensure_running's lock: no start races this)
        if not lock.acquire(timeout=timeout):  # a start stuck inside ensure_running
            log.error("cannot stop the template process: a start holds multiprocessing's "
                      "forkserver lock", extra={"template_pid": template_pid()})
            return
        try:
            pid, alive_fd = server._forkserver_pid, server._forkserver_alive_fd
            address = server._forkserver_address
            server._forkserver_pid = server._forkserver_alive_fd = None
            server._forkserver_address = None
        finally:
            lock.release()
    except AttributeError:  # another Python's forkserver: it ends when the supervisor does
        return
    if pid is None:
        return
    _answered.discard(pid)
    if kill_first:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if alive_fd is not None:
        os.close(alive_fd)  # EOF: the template leaves its loop and exits
    if not _reaped(pid, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not _reaped(pid, timeout):
            log.error("the template process did not exit after SIGKILL",
                      extra={"template_pid": pid})
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
