"""`multiwatch resync`: re-announce an instance's tracked files from its state database
(cli/resync.py)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from multiwatch.cli.commands.common import CONFIG_HELP, Subcommands, on_roster

if TYPE_CHECKING:
    from multiwatch.config import Roster


def register(commands: Subcommands) -> None:
    resync = commands.add_parser(
        "resync", help="re-announce an instance's tracked files (or a subtree, or one file)",
        description="Queue a file_discovered event for every tracked file of instance ID (or "
        "those at or under PATH: absolute, or relative to the instance's directory), as the "
        "state database recorded them (nothing is re-hashed; files changed on disk since are "
        "left to the watcher). They carry the AMQP header x-multiwatch-resync and message_ids "
        "of their own. A running multiwatch publishes them within seconds; otherwise they go "
        "out at its next start.",
    )
    resync.add_argument("-c", "--config", metavar="PATH", help=CONFIG_HELP)
    resync.add_argument("instance_id", metavar="ID", help="the instance to re-announce")
    resync.add_argument("path", metavar="PATH", nargs="?",
                        help="only this file or directory (default: the whole instance)")
    resync.set_defaults(handler=on_roster(_resync))


def _resync(roster: Roster, args: argparse.Namespace) -> int:
    from multiwatch.cli.resync import resync

    return resync(roster, args.instance_id, args.path)
