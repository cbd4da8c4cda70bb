"""`multiwatch deletions`: the deletions a scan held, counted, listed, released or rechecked
(cli/deletions.py)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from multiwatch.cli.commands.common import CONFIG_HELP, Subcommands, on_roster

if TYPE_CHECKING:
    from multiwatch.config import Roster


def register(commands: Subcommands) -> None:
    deletions = commands.add_parser(
        "deletions", help="show, release or re-check the deletions a scan held",
        description="A scan (at start, after lost events, the periodic one) that finds more "
        "tracked files gone than the instance's max_scan_deletions holds their deletions "
        "instead of announcing them (an unmounted share looks like that). Without an option, "
        "print how many instance ID holds. The running watcher serves --release and --recheck "
        "within seconds (this command waits for it); otherwise its next start does.",
    )
    deletions.add_argument("-c", "--config", metavar="PATH", help=CONFIG_HELP)
    deletions.add_argument("instance_id", metavar="ID", help="the instance")
    action = deletions.add_mutually_exclusive_group()
    action.add_argument("--list", dest="action", action="store_const", const="list",
                        help="print the held paths, one per line")
    action.add_argument("--release", dest="action", action="store_const", const="release",
                        help="announce them: file_deleted once for each file still gone")
    action.add_argument("--recheck", dest="action", action="store_const", const="recheck",
                        help="rescan: files there again are no longer held, the others stay")
    deletions.set_defaults(handler=on_roster(_deletions))


def _deletions(roster: Roster, args: argparse.Namespace) -> int:
    from multiwatch.cli.deletions import deletions

    return deletions(roster, args.instance_id, action=args.action, out=sys.stdout)
