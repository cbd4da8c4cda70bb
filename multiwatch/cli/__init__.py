"""The `multiwatch` command: run | check | tail | state | status | health | reload | stop |
export | resync | explain | deletions | completion | man.

`main(argv)` parses the arguments and calls the handler the chosen command's parser set
(`set_defaults(handler=...)`, in commands/<group>.py); it returns the exit status, so tests
call it directly.  User mistakes print one paragraph on stderr and exit 2; no traceback.

Layout: commands/ holds one module per command group (its options, help texts and
handler); the modules here do the work (control.py signals a supervisor, status.py asks its
endpoint, export.py writes supervisord or systemd files, ...).

The lazy-import rule.  `multiwatch run` starts the template process its watchers are forked
from before it imports any configuration code, so the template's imports overlap the
supervisor reading the roster (supervisor/template.py, commands/run.py); and the watcher
child itself never imports this
package or PyYAML (watcher/spec.py `import_watcher`; tests/supervisor/test_imports.py checks
both).  So everything `main` imports before a handler runs - this module, commands/ and
cli/completion.py - imports only the standard library, `multiwatch.__version__` and each other
at module level: multiwatch.config, the supervisor, the watcher, kombu and the work modules here are
imported inside the handlers, when the command needs them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Generator, Sequence

from multiwatch import __version__
from multiwatch.cli.commands import GROUPS, completion
from multiwatch.cli.commands.common import EXIT_USAGE

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_USAGE", "main"]

EXIT_BROKEN_PIPE = 128 + 13  # SIGPIPE's: see main

_DESCRIPTION = """\
Watch many directories from one process and announce every fully written file on
RabbitMQ (or an embedded spool) with its SHA-256 and XXH128 hashes.
"""


class _CommandListFormatter(argparse.RawDescriptionHelpFormatter):
    """Lists the commands as options are listed: one line per command at the options'
    indent, without argparse's COMMAND placeholder line above them (whose deeper indent
    it also leaves out of the column width, wrapping "completion")."""

    def _iter_indented_subactions(
            self, action: argparse.Action) -> Generator[argparse.Action, None, None]:
        yield from getattr(action, "_get_subactions", list)()

    def _format_action(self, action: argparse.Action) -> str:
        if isinstance(action, argparse._SubParsersAction):
            return "".join(self._format_action(command)
                           for command in self._iter_indented_subactions(action))
        return super()._format_action(action)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="multiwatch", description=_DESCRIPTION,
        formatter_class=_CommandListFormatter,
    )
    parser.add_argument("--version", action="version", version=f"multiwatch {__version__}")
    # One list of commands, argparse's own ("commands:"): each add_parser's help= is its line.
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for group in GROUPS:
        group.register(commands)
    completion.register(commands, parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a reader that stops early (`| head -1`) ends it quietly.

    When stdout's reader goes away, the rest of the output has nowhere to go: stdout is
    pointed at /dev/null (so flushing at exit cannot fail again, the Python docs'
    recipe) and the status is 141, what a shell reports for a program killed by SIGPIPE
    (`seq 1000000 | head -1` under `set -o pipefail`), so scripts see multiwatch like any
    other Unix tool.  Whatever was running unwinds first (tail closes its connection)."""
    try:
        status = _main(argv)
        sys.stdout.flush()  # inside the try: buffered output may meet the closed pipe here
        return status
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `multiwatch`: the help, as a usage error
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    status: int = args.handler(args)
    return status
