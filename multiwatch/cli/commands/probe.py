"""`multiwatch status|health`: ask a running supervisor's HTTP endpoint (cli/status.py).
No roster is loaded: a roster file only names the endpoint."""

from __future__ import annotations

import argparse
import os
import sys

from multiwatch.cli.commands.common import EXIT_USAGE, Subcommands, guarded

_PROBE_CONFIG_HELP = (
    "roster file whose http.listen names the endpoint. Default: $MULTIWATCH_CONFIG; if that "
    "is unset too, $MULTIWATCH_HTTP_LISTEN, else 127.0.0.1:9120."
)
_URL_HELP = (
    "base URL of the supervisor's endpoint, e.g. http://127.0.0.1:9120. Default: from the "
    "roster's http.listen"
)


def register(commands: Subcommands) -> None:
    status = commands.add_parser(
        "status", help="print a running supervisor's fleet as a table (from its HTTP "
        "endpoint)",
        description="Ask a running supervisor (GET /status on its http.listen endpoint) and "
        "print a summary (supervisor, role, broker URL with its password masked) and one row "
        "per instance: state, pid, restarts, uptime, files tracked, events per minute, last "
        "event and when, outbox depth, broker link, role, CPU, RSS, directory, last exit or "
        "reason; then the events by type and the endpoint's pages. Exit status 0, or 1 if "
        "the endpoint cannot be reached.",
    )
    status.add_argument("--json", action="store_true", help="print the raw /status JSON")
    health = commands.add_parser(
        "health", help="exit 0 if a running supervisor is ready (or alive), 1 if not",
        description="Exit 0 if the running supervisor's /readyz answers 200 (every instance "
        "RUNNING with its broker connected), 1 otherwise, printing one line. For Docker "
        "HEALTHCHECK and Kubernetes exec probes; no curl needed.",
    )
    health.add_argument("--live", action="store_true",
                        help="probe /healthz instead: is the supervisor loop turning?")
    for probe in (status, health):
        probe.add_argument("-c", "--config", metavar="PATH", help=_PROBE_CONFIG_HELP)
        probe.add_argument("--url", metavar="URL", help=_URL_HELP)
        probe.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    return guarded(lambda: _ask_endpoint(args))


def _ask_endpoint(args: argparse.Namespace) -> int:
    from multiwatch.cli import status as status_commands
    from multiwatch.config import ConfigError

    try:
        endpoint = status_commands.resolve_endpoint(args.url, args.config, os.environ)
    except ConfigError as exc:
        print(f"multiwatch: error: {exc}", file=sys.stderr)
        # Docker reads a health check's exit status 2 as "reserved": unhealthy is 1.
        return 1 if args.command == "health" else EXIT_USAGE
    if args.command == "health":
        return status_commands.health_command(endpoint.url, live=args.live)
    return status_commands.status_command(endpoint, as_json=args.json)
