"""`multiwatch explain`: which instance watches a path and what it would announce, read only
(cli/explain.py)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from multiwatch.cli.commands.common import CONFIG_HELP, Subcommands, on_roster

if TYPE_CHECKING:
    from multiwatch.config import Roster


def register(commands: Subcommands) -> None:
    explain = commands.add_parser(
        "explain", help="say which instance watches a path and what it would announce",
        description="Read-only: which instance watches PATH (or the nearest ones), whether its "
        "filters exclude it and by which pattern, what kind of file it is, what the state "
        "database knows of it (announced version, events waiting in the outbox) and what "
        "would be announced now. Never writes; hashes only with --hash.",
    )
    explain.add_argument("-c", "--config", metavar="PATH", help=CONFIG_HELP)
    explain.add_argument("path", metavar="PATH", help="a file (or directory) path")
    explain.add_argument("--hash", action="store_true",
                         help="also hash the file when its size, mtime or inode changed, to "
                         "tell a modification from a touch")
    explain.set_defaults(handler=on_roster(_explain))


def _explain(roster: Roster, args: argparse.Namespace) -> int:
    from multiwatch.cli.explain import explain

    return explain(roster, args.path, hash_changed=args.hash)
