"""`multiwatch reload|stop`: signal the supervisor running a roster, found through its lock
(cli/control.py)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from multiwatch.cli.commands.common import CONFIG_HELP, Subcommands, on_roster, only

if TYPE_CHECKING:
    from multiwatch.config import Roster


def register(commands: Subcommands) -> None:
    found = ("It finds the supervisor through the lock it holds under the roster's state_dir "
             "(supervisors/<pid>.lock), and signals only a multiwatch supervisor that holds it "
             "now (never a reused pid).")
    reload = commands.add_parser(
        "reload", help="make the running supervisor re-read its roster (SIGHUP)",
        description="Send SIGHUP to the supervisor running this roster: it re-reads the roster "
        f"and starts, stops or restarts only what changed. {found} Exit status 0 when "
        "signalled, 1 when no supervisor of this roster runs, 2 for a roster error or a "
        "supervisor started from the environment (no roster file to re-read: restart it).",
    )
    reload.set_defaults(handler=on_roster(_reload))
    stop = commands.add_parser(
        "stop", help="stop the running supervisor (SIGTERM) and wait for it",
        description="Send SIGTERM to the supervisor running this roster and wait until it has "
        f"exited. {found} A supervisor stops as a whole: with --only, one that also runs "
        "instances not named is not signalled (exit 2). Exit status 0 once stopped, 1 when no "
        "supervisor of this roster runs, 2 for a roster error, 3 when it still runs after "
        "--timeout.",
    )
    stop.add_argument("--timeout", type=float, metavar="SECONDS",
                      help="wait at most this long (default: the roster's "
                      "supervisor.stop_timeout_seconds + 10)")
    stop.set_defaults(handler=on_roster(_stop))
    for control in (reload, stop):
        control.add_argument("-c", "--config", metavar="PATH", help=CONFIG_HELP)
        control.add_argument("--only", metavar="ID", action="append",
                             help="only the supervisor running this instance (repeatable; "
                             "default: every supervisor of the roster)")


def _reload(roster: Roster, args: argparse.Namespace) -> int:
    from multiwatch.cli.control import reload_command

    only(roster, args.only)  # an unknown id is a ConfigError naming the instances
    return reload_command(roster, args.only)


def _stop(roster: Roster, args: argparse.Namespace) -> int:
    from multiwatch.cli.control import stop_command

    only(roster, args.only)  # an unknown id is a ConfigError naming the instances
    return stop_command(roster, args.only, args.timeout)
