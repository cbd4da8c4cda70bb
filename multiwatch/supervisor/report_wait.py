"""Waiting for the children's reports (supervisor loop).

One poll set kept across turns holds every child's report pipe and the signal wake-up fd;
it is changed only when the set of pipes changes (a child started, or its pipe closed).
`multiprocessing.connection.wait` builds and fills a new selector on every call, which with
a large fleet was the biggest part of an idle supervisor's turn (bench/README.md).
"""

from __future__ import annotations

import math
import select
from collections.abc import Sequence
from multiprocessing.connection import Connection

# Anything poll reports for a pipe makes it worth reading: data, EOF (POLLHUP), an error.
_READY = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR | select.POLLNVAL


class ReportWait:
    """Waits until a report pipe or the wake-up fd is readable, or the timeout passes.

    Invariant: after `_sync(readers)`, the poll set holds exactly the wake-up fd and the
    descriptors of `readers` (a closed pipe is dropped before a new one can reuse its fd,
    because the caller passes the current readers every turn)."""

    def __init__(self, wake_fd: int) -> None:
        self._wake_fd = wake_fd
        self._poll = select.poll()
        self._poll.register(wake_fd, select.POLLIN)
        self._readers: list[Connection] = []
        self._by_fd: dict[int, Connection] = {}

    def wait(self, readers: Sequence[Connection],
             timeout: float) -> tuple[list[Connection], bool]:
        """(the readers with something to read, whether the wake-up fd fired)."""
        if readers != self._readers:  # (identity comparison: Connection has no __eq__)
            self._sync(readers)
        events = self._poll.poll(max(0, math.ceil(timeout * 1000)))
        ready: list[Connection] = []
        woken = False
        for fd, mask in events:
            if not mask & _READY:
                continue
            if fd == self._wake_fd:
                woken = True
            elif (reader := self._by_fd.get(fd)) is not None:
                ready.append(reader)
        return ready, woken

    def _sync(self, readers: Sequence[Connection]) -> None:
        wanted = {}
        for reader in readers:
            if not reader.closed:
                wanted[reader.fileno()] = reader
        for fd in self._by_fd.keys() - wanted.keys():
            self._poll.unregister(fd)
        for fd in wanted.keys() - self._by_fd.keys():
            self._poll.register(fd, select.POLLIN)
        self._by_fd = wanted
        self._readers = list(readers)
