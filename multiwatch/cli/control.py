"""`multiwatch reload` and `multiwatch stop`: signal the supervisor running a roster.

The supervisor is found through state_dir/supervisors/<pid>.lock (supervisor/run_lock.py):
a file whose lock is held, recording a roster or instances of this one.  Before a signal
goes out, the pid it names must hold that lock now (the kernel's /proc/locks says so) and
be a multiwatch supervisor (its process title): a stale or planted file naming a reused
pid is never signalled.  The pid is opened as a pidfd before the checks, so the signal
reaches the very process that passed them.

Exit status: 0 done (reload: SIGHUP sent; stop: the supervisor has exited), 1 no
supervisor of this roster runs (or none could be trusted), 2 a roster error (or `stop --only`
naming some of a supervisor's instances: it stops as a whole, so nothing is sent; or reload
of a supervisor started from the environment, which has no roster file to re-read), 3 stop: still
running when --timeout ran out (SIGTERM was sent; it is still shutting down).  A state
directory others control (state_dir.py) is a roster error: its lock files prove nothing.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from collections.abc import Sequence

from multiwatch.config import ConfigError, Roster
from multiwatch.state_dir import UnsafeStateError
from multiwatch.supervisor.run_lock import (
    RunningSupervisor,
    roster_path,
    running_supervisors,
    why_not_the_holder,
)

EXIT_NONE_RUNNING = 1
EXIT_CANNOT_RELOAD = 2  # reload: a supervisor started from the environment (no roster file)
EXIT_STILL_RUNNING = 3
REAP_MARGIN_SECONDS = 10.0  # beyond stop_timeout: SIGKILL, reaping, the supervisor's exit


def reload_command(roster: Roster, only: Sequence[str] | None) -> int:
    """SIGHUP every supervisor running this roster (or --only its instances)."""
    targets = _targets(roster, only, "reload")
    if not targets:
        return EXIT_NONE_RUNNING
    status = 0
    for supervisor, pidfd in targets:
        with _closing(pidfd):
            if supervisor.roster is None:  # it would log "SIGHUP ignored" and change nothing
                print(f"multiwatch: the supervisor, pid {supervisor.pid}, runs a roster from "
                      "the environment, which it cannot re-read: not signalled. To apply a "
                      "change, restart it (multiwatch stop, then multiwatch run, with the new "
                      "environment)", file=sys.stderr)
                status = EXIT_CANNOT_RELOAD
                continue
            _send(supervisor.pid, pidfd, signal.SIGHUP)
        print(f"sent SIGHUP to the supervisor, pid {supervisor.pid} ({_what(supervisor)}): it "
              "re-reads its roster and logs what it starts, stops or restarts")
    return status


def stop_command(roster: Roster, only: Sequence[str] | None, timeout: float | None) -> int:
    """SIGTERM every supervisor running this roster, then wait for each to exit."""
    targets = _targets(roster, only, "stop")
    if not targets:
        return EXIT_NONE_RUNNING
    if only:  # a supervisor stops as a whole: never take instances not named with it
        _refuse_others(targets, only)
    _refuse_restarted(targets)
    if timeout is None:
        timeout = roster.supervisor.stop_timeout_seconds + REAP_MARGIN_SECONDS
    deadline = time.monotonic() + timeout
    status = 0
    for supervisor, pidfd in targets:
        _send(supervisor.pid, pidfd, signal.SIGTERM)
    for supervisor, pidfd in targets:
        with _closing(pidfd):
            if _wait_exit(supervisor.pid, pidfd, deadline):
                print(f"stopped the supervisor, pid {supervisor.pid} ({_what(supervisor)})")
            else:
                print(f"multiwatch: the supervisor, pid {supervisor.pid}, is still running "
                      f"{timeout:g} s after SIGTERM (its watchers get stop_timeout_seconds "
                      "each); wait longer with --timeout", file=sys.stderr)
                status = EXIT_STILL_RUNNING
    return status


def _refuse_others(targets: list[tuple[RunningSupervisor, int | None]],
                   only: Sequence[str]) -> None:
    """ConfigError (exit 2, nothing signalled) if a supervisor `stop --only` found also runs
    instances not named: SIGTERM would stop those too."""
    for supervisor, _ in targets:
        others = sorted(set(supervisor.instances) - set(only))
        if others:
            for _, pidfd in targets:
                if pidfd is not None:
                    os.close(pidfd)
            named = " --only ".join(only)
            raise ConfigError(
                f"the supervisor running {', '.join(only)}, pid {supervisor.pid} "
                f"({_what(supervisor)}), also runs {', '.join(others)}: stopping it would stop "
                f"{', '.join(others)} too; nothing was signalled. To stop all of it: multiwatch "
                f"stop -c {supervisor.roster or '<roster>'} (or --only {named} --only "
                f"{' --only '.join(others)}); to stop only {', '.join(only)}: remove it from "
                "the roster and run multiwatch reload")


def _refuse_restarted(targets: list[tuple[RunningSupervisor, int | None]]) -> None:
    """ConfigError (exit 2, nothing signalled) if supervisord runs a supervisor found: it
    would start it again at once (autorestart); supervisorctl stops it for good."""
    managed = [s for s, _ in targets if s.supervisord_program]
    if not managed:
        return
    for _, pidfd in targets:
        if pidfd is not None:
            os.close(pidfd)
    how = " ".join(
        (f"supervisorctl -s {s.supervisord_url} stop {s.supervisord_program};"
         if s.supervisord_url else f"supervisorctl stop {s.supervisord_program};")
        for s in managed).rstrip(";")
    pids = ", ".join(str(s.pid) for s in managed)
    who = (f"the supervisor (pid {pids}) is" if len(managed) == 1
           else f"the supervisors (pids {pids}) are")
    them = "it" if len(managed) == 1 else "them"
    raise ConfigError(f"{who} run by supervisord, which would start {them} again at once: "
                      f"nothing was signalled; stop {them} through supervisord: {how}")


def _targets(roster: Roster, only: Sequence[str] | None,
             command: str) -> list[tuple[RunningSupervisor, int | None]]:
    """The verified supervisors of this roster, each with a pidfd (None without pidfds);
    says why on stderr when there is none."""
    _refuse_another_users_state(roster, command)
    try:
        found = [s for s in running_supervisors(roster.state_dir) if _runs(s, roster, only)]
    except UnsafeStateError as exc:  # not ours alone: nothing in it can be trusted
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the state directory {roster.state_dir}: "
                          f"{exc.strerror or exc}") from None
    verified = []
    for supervisor in found:
        pidfd = _pidfd(supervisor.pid)
        problem = why_not_the_holder(supervisor)
        if problem is None:
            verified.append((supervisor, pidfd))
            continue
        if pidfd is not None:
            os.close(pidfd)
        print(f"multiwatch: {problem}; not signalling pid {supervisor.pid}", file=sys.stderr)
    if not verified:
        print(f"multiwatch: no multiwatch supervisor runs {roster.source} (looked for "
              f"supervisors holding a lock in {os.path.join(roster.state_dir, 'supervisors')})",
              file=sys.stderr)
    return verified


def _refuse_another_users_state(roster: Roster, command: str) -> None:
    """ConfigError if another user owns state_dir: its supervisor runs as that user (a
    service's User=), who is the one to ask (state_dir.py's error would suggest taking the
    state over, which would break that service's next start)."""
    import pwd
    import shlex

    try:
        owner = os.stat(roster.state_dir).st_uid
    except OSError:
        return  # (missing: no supervisor; unreadable: said below)
    if owner == os.geteuid() or owner == 0:  # (root's: fsGroup volumes, state_dir.py)
        return
    try:
        name = pwd.getpwuid(owner).pw_name
    except KeyError:
        name = str(owner)
    config = f" -c {shlex.quote(roster.source)}" if roster_path(roster.source) else ""
    raise ConfigError(
        f"the state directory {roster.state_dir} belongs to {name}, so its supervisor runs as "
        f"{name}: {command} it as that user, e.g. sudo -u {name} multiwatch {command}{config}")


def _runs(supervisor: RunningSupervisor, roster: Roster, only: Sequence[str] | None) -> bool:
    """It runs this roster: the same roster file, or instances of it (the exports run one
    supervisor per instance; a roster from the environment has no file)."""
    wanted = set(only) if only else {i.id for i in roster.instances}
    if wanted & set(supervisor.instances):
        return True
    mine = roster_path(roster.source)
    return not only and mine is not None and supervisor.roster == mine


def _what(supervisor: RunningSupervisor) -> str:
    instances = ", ".join(supervisor.instances) or "no instance"
    return f"{supervisor.roster or 'roster from the environment'}: {instances}"


def _pidfd(pid: int) -> int | None:
    if pid <= 0 or not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:  # gone (the checks say so), or a kernel before 5.3
        return None


def _send(pid: int, pidfd: int | None, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, signum)
        else:
            os.kill(pid, signum)


def _wait_exit(pid: int, pidfd: int | None, deadline: float) -> bool:
    """True once the process has exited (a pidfd turns readable), False at the deadline."""
    if pidfd is not None:
        readable, _, _ = select.select([pidfd], [], [], max(0.0, deadline - time.monotonic()))
        return bool(readable)
    while True:  # no pidfd: poll the pid (not its reuse-proof, but bounded)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


@contextlib.contextmanager
def _closing(fd: int | None):  # type: ignore[no-untyped-def]
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)
