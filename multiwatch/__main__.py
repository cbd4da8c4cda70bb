"""`python -m multiwatch` is the same as the `multiwatch` command."""

import sys

# Run as a program only.  A spawned watcher child never re-imports this module: spawn skips
# a `<package>.__main__` (and `multiwatch run` presents the console script as this module,
# see multiwatch/cli/commands/run.py _spawn_as_if_run_with_dash_m), so the child imports no
# command line.
if __name__ == "__main__":
    from multiwatch.cli import main

    sys.exit(main())
