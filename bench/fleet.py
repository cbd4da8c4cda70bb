"""fleet: 20 instances under one supervisor, 500 files each landing at once (one writer,
round-robin over the instances); files/s overall until a consumer has them all, then the
supervisor's and each child's RSS, and the CPU the whole fleet uses while idle afterwards.
"""

from __future__ import annotations

import contextlib
import statistics
import time
import uuid
from pathlib import Path

import psutil

from bench.harness import (
    MIB,
    Consumer,
    Ctx,
    Watcher,
    delete_queue,
    loadavg,
    probe_ready,
    remove_tree,
    say,
    write_roster,
    write_small_files,
)

INSTANCES = 20
SETTLE = 0.2
IDLE_SECONDS = 10.0
RSS_TARGET_MB = 45


def cpu_seconds(process: psutil.Process) -> float:
    """CPU time of all threads of a process in nanosecond resolution (/proc/PID/task/*/
    schedstat); psutil's cpu_times() counts 10 ms ticks, which over a 10 s idle window is
    as large as what is measured (±0.1 % of a core per process)."""
    total = 0
    try:
        for schedstat in Path(f"/proc/{process.pid}/task").glob("*/schedstat"):
            with contextlib.suppress(OSError):
                total += int(schedstat.read_text().split()[0])
    except OSError:
        total = 0
    return total / 1e9 if total else sum(process.cpu_times()[:2])


def _wakeups(pid: int) -> int:
    """Voluntary context switches of all threads of a process (/proc/PID/task/*/status)."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        with contextlib.suppress(OSError):
            for line in status.read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


def run(ctx: Ctx) -> None:
    per = 100 if ctx.quick else 500
    total = INSTANCES * per
    base = ctx.scratch("fleet")
    dirs = [base / "data" / f"w{i:02d}" for i in range(INSTANCES)]
    for d in dirs:
        d.mkdir(parents=True)
    say(f"fleet: {INSTANCES} instances x {per} files x 4 KiB at once, settle_seconds {SETTLE}, "
        f"log INFO; {loadavg()}")
    with ctx.vhost("fleet") as url:
        queue = f"bench-fleet-{uuid.uuid4().hex[:6]}"
        consumer = Consumer(url, queue, base / "consumed.json", expect=total, linger=1.0,
                            deadline=120 + total / 50)
        roster = write_roster(base / "roster.yaml", state_dir=base / "state", url=url,
                              queue=queue, instances=[
                                  {"id": d.name, "directory": str(d), "settle_seconds": SETTLE}
                                  for d in dirs])
        watcher = Watcher(roster, base / "multiwatch.log")
        try:
            ready = probe_ready(consumer, dirs, timeout=180)
            up = time.monotonic() - watcher.started
            say(f"  all {INSTANCES} watching and publishing {up:.1f}s "
                f"after start (probes announced in {ready:.1f}s)")
            paths = [dirs[i % INSTANCES] / f"f{i:06d}.dat" for i in range(total)]
            started, written = write_small_files(paths)
            got = consumer.result(timeout=120 + total / 50)
            supervisor = psutil.Process(watcher.pid)
            children = watcher.children()
            first = got.first_by_path()
            wanted = {str(p) for p in paths}
            delivered = len(wanted & first.keys())
            last = max((first[p] for p in wanted & first.keys()), default=started)
            rate = delivered / (last - started)
            say(f"  {delivered}/{total} files in {last - started:.2f}s = {rate:.0f} files/s "
                f"overall (writer {written - started:.2f}s); duplicates {got.duplicates}, "
                f"missing {total - delivered}; {loadavg()}")
            time.sleep(2.0)  # let the last commits and log lines finish
            procs = [supervisor, *children]
            before = {p.pid: cpu_seconds(p) for p in procs}
            switches = {p.pid: _wakeups(p.pid) for p in children}
            threads = {p.pid: {t.id for t in p.threads()} for p in children}
            time.sleep(IDLE_SECONDS)
            used = {p.pid: cpu_seconds(p) - before[p.pid] for p in procs}
            wakeups = statistics.median(
                [(_wakeups(c.pid) - switches[c.pid]) / IDLE_SECONDS
                 for c in children])
            thread_count = statistics.median([len(v) for v in threads.values()])
            rss = [c.memory_info().rss / MIB for c in children]
            uss = [c.memory_full_info().uss / MIB for c in children]
            sup_rss = supervisor.memory_info().rss / MIB
            sup_cpu = 100 * used[supervisor.pid] / IDLE_SECONDS
            child_cpu = 100 * sum(used[c.pid] for c in children) / IDLE_SECONDS
        finally:
            watcher.stop()
            consumer.stop()
            delete_queue(url, queue)
    remove_tree(base)
    say(f"  supervisor RSS {sup_rss:.1f} MiB; child RSS MiB min {min(rss):.1f} median "
        f"{statistics.median(rss):.1f} max {max(rss):.1f} "
        f"(USS median {statistics.median(uss):.1f})")
    say(f"  idle over {IDLE_SECONDS:.0f}s: all {len(children)} children {child_cpu:.2f}% of one "
        f"core ({child_cpu / len(children):.3f}% each), supervisor {sup_cpu:.2f}%; a child has "
        f"{thread_count:.0f} threads, which wake {wakeups:.1f} times/s together (voluntary "
        f"context switches, median child); {loadavg()}")
    ctx.report.add("fleet", f"{INSTANCES} x {per} files at once", f"{rate:.0f} files/s",
                   ratio=f"{delivered}/{total} delivered, {got.duplicates} dup.",
                   target="all delivered", ok=delivered == total)
    ctx.report.add("fleet", "child RSS max (median)",
                   f"{max(rss) * MIB / 1e6:.1f} MB ({statistics.median(rss) * MIB / 1e6:.1f})",
                   ceiling=f"USS median {statistics.median(uss):.1f} MiB",
                   target=f"< {RSS_TARGET_MB} MB", ok=max(rss) * MIB / 1e6 < RSS_TARGET_MB)
    ctx.report.add("fleet", "supervisor RSS", f"{sup_rss * MIB / 1e6:.1f} MB")
    ctx.report.add("fleet", f"idle CPU, all {len(children)} children",
                   f"{child_cpu:.2f}% of a core",
                   ceiling=f"supervisor {sup_cpu:.2f}%; {wakeups:.1f} wakeups/s per child",
                   target="< 1%", ok=child_cpu < 1.0)
