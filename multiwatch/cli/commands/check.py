"""`multiwatch check`: validate a roster, print the effective configuration, warn when the
roster needs more inotify instances or watches than the kernel allows (cli/inotify_check.py),
say where replicas may run and how soon one takes over (roster ha: cli/ha_check.py),
and with --connect try the brokers and the state directory (cli/preflight.py)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from multiwatch.cli.commands.common import CONFIG_HELP, Subcommands, check_state, on_roster

if TYPE_CHECKING:
    from multiwatch.config import Roster


def register(commands: Subcommands) -> None:
    check = commands.add_parser(
        "check", help="validate a roster and print the effective configuration",
        description="Validate a roster and print the effective configuration (defaults applied, "
        "${VAR} expanded, passwords masked). Exit status 0 if valid, 2 if not.",
    )
    check.add_argument("-c", "--config", metavar="PATH", help=CONFIG_HELP)
    check.add_argument("--connect", action="store_true",
                       help="also log in to every broker URL, declare the exchange and queue "
                       "passively and try writing the state directory; an inotify shortfall "
                       "counts too; one line per problem, exit 2")
    check.set_defaults(handler=on_roster(_check))


def _check(roster: Roster, args: argparse.Namespace) -> int:
    from multiwatch.cli.ha_check import ha_findings
    from multiwatch.cli.inotify_check import check_inotify
    from multiwatch.config import render_effective

    check_state(roster, create=False)
    print(render_effective(roster), end="")
    inotify = check_inotify(roster)  # warnings: a watcher refused inotify polls instead;
    if not args.connect:  # problems for --connect, which asks whether run works as set
        for warning in inotify.warnings:
            print(f"multiwatch: warning: {warning}", file=sys.stderr)
    replicas = ha_findings(roster)  # (roster ha)
    for warning in replicas.warnings:
        print(f"multiwatch: warning: {warning}", file=sys.stderr)
    for note in replicas.notes:
        print(f"multiwatch: note: {note}", file=sys.stderr)
    if args.connect:
        from multiwatch.cli.preflight import check_connect

        return check_connect(roster, [inotify.summary] if inotify.summary else [],
                             also_problems=inotify.warnings)
    return 0
