"""`multiwatch state export|backup|forget-mount`: the instances' state databases
(cli/state.py, cli/forget_mount.py)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from multiwatch.cli.commands.common import CONFIG_HELP, Subcommands, on_roster

if TYPE_CHECKING:
    from multiwatch.config import Roster


def register(commands: Subcommands) -> None:
    state = commands.add_parser(
        "state", help="export or back up the tracked-file state of instances",
        description="Read each instance's state database (tracked files and their hashes). "
        "Safe while multiwatch runs.",
    )
    state_commands = state.add_subparsers(dest="state_command", metavar="ACTION", required=True)
    export = state_commands.add_parser(
        "export", help="print tracked files as JSON lines",
        description="Print every tracked file as one JSON object per line: instance_id, path, "
        "relative_path, size, mtime_ns, inode, sha256_hash, xxh128_hash.",
    )
    export.set_defaults(handler=on_roster(_export))
    backup = state_commands.add_parser(
        "backup", help="copy state databases (sqlite online backup)",
        description="Write a consistent copy of each instance's state database to "
        "DIR/<instance_id>.state.db, safe while multiwatch runs. To restore: stop multiwatch, "
        "copy the file to <state_dir>/instances/<instance_id>/state.db (delete state.db-wal and "
        "state.db-shm there), start multiwatch; its startup scan announces whatever changed "
        "since the backup.",
    )
    backup.add_argument("--to", required=True, metavar="DIR", help="directory for the copies")
    backup.set_defaults(handler=on_roster(_backup))
    forget_mount = state_commands.add_parser(
        "forget-mount", help="forget the filesystem an instance remembers (stopped instances)",
        description="A watcher remembers the mount its directory was on and, while that mount "
        "is gone, waits (WAITING, directory unmounted) instead of announcing every file "
        "deleted. When the directory moved to another filesystem for good, stop multiwatch "
        "and run this: the next start watches the directory on whatever filesystem it is.",
    )
    forget_mount.set_defaults(handler=on_roster(_forget_mount))
    for action in (export, backup, forget_mount):
        action.add_argument("-c", "--config", metavar="PATH", help=CONFIG_HELP)
        action.add_argument("--instance", metavar="ID", action="append",
                            help="only this instance (repeatable; default: all)")


def _export(roster: Roster, args: argparse.Namespace) -> int:
    from multiwatch.cli.state import export_state

    return export_state(roster, args.instance)


def _backup(roster: Roster, args: argparse.Namespace) -> int:
    from multiwatch.cli.state import backup_state

    return backup_state(roster, args.instance, args.to)


def _forget_mount(roster: Roster, args: argparse.Namespace) -> int:
    from multiwatch.cli.forget_mount import forget_mount

    return forget_mount(roster, args.instance)
