"""What the command groups share: the --config help, exit statuses, and the handler wrappers
that load the roster and turn a ConfigError into one line on stderr and exit status 2.

Imports nothing of multiwatch at module level (see the multiwatch.cli docstring).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multiwatch.config import Roster

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # a shell's status for SIGINT (Ctrl-C)

CONFIG_HELP = (
    "roster file (YAML). Default: $MULTIWATCH_CONFIG; if that is unset too, one instance is "
    "built from the environment (DATA_DIR, INSTANCE_ID, RABBITMQ_HOST, ...)."
)

Handler = Callable[[argparse.Namespace], int]
Subcommands = argparse._SubParsersAction  # type: ignore[type-arg]
RosterCommand = Callable[["Roster", argparse.Namespace], int]


def guarded(work: Callable[[], int]) -> int:
    """Run a command: a ConfigError (a user's mistake) is one line on stderr and exit 2, no
    traceback; Ctrl-C exits 130."""
    from multiwatch.config import ConfigError

    try:
        return work()
    except ConfigError as exc:
        print(f"multiwatch: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def load(args: argparse.Namespace) -> Roster:
    """The roster of -c/--config (else $MULTIWATCH_CONFIG, else the environment's)."""
    from multiwatch.config import load_roster

    return load_roster(args.config, os.environ)


def on_roster(command: RosterCommand) -> Handler:
    """The handler of a command that works on the roster: load it, then run the command."""
    return lambda args: guarded(lambda: command(load(args), args))


def only(roster: Roster, ids: list[str] | None) -> Roster:
    """The roster narrowed to `--only` ids; an unknown id is a ConfigError naming the
    instances there are."""
    import dataclasses
    import difflib

    from multiwatch.config import ConfigError

    if not ids:
        return roster
    known = {instance.id for instance in roster.instances}
    unknown = [i for i in ids if i not in known]
    if unknown:
        guesses = [f"{i}: did you mean {close[0]}?" for i in unknown
                   if (close := difflib.get_close_matches(i, known, n=1))]
        raise ConfigError(
            f"--only {', '.join(unknown)}: no such instance in {roster.source} "
            f"(instances: {', '.join(sorted(known))})"
            + "".join(f"; {guess}" for guess in guesses)
        )
    chosen = tuple(i for i in roster.instances if i.id in ids)
    return dataclasses.replace(roster, instances=chosen)


def check_state(roster: Roster, *, create: bool, instances: bool = True) -> None:
    """The state directory is ours alone (check: look only; run: create and tighten)."""
    from multiwatch import state_dir
    from multiwatch.cli.preflight import unwritable
    from multiwatch.config import ConfigError

    ids = [i.id for i in roster.instances] if instances else []
    if instances and (why := unwritable(roster.state_dir, ids)):  # run writes there at once
        raise ConfigError(f"cannot use the state directory {roster.state_dir}: {why}")
    try:
        state_dir.prepare(roster.state_dir, ids,
                          embedded=roster.broker.embedded,
                          policy=state_dir.CREATE if create else state_dir.VERIFY)
    except state_dir.UnsafeStateError as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(f"cannot use the state directory {roster.state_dir}: "
                          f"{exc.strerror or exc}") from None
