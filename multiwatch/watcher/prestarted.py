"""Entry point of a watcher process started before its instance is known.

`multiwatch run` needs ~0.1 s (interpreter, configuration code, the roster) before it can
spawn the first watcher, and a watcher needs ~0.15-0.2 s (interpreter, kombu, watchdog,
sqlite) before it can watch.  So the supervisor spawns one watcher process as soon as it
knows the command is `run` (supervisor/prestart.py): it imports while the roster is read,
then waits for the spec of the instance it is given.  This module is what the supervisor
imports to spawn it, so it imports nothing heavy itself.
"""

from __future__ import annotations

import signal
from multiprocessing.connection import Connection


def run_prestarted(spec_reader: Connection, to_parent: Connection) -> None:
    """Import the watcher, then run the instance whose spec arrives; EOF instead of a spec
    (no instance for it, or the supervisor is gone) ends the process quietly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group: the parent leads
    from multiwatch.watcher.spec import import_watcher

    child_main = import_watcher()
    try:
        spec = spec_reader.recv()
    except (EOFError, OSError):
        return
    finally:
        spec_reader.close()
    child_main(spec, to_parent)
