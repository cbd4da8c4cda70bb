"""One watcher process spawned before the roster is read (see watcher/prestarted.py).

The first instance's Child takes it over (`hand_over`): the spec goes down a pipe of its
own, and the process then reports on its pipe like any spawned child.  If the roster is
invalid or names no instance, it is discarded.
"""

from __future__ import annotations

from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext, SpawnProcess
from typing import TYPE_CHECKING

from multiwatch.watcher.prestarted import run_prestarted

if TYPE_CHECKING:
    from multiwatch.watcher.spec import ChildSpec

DISCARD_TIMEOUT_SECONDS = 5.0


class PrestartedWatcher:
    """A spawned watcher process still waiting for its instance."""

    def __init__(self, context: SpawnContext) -> None:
        spec_reader, self._spec_writer = context.Pipe(duplex=False)
        self._reader, writer = context.Pipe(duplex=False)
        self._process: SpawnProcess | None = context.Process(
            target=run_prestarted, args=(spec_reader, writer), name="multiwatch-prestarted")
        self._process.start()
        spec_reader.close()
        writer.close()  # the process holds the only writer: EOF here means it is gone

    def hand_over(self, spec: ChildSpec) -> tuple[SpawnProcess, Connection] | None:
        """Give the process its instance; None if it was already taken or discarded."""
        process, self._process = self._process, None
        if process is None:
            return None
        try:
            self._spec_writer.send(spec)
        except OSError:  # it died before it was needed: the caller spawns afresh
            self._discard(process)
            return None
        finally:
            self._spec_writer.close()
        return process, self._reader

    def discard(self) -> None:
        """Stop the process if no instance took it (a no-op after hand_over)."""
        process, self._process = self._process, None
        if process is not None:
            self._spec_writer.close()
            self._discard(process)

    def _discard(self, process: SpawnProcess) -> None:
        self._reader.close()
        process.terminate()  # it may still be importing: SIGTERM ends it at once
        process.join(DISCARD_TIMEOUT_SECONDS)
        if process.is_alive():
            process.kill()
            process.join(DISCARD_TIMEOUT_SECONDS)  # bounded even for a process stuck in the kernel
