"""`multiwatch export supervisord|systemd`: a process manager's configuration, one process per
instance (cli/export.py)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from multiwatch.cli.commands.common import CONFIG_HELP, Subcommands, on_roster

if TYPE_CHECKING:
    from multiwatch.config import Roster


def register(commands: Subcommands) -> None:
    export = commands.add_parser(
        "export", help="write supervisord or systemd configuration, one process per "
        "instance",
        description="Write a process manager's configuration with one process per roster "
        "instance, each running `multiwatch run -c ROSTER --only ID`. The processes share the "
        "roster's state_dir (each instance has its own state there) but not its HTTP port: "
        "each runs with --http-listen off, or on its own port with --http-port-base.",
    )
    targets = export.add_subparsers(dest="export_target", metavar="TARGET", required=True)
    supervisord = targets.add_parser(
        "supervisord", help="a supervisord configuration file",
        description="Write a supervisord configuration: one [program:multiwatch-<id>] per "
        "instance (autorestart, SIGTERM, stop timeout above the roster's), plus the "
        "[supervisord], [unix_http_server], [supervisorctl] and [rpcinterface:supervisor] "
        "sections unless --programs-only. Programs inherit supervisord's environment.",
    )
    supervisord.add_argument("-o", "--output", metavar="FILE",
                             help="write here instead of stdout (creates --run-dir)")
    supervisord.add_argument("--programs-only", action="store_true",
                             help="only the [program:...] sections, to include in an "
                             "existing supervisord configuration")
    supervisord.add_argument("--run-dir", metavar="DIR",
                             help="supervisord's socket, pid file and logs "
                             "(default: <state_dir>/supervisord, or <state_dir>-supervisord "
                             "when programs run as another --user)")
    systemd = targets.add_parser(
        "systemd", help="one systemd unit per instance",
        description="Write multiwatch-<id>.service for every instance: Restart=on-failure, "
        "ExecReload sends SIGHUP, the roster unit's sandbox (ProtectSystem=strict, the watched "
        "directory read-only, NoNewPrivileges) and the state directory writable.",
    )
    systemd.add_argument("-o", "--output", metavar="DIR",
                         help="write the unit files into DIR instead of printing them")
    for target in (supervisord, systemd):
        target.add_argument("-c", "--config", metavar="PATH", help=CONFIG_HELP)
        target.add_argument("--python", metavar="PATH",
                            help=f"interpreter the processes run (default: {sys.executable})")
        target.add_argument("--http-port-base", type=int, metavar="PORT",
                            help="give instance N the HTTP endpoint on PORT+N (roster order) "
                            "instead of none")
    supervisord.add_argument("--user", metavar="NAME",
                             help="user= of every program (default: multiwatch when exporting "
                             "as root, else none: supervisord's own user)")
    systemd.add_argument("--user", metavar="NAME",
                         help="User= of every unit (default: multiwatch, the user "
                         "systemd/multiwatch.sysusers creates)")
    supervisord.set_defaults(handler=on_roster(_supervisord))
    systemd.set_defaults(handler=on_roster(_systemd))


def _supervisord(roster: Roster, args: argparse.Namespace) -> int:
    from multiwatch.cli import export as ex

    options = ex.options_for(roster, args.python, args.http_port_base, args.user)
    return ex.export_supervisord(roster, options, output=args.output, run_dir=args.run_dir,
                                 programs_only=args.programs_only)


def _systemd(roster: Roster, args: argparse.Namespace) -> int:
    from multiwatch.cli import export as ex

    options = ex.options_for(roster, args.python, args.http_port_base, args.user)
    return ex.export_systemd(roster, options, output=args.output)
