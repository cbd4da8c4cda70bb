"""`multiwatch tail`: print the events of the roster's queue or embedded spool (cli/tail.py)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from multiwatch.cli.commands.common import CONFIG_HELP, Subcommands, check_state, on_roster

if TYPE_CHECKING:
    from multiwatch.config import Roster


def register(commands: Subcommands) -> None:
    tail = commands.add_parser(
        "tail", help="print events from the queue (or the embedded spool), one JSON "
        "per line",
        description="Consume events from the roster's queue (or the embedded spool when no "
        "broker is configured) and print each message body as one JSON line. Consumed "
        "messages are acknowledged, i.e. taken off the queue; use --tap to watch a copy "
        "instead (RabbitMQ only).",
    )
    tail.add_argument("-c", "--config", metavar="PATH", help=CONFIG_HELP)
    tail.add_argument("--queue", metavar="NAME", help="queue to consume (default: broker.queue)")
    tail.add_argument("--tap", action="store_true",
                      help="bind a private, auto-deleted queue to the exchange and print copies, "
                      "leaving the configured queue untouched (RabbitMQ only)")
    tail.add_argument("-n", "--count", type=int, metavar="N",
                      help="exit after printing N events")
    tail.add_argument("--timeout", type=float, metavar="SECONDS",
                      help="exit after SECONDS without a new event")
    tail.set_defaults(handler=on_roster(_tail))


def _tail(roster: Roster, args: argparse.Namespace) -> int:
    from multiwatch.cli.tail import tail

    if roster.broker.embedded:  # its spool lives under state_dir: look, create nothing
        check_state(roster, create=False, instances=False)
    return tail(roster, args)
