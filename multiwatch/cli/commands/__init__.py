"""The command groups, one module each: `register(commands)` adds the group's sub-command(s)
to the parser, each with `set_defaults(handler=...)`, the function `main` calls with the
parsed arguments.  The work itself is in the modules of multiwatch/cli/ (see its docstring
for what these modules may import).
"""

from __future__ import annotations

from multiwatch.cli.commands import (
    check,
    completion,
    control,
    deletions,
    explain,
    export,
    probe,
    resync,
    run,
    state,
    tail,
)

# In the order `multiwatch --help` lists them; completion's (completion, man) come last.
GROUPS = (run, check, tail, state, probe, control, export, resync, explain, deletions)

__all__ = ["GROUPS", "completion"]
