"""`python -m multiwatch` is the same as the `multiwatch` command."""

import sys

from multiwatch.cli import main

if __name__ == "__main__":  # spawned children re-import this module; they must not re-run main
    sys.exit(main())
