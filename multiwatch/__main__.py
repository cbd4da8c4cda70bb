"""`python -m multiwatch` is the same as the `multiwatch` command."""

import sys

# Spawned children re-import this module (as __mp_main__): they must neither re-run main
# nor pay for importing the command line, so it is imported only when run as a program.
if __name__ == "__main__":
    from multiwatch.cli import main

    sys.exit(main())
