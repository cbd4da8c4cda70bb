"""fleet: N instances under one supervisor (`fleet`: 20, `fleet-200`: 200), each watching
its own empty directory: the time from `multiwatch run` until every child logged "watching"
and until a probe file written into each directory at the command was announced; then
10,000 files (`--quick`: 2,000) landing at once across them (one writer, round-robin),
files/s overall until a consumer has them all; then the supervisor's RSS and each child's
RSS and USS, and the CPU the whole fleet uses while idle afterwards.

More than 128 inotify instances need `fs.inotify.max_user_instances` above the kernel's
default: the scenario raises it (never lowers it) when it is short of the instances in
use plus N, says so, and restores the old value at the end (on an exception or Ctrl-C
too), unless someone else changed it meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

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
# Two idle heartbeats (and publisher services) of each child: a window of one would count
# each child's wakeups at its phase's mercy.
IDLE_SECONDS = 20.0
RSS_TARGET_MB = 45  # the 20-instance row's target before issue 17
WATCHING_TARGET = 15.0  # seconds from the command until all are watching (issue 17)
USS_TARGET_MIB = 8.0  # median child USS (issue 17)
SUPERVISOR_TARGET_MIB = 60.0
MAX_USER_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")


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


def _task_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of a process (/proc/PID/task/*/schedstat, ns resolution)."""
    out: dict[int, float] = {}
    for schedstat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError, ValueError):
            out[int(schedstat.parent.name)] = int(schedstat.read_text().split()[0]) / 1e9
    return out


