"""latency: files written one at a time, 20 ms apart, each in one open/write/close; for each
file the time from the writer's close() to the consumer receiving its message (both on
CLOCK_MONOTONIC, same machine).  One figure set per mode; a mode is a set of instance
options and its targets, so the close-aware mode is one entry in MODES: it runs as soon
as `close_grace_seconds` is an instance option (until then it is reported as skipped).
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

from bench.harness import (
    KIB,
    Consumer,
    Ctx,
    Watcher,
    delete_queue,
    loadavg,
    ms,
    percentile,
    probe_ready,
    remove_tree,
    say,
    write_roster,
)
from multiwatch.config import InstanceConfig

INTERVAL = 0.020
FILE_SIZE = 4 * KIB


@dataclass(frozen=True)
class Mode:
    name: str
    options: dict[str, Any]  # instance options in the roster
    p50_target: float  # seconds
    p99_target: float

    @property
    def missing_options(self) -> list[str]:
        known = {f.name for f in dataclasses.fields(InstanceConfig)}
        return [key for key in self.options if key not in known]


MODES = {
    "default": Mode("default", {"settle_seconds": 0.2}, 0.2 + 0.030, 0.2 + 0.100),
    "close-aware": Mode("close-aware", {"settle_seconds": 1.0, "close_grace_seconds": 0.02},
                        0.050, 0.150),
}


def measure(ctx: Ctx, url: str, mode: Mode, files: int) -> list[float] | None:
    base = ctx.scratch(f"latency-{mode.name}")
    tree = base / "tree"
    tree.mkdir()
    queue = f"bench-latency-{uuid.uuid4().hex[:6]}"
    consumer = Consumer(url, queue, base / "consumed.json", expect=files, linger=0.5,
                        deadline=60 + files * INTERVAL * 3)
    roster = write_roster(base / "roster.yaml", state_dir=base / "state", url=url, queue=queue,
                          instances=[{"id": "bench-latency", "directory": str(tree),
                                      **mode.options}])
    watcher = Watcher(roster, base / "multiwatch.log")
    closed: dict[str, float] = {}
    payload = bytearray(os.urandom(FILE_SIZE))
    try:
        probe_ready(consumer, [tree])
        time.sleep(0.5)  # let the probe's own work finish
        started = time.monotonic()
        for index in range(files):
            slot = started + index * INTERVAL
            time.sleep(max(0.0, slot - time.monotonic()))
            path = tree / f"l{index:05d}.dat"
            payload[:8] = index.to_bytes(8, "little")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, payload)
            finally:
                os.close(fd)
            closed[str(path)] = time.monotonic()
        got = consumer.result(timeout=60 + files * INTERVAL * 3)
    finally:
        watcher.stop()
        consumer.stop()
        delete_queue(url, queue)
    first = got.first_by_path()
    latencies = [first[p] - t for p, t in closed.items() if p in first]
    missing = files - len(latencies)
    remove_tree(base)
    if missing or got.duplicates:
        say(f"  {mode.name}: {missing} files not announced, {got.duplicates} duplicates")
    return latencies


def run(ctx: Ctx, modes: list[str] | None = None) -> None:
    files = 50 if ctx.quick else 200
    say(f"latency: {files} files x {FILE_SIZE // KIB} KiB, one every {ms(INTERVAL)}, "
        f"close() -> message received; {loadavg()}")
    with ctx.vhost("latency") as url:
        for name in modes or list(MODES):
            mode = MODES[name]
            if mode.missing_options:
                say(f"  {name}: skipped ({', '.join(mode.missing_options)}: not an instance "
                    "option yet)")
                ctx.report.add("latency", f"{name} mode", "not available yet",
                               target=f"p50 <= {ms(mode.p50_target)}, p99 <= {ms(mode.p99_target)}")
                continue
            latencies = measure(ctx, url, mode, files)
            if not latencies:
                say(f"  {name}: nothing announced")
                continue
            p50, p90, p99 = (percentile(latencies, p) for p in (50, 90, 99))
            worst = max(latencies)
            settle = mode.options.get("settle_seconds", 1.0)
            say(f"  {name} ({', '.join(f'{k} {v}' for k, v in mode.options.items())}): "
                f"p50 {ms(p50)}, p90 {ms(p90)}, p99 {ms(p99)}, max {ms(worst)}; min "
                f"{ms(min(latencies))} (p50 - settle = {ms(p50 - settle)}); {loadavg()}")
            opts = ", ".join(f"{k} {v}" for k, v in mode.options.items())
            ctx.report.add("latency", f"{name} p50 ({opts})", ms(p50),
                           ceiling=f"settle {ms(settle)}", ratio=f"+{ms(p50 - settle)}",
                           target=f"<= {ms(mode.p50_target)}", ok=p50 <= mode.p50_target)
            ctx.report.add("latency", f"{name} p99 (p90 {ms(p90)}, max {ms(worst)})", ms(p99),
                           ceiling=f"settle {ms(settle)}", ratio=f"+{ms(p99 - settle)}",
                           target=f"<= {ms(mode.p99_target)}", ok=p99 <= mode.p99_target)
