"""`multiwatch completion bash|zsh` and `multiwatch man`: generated from the parser alone, no
roster (cli/completion.py)."""

from __future__ import annotations

import argparse
import functools

from multiwatch.cli.commands.common import Subcommands
from multiwatch.cli.completion import SHELLS, run


def register(commands: Subcommands, program: argparse.ArgumentParser) -> None:
    """`program`: the whole parser, which the scripts and the page are generated from."""
    completion = commands.add_parser(
        "completion", help="print a bash or zsh completion script",
        description="Print the shell completion script for multiwatch (commands, options, "
        "and file names where a path is expected). bash: multiwatch completion bash > "
        "~/.local/share/bash-completion/completions/multiwatch; zsh: multiwatch completion "
        "zsh > ~/.zfunc/_multiwatch with fpath+=(~/.zfunc) before compinit in ~/.zshrc.",
    )
    completion.add_argument("shell", choices=SHELLS, help="the shell to complete for")
    man = commands.add_parser(
        "man", help="print the manual page (roff)",
        description="Print multiwatch's manual page in roff, generated from the same "
        "definitions as --help. Read it with: multiwatch man | man -l -; install it with: "
        "multiwatch man > ~/.local/share/man/man1/multiwatch.1",
    )
    for command in (completion, man):
        command.set_defaults(handler=functools.partial(run, program))