def _idle_split(before: dict[int, dict[int, float]], after: dict[int, dict[int, float]],
                pids: list[int], seconds: float) -> str:
    """The median child's idle CPU per thread, in µs per second: its main thread (the
    pipeline loop, which sends the heartbeat) first, then the others, busiest first."""
    per_child = []
    for pid in pids:
        used = {tid: t - before.get(pid, {}).get(tid, 0.0) for tid, t in after.get(pid, {}).items()}
        main = used.pop(pid, 0.0)
        per_child.append((main + sum(used.values()), main, sorted(used.values(), reverse=True)))
    if not per_child:
        return "no children"
    per_child.sort(key=lambda c: c[0])
    total, main, others = per_child[len(per_child) // 2]
    scale = 1e6 / seconds
    return (f"median child {total * scale:.0f} us/s: main thread {main * scale:.0f}, others "
            + ", ".join(f"{t * scale:.0f}" for t in others))


def _wakeups(pid: int) -> int:
    """Voluntary context switches of all threads of a process (/proc/PID/task/*/status)."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        with contextlib.suppress(OSError):
            for line in status.read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


def idle_target(instances: int) -> float:
    """% of one core all children together may use while idle: 1 % for the 20-instance
    row (its target before issue 17), 2 % for a larger fleet (issue 17's, for 200)."""
    return 1.0 if instances <= INSTANCES else 2.0


def _inotify_in_use() -> int:
    """inotify instances held by processes of this user (open inotify descriptors; one
    shared by a fork counts twice, so this errs high, which only raises the limit more)."""
    uid = os.getuid()
    count = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if proc.stat().st_uid != uid:
                continue
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == "anon_inode:inotify":
                        count += 1
        except OSError:
            continue
    return count


@contextlib.contextmanager
def inotify_instances(needed: int) -> Iterator[str]:
    """Make room for `needed` more inotify instances of this user: raise
    fs.inotify.max_user_instances if it is short (never lower it), and put the old value
    back at the end if it is still ours.  Says what it does; yields it in a few words."""
    try:
        old = int(MAX_USER_INSTANCES.read_text())
    except (OSError, ValueError) as exc:
        say(f"  fs.inotify.max_user_instances unreadable ({exc}); left alone")
        yield "unreadable"
        return
    in_use = _inotify_in_use()
    want = in_use + needed + 16
    if want <= old:
        say(f"  fs.inotify.max_user_instances {old} leaves room ({in_use} in use by this "
            f"user, {needed} needed); left alone")
        yield f"{old}, left alone"
        return
    try:
        MAX_USER_INSTANCES.write_text(str(want))
    except OSError as exc:
        say(f"  fs.inotify.max_user_instances {old} is short ({in_use} in use, {needed} "
            f"needed) and could not be raised ({exc.strerror}); instances past it cannot use "
            "inotify")
        yield f"{old}, short, could not raise it"
        return
    say(f"  raised fs.inotify.max_user_instances from {old} to {want} for this scenario "
        f"({in_use} in use by this user, {needed} needed); it is restored at the end")
    try:
        yield f"raised from {old} to {want} for the run"
    finally:
        try:
            now = int(MAX_USER_INSTANCES.read_text())
            if now == want:
                MAX_USER_INSTANCES.write_text(str(old))
                say(f"  fs.inotify.max_user_instances restored to {old}")
            else:
                say(f"  fs.inotify.max_user_instances is {now}, changed by someone else "
                    f"meanwhile: left as it is (it was {old} before this scenario)")
        except (OSError, ValueError) as exc:
            say(f"  could not restore fs.inotify.max_user_instances to {old}: {exc}")


def _all_watching(watcher: Watcher, ids: set[str], timeout: float) -> float:
    """Seconds from the command to the last of `ids` logging "watching"."""
    seen: set[str] = set()

    def counts(line: dict[str, Any]) -> bool:
        if line.get("message") == "watching" and line.get("instance_id") in ids:
            seen.add(str(line["instance_id"]))
        return seen >= ids

    last = watcher.wait_log(counts, timeout=timeout, poll=0.1)
    wall = datetime.fromisoformat(str(last["timestamp"]).replace("Z", "+00:00")).timestamp()
    return wall - watcher.started_wall


def run(ctx: Ctx, instances: int = INSTANCES) -> None:
    total = 2_000 if ctx.quick else 10_000
    per = max(1, total // instances)
    total = per * instances
    base = ctx.scratch(f"fleet{instances}")
    dirs = [base / "data" / f"w{i:03d}" for i in range(instances)]
    for d in dirs:
        d.mkdir(parents=True)
    say(f"fleet: {instances} instances, then {per} files x 4 KiB each at once ({total} in all), "
        f"settle_seconds {SETTLE}, log INFO; {loadavg()}")
    with inotify_instances(instances) as limit_note, ctx.vhost("fleet") as url:
        queue = f"bench-fleet-{uuid.uuid4().hex[:6]}"
        consumer = Consumer(url, queue, base / "consumed.json", expect=total, linger=1.0,
                            deadline=300 + total / 50)
        roster = write_roster(base / "roster.yaml", state_dir=base / "state", url=url,
                              queue=queue, instances=[
                                  {"id": d.name, "directory": str(d), "settle_seconds": SETTLE}
                                  for d in dirs])
        watcher = Watcher(roster, base / "multiwatch.log")
        try:
            ready = probe_ready(consumer, dirs, timeout=300 + 2 * instances)
            watching = _all_watching(watcher, {d.name for d in dirs}, timeout=60)
            say(f"  all {instances} children logged 'watching' {watching:.1f}s after the "
                f"command; a probe written into each directory at the command was announced "
                f"for all within {ready:.1f}s")
            paths = [dirs[i % instances] / f"f{i:06d}.dat" for i in range(total)]
            started, written = write_small_files(paths)
            got = consumer.result(timeout=300 + total / 50)
            supervisor = psutil.Process(watcher.pid)
            children = watcher.children()
            helpers = watcher.helpers()
            first = got.first_by_path()
            wanted = {str(p) for p in paths}
            delivered = len(wanted & first.keys())
            last = max((first[p] for p in wanted & first.keys()), default=started)
            rate = delivered / (last - started)
            say(f"  {delivered}/{total} files in {last - started:.2f}s = {rate:.0f} files/s "
                f"overall (writer {written - started:.2f}s); duplicates {got.duplicates}, "
                f"missing {total - delivered}; {loadavg()}")
            time.sleep(2.0)  # let the last commits and log lines finish
            procs = [supervisor, *children, *helpers]
            before = {p.pid: cpu_seconds(p) for p in procs}
            tasks_before = {c.pid: _task_cpu(c.pid) for c in children}
            switches = {p.pid: _wakeups(p.pid) for p in children}
            threads = {p.pid: {t.id for t in p.threads()} for p in children}
            time.sleep(IDLE_SECONDS)
            used = {p.pid: cpu_seconds(p) - before[p.pid] for p in procs}
            split = _idle_split(tasks_before, {c.pid: _task_cpu(c.pid) for c in children},
                                [c.pid for c in children], IDLE_SECONDS)
            wakeups = statistics.median(
                [(_wakeups(c.pid) - switches[c.pid]) / IDLE_SECONDS
                 for c in children])
            thread_count = statistics.median([len(v) for v in threads.values()])
            rss = [c.memory_info().rss / MIB for c in children]
            uss = [c.memory_full_info().uss / MIB for c in children]
            sup_rss = supervisor.memory_info().rss / MIB
            helper_rss = sum(h.memory_info().rss for h in helpers) / MIB
            sup_cpu = 100 * used[supervisor.pid] / IDLE_SECONDS
            child_cpu = 100 * sum(used[c.pid] for c in children) / IDLE_SECONDS
            helper_cpu = 100 * sum(used[h.pid] for h in helpers) / IDLE_SECONDS
        finally:
            watcher.stop(timeout=60 + instances / 2)
            consumer.stop()
            delete_queue(url, queue)
    remove_tree(base)
    uss_median = statistics.median(uss)
    say(f"  supervisor RSS {sup_rss:.1f} MiB; {len(helpers)} other processes below it "
        f"(resource tracker, template) {helper_rss:.1f} MiB RSS; {len(children)} children: "
        f"RSS MiB min {min(rss):.1f} median {statistics.median(rss):.1f} max {max(rss):.1f}, "
        f"USS MiB min {min(uss):.1f} median {uss_median:.1f} max {max(uss):.1f} "
        f"(sum {sum(uss):.0f})")
    say(f"  idle over {IDLE_SECONDS:.0f}s: all {len(children)} children {child_cpu:.2f}% of one "
        f"core ({child_cpu / len(children):.3f}% each), supervisor {sup_cpu:.2f}%, others "
        f"{helper_cpu:.2f}%; a child has {thread_count:.0f} threads, which wake "
        f"{wakeups:.1f} times/s together (voluntary context switches, median child); {split}; "
        f"{loadavg()}")
    name = "fleet" if instances == INSTANCES else f"fleet-{instances}"
    ctx.report.add(name, f"{instances} instances: command -> all 'watching'", f"{watching:.1f}s",
                   ceiling=f"probes announced {ready:.1f}s", target=f"<= {WATCHING_TARGET:.0f}s",
                   ok=watching <= WATCHING_TARGET)
    ctx.report.add(name, "fs.inotify.max_user_instances", limit_note)
    ctx.report.add(name, f"{instances} x {per} files at once", f"{rate:.0f} files/s",
                   ratio=f"{delivered}/{total} delivered, {got.duplicates} dup.",
                   target="all delivered", ok=delivered == total)
    ctx.report.add(name, "child USS median (max)", f"{uss_median:.1f} MiB ({max(uss):.1f})",
                   ceiling=f"RSS median {statistics.median(rss):.1f} MiB, max {max(rss):.1f}",
                   target=f"<= {USS_TARGET_MIB:.0f} MiB", ok=uss_median <= USS_TARGET_MIB)
    if instances == INSTANCES:  # the row as it was before issue 17, kept comparable
        ctx.report.add(name, "child RSS max (median)",
                       f"{max(rss) * MIB / 1e6:.1f} MB ({statistics.median(rss) * MIB / 1e6:.1f})",
                       target=f"< {RSS_TARGET_MB} MB", ok=max(rss) * MIB / 1e6 < RSS_TARGET_MB)
    ctx.report.add(name, "supervisor RSS", f"{sup_rss:.1f} MiB",
                   ceiling=f"+ {helper_rss:.1f} MiB in {len(helpers)} helper processes",
                   target=f"<= {SUPERVISOR_TARGET_MIB:.0f} MiB",
                   ok=sup_rss <= SUPERVISOR_TARGET_MIB)
    ctx.report.add(name, f"idle CPU, all {len(children)} children",
                   f"{child_cpu:.2f}% of a core",
                   ceiling=f"supervisor {sup_cpu:.2f}%; {wakeups:.1f} wakeups/s per child",
                   target=f"< {idle_target(instances):.0f}%",
                   ok=child_cpu < idle_target(instances))
