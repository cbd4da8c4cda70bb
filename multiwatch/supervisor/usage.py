"""The last resource sample of the supervisor and each of its children (supervisor loop).

psutil is imported at the first sample (supervisor/resources.py), after the first watcher
has started, so it adds nothing to the time before the fleet watches.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from multiwatch.status_view import Resources
from multiwatch.supervisor.lifecycle import Child

if TYPE_CHECKING:
    from multiwatch.supervisor.resources import ResourceMeter

log = logging.getLogger("multiwatch.supervisor.fleet")  # (the logger these lines always had)


class FleetUsage:
    """pid → its last sample; a process that could not be measured has none."""

    def __init__(self, meter: ResourceMeter | None = None) -> None:
        self._meter = meter  # None: psutil's, made at the first sample
        self._by_pid: dict[int, Resources] = {}

    def of(self, pid: int | None) -> Resources | None:
        return self._by_pid.get(pid) if pid else None

    def sample(self, children: Iterable[Child], *, count_files: bool) -> None:
        """Measure the supervisor and every child with a process now (raises if psutil
        fails as a whole: the caller logs it and keeps the previous figures)."""
        pids = {c.pid for c in children if c.pid is not None} | {os.getpid()}
        if self._meter is None:
            from multiwatch.supervisor.resources import ResourceMeter

            self._meter = ResourceMeter()
        self._meter.retain(pids)
        samples = {pid: self._meter.sample(pid, count_files=count_files) for pid in pids}
        self._by_pid = {pid: usage.as_dict() for pid, usage in samples.items()
                        if usage is not None}

    def report(self, children: Iterable[Child]) -> None:
        """One INFO line for the supervisor and one per measured child."""
        own = self._by_pid.get(os.getpid())
        if own is not None:
            log.info("supervisor resources", extra=own)
        for child in children:
            usage = self.of(child.pid)
            if usage is not None:
                log.info("child resources", extra={
                    "instance_id": child.instance_id, "pid": child.pid, "state": str(child.state),
                    **usage})
