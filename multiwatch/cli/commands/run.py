"""`multiwatch run`: the supervisor, one watcher child per roster instance.

The template process every watcher is forked from starts before the configuration code
is imported: it imports the watcher while the supervisor reads the roster
(supervisor/template.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import TYPE_CHECKING

from multiwatch.cli.commands.common import CONFIG_HELP, Subcommands, check_state, guarded, only

if TYPE_CHECKING:
    from multiwatch.config import Roster


def register(commands: Subcommands) -> None:
    run = commands.add_parser(
        "run", help="run the supervisor and one watcher per roster instance",
        description="Run the supervisor: one watcher child per roster instance, restarted if it "
        "crashes or hangs. Logs are JSON lines on stdout. SIGTERM/SIGINT stop gracefully; "
        "SIGHUP re-reads the roster file and starts, stops or restarts only what changed.",
    )
    run.add_argument("-c", "--config", metavar="PATH", help=CONFIG_HELP)
    run.add_argument("--only", metavar="ID", action="append",
                     help="run only this instance of the roster (repeatable)")
    run.add_argument("--http-listen", metavar="HOST:PORT|off",
                     help="serve the HTTP endpoint here instead of the roster's http.listen; "
                     "off: none (several `run --only` processes on one roster need their own)")
    run.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    # What sqlite, kombu's spool and the lock files create is ours alone whatever the
    # umask we were started with; set before the template process starts (the watchers
    # inherit it).  multiwatch.state_dir sets the modes of what it creates explicitly too.
    os.umask(0o077)
    # Before the configuration code is even imported: the template imports the watcher
    # while the roster is read (supervisor/template.py).
    from multiwatch.supervisor import template

    _spawn_as_if_run_with_dash_m()
    try:
        template.start_template()
    except OSError:  # (no process to spare now): the first watcher's start tries again
        pass
    try:
        return guarded(lambda: _run(args))
    finally:
        template.stop_template()  # after the watchers (a roster rejected: none started)


def _run(args: argparse.Namespace) -> int:
    import dataclasses

    from multiwatch.config import http_override, load_roster
    from multiwatch.logs import setup_logging
    from multiwatch.supervisor.fleet import Supervisor

    roster = load_roster(args.config, os.environ)
    http = http_override(args.http_listen) if args.http_listen is not None else None

    def narrow(roster: Roster) -> Roster:
        roster = only(roster, args.only)
        if http is None:
            return roster  # --http-listen replaces the listen address, not allowed_hosts
        return dataclasses.replace(roster, http=dataclasses.replace(roster.http,
                                                                   listen=http.listen))

    roster = narrow(roster)
    config_path = args.config or os.environ.get("MULTIWATCH_CONFIG") or None
    setup_logging(roster.log_level, "supervisor", roster.log_format)
    check_state(roster, create=True)

    def reload() -> Roster:
        return narrow(load_roster(config_path, os.environ))

    return Supervisor(roster, reload=reload if config_path else None, only=args.only).run()


def _spawn_as_if_run_with_dash_m() -> None:
    """Spare each watcher child a second run of the `multiwatch` console script.

    A child first recreates the parent's `__main__` (multiprocessing.spawn `prepare`, which a
    child forked from the template runs too).  The console script is a file with no module spec,
    so the child runs it again as `__mp_main__`, which imports the command line, argparse and
    the roster code for nothing: the child only needs `run_child`.  Under `python -m
    multiwatch`, `__main__.__spec__` names `multiwatch.__main__`, and `prepare` skips any
    `<package>.__main__` in the child.  The console script is that same program, so its
    `__main__` gets that spec too (the spec is how Python records what `__main__` was loaded
    from: -m sets it, a script leaves it None).  Only a script whose `main` is ours is changed:
    never a test runner's `__main__`.
    """
    from multiwatch.cli import main

    program = sys.modules["__main__"]
    if getattr(program, "__spec__", None) is None and getattr(program, "main", None) is main:
        program.__spec__ = importlib.util.find_spec("multiwatch.__main__")
