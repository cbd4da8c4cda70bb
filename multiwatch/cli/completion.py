"""`multiwatch completion bash|zsh` and `multiwatch man`: generated from the argparse parser.

Both are written by well-kept libraries from the very parser `main` uses, so every command
and option (including ones added later) is completed and documented without a second copy:
shtab writes the shell completion scripts, argparse-manpage the roff manual page.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from multiwatch import __version__

SHELLS = ("bash", "zsh")
# Arguments whose value is a file or a directory, by metavar: the shell offers paths there.
_FILE_METAVARS = {"PATH", "FILE"}
_DIRECTORY_METAVARS = {"DIR"}
_MISSING = ("multiwatch: error: {what} needs the Python package {package}, which is not "
            "installed: {python} -m pip install {package}")


Command = tuple[tuple[str, ...], argparse.ArgumentParser]


def parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[Command]:
    """(command words, parser) for the program and every command and sub-command in it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from parsers(child, (*path, name))


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for `shell`: commands, options, choices, and paths where a
    roster file, an output file or a directory is expected."""
    import shtab

    for _, command in parsers(parser):
        for action in command._actions:
            if action.metavar in _FILE_METAVARS:
                action.complete = shtab.FILE  # type: ignore[attr-defined]
            elif action.metavar in _DIRECTORY_METAVARS:
                action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
    return str(shtab.complete(parser, shell=shell))


def man_page(parser: argparse.ArgumentParser) -> str:
    """The manual page in roff (man(7)): every command with its usage, text and options."""
    from argparse_manpage.manpage import Manpage

    page = Manpage(parser)
    page.source = f"multiwatch {__version__}"
    page.manual = "User Commands"
    page.description = ("watch many directories and announce every fully written file on "
                        "RabbitMQ with its SHA-256 and XXH128 hashes")
    return str(page).rstrip("\n") + "\n"


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Print the completion script or the manual page on stdout."""
    try:
        text = (man_page(parser) if args.command == "man"
                else completion_script(parser, args.shell))
    except ModuleNotFoundError as exc:  # an install without the dependency (pip --no-deps)
        what = "multiwatch man" if args.command == "man" else "multiwatch completion"
        package = "argparse-manpage" if args.command == "man" else "shtab"
        print(_MISSING.format(what=what, package=package, python=sys.executable)
              + f" ({exc})", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0
