"""Idle profile of a fleet: N idle instances against a real RabbitMQ, each thread's CPU and
wakeups over a long window, so the fixed cost of one idle child can be taken apart.

    .venv/bin/python bench/fleet_idle.py [--instances 20] [--seconds 60] [--strace 20]

Boots a private RabbitMQ node (or reuses MULTIWATCH_TEST_AMQP_URL, as bench/run.py does),
raises fs.inotify.max_user_instances for the run if it is short (as fleet-200 does), starts
`multiwatch run` over N empty directories, waits until every child logged
"watching", lets start-up work finish, then reads /proc/PID/task/*/schedstat (CPU in ns)
and voluntary context switches of every thread of every child before and after the
window.  Threads are named from a `py-spy dump` of one child (when py-spy is installed)
and matched to the others by their order of creation (thread ids grow).  Prints, per
thread of the median child: µs of CPU per second, wakeups per second, µs per wakeup; the
total for all children as % of one core; the supervisor's.  With `--strace S`, one child's
system calls are then counted (strace -c -f) for S seconds, outside the CPU window (strace
slows what it traces).  A figure printer, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

# (run as a script: the repo first on the path)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.fleet import inotify_instances
from bench.harness import Watcher, delete_queue, write_roster
from tests.support.rabbitmq import RabbitMQ

SETTLE_AFTER_WATCHING = 5.0  # start-up scans, first heartbeats, the connection's first frames


def threads(pid: int) -> dict[int, tuple[float, int]]:
    """Each thread of a process: (CPU seconds, voluntary context switches)."""
    out: dict[int, tuple[float, int]] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            cpu = int((task / "schedstat").read_text().split()[0]) / 1e9
            switches = 0
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    switches = int(line.split()[1])
            out[int(task.name)] = (cpu, switches)
    return out


def thread_names(pid: int) -> dict[int, str]:
    """Thread id → Python thread name, from `py-spy dump` (empty without py-spy)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return {}
    try:
        text = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True,
                              timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    names: dict[int, str] = {}
    for line in text.splitlines():
        # Thread 0x7F... (idle): "publisher-w000"  /  Thread 12345 (idle): "MainThread"
        if line.startswith("Thread ") and '"' in line:
            head, name = line.split('"', 2)[:2]
            words = head.split()
            tid = words[1] if len(words) > 1 else ""
            with contextlib.suppress(ValueError):
                names[int(tid, 0)] = name
    return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0, help="idle CPU window")
    parser.add_argument("--strace", type=float, default=0.0,
                        help="then count one child's system calls for this many seconds")
    args = parser.parse_args()
    broker = RabbitMQ.start_or_reuse()
    try:
        with (tempfile.TemporaryDirectory(prefix="mw-fleet-idle-", dir="/var/tmp") as tmp,
              inotify_instances(args.instances)):
            return profile(broker, Path(tmp), args)
    finally:
        broker.stop()


def profile(broker: RabbitMQ, root: Path, args: argparse.Namespace) -> int:
    ids = [f"w{i:03d}" for i in range(args.instances)]
    for iid in ids:
        (root / "data" / iid).mkdir(parents=True)
    queue = f"bench-idle-{root.name}"
    roster = write_roster(root / "roster.yaml", state_dir=root / "state", url=broker.amqp_url,
                          queue=queue, instances=[
                              {"id": i, "directory": str(root / "data" / i)} for i in ids])
    watcher = Watcher(roster, root / "multiwatch.log")
    try:
        seen: set[str] = set()

        def all_watching(line: dict[str, object]) -> bool:
            if line.get("message") == "watching":
                seen.add(str(line.get("instance_id")))
            return len(seen) == len(ids)

        watcher.wait_log(all_watching, timeout=120 + args.instances, poll=0.1)
        time.sleep(SETTLE_AFTER_WATCHING)
        children = sorted(watcher.children(), key=lambda c: c.pid)
        names = thread_names(children[0].pid)
        sup = psutil.Process(watcher.pid)
        sup_before = sum(threads(sup.pid).get(t, (0.0, 0))[0] for t in threads(sup.pid))
        before = {c.pid: threads(c.pid) for c in children}
        time.sleep(args.seconds)
        after = {c.pid: threads(c.pid) for c in children}
        sup_after = sum(v[0] for v in threads(sup.pid).values())
        report(children, before, after, names, args.seconds)
        print(f"supervisor: {100 * (sup_after - sup_before) / args.seconds:.2f} % of one core")
        if args.strace > 0:
            pid = children[len(children) // 2].pid
            out = _strace(pid, args.strace)
            print(f"system calls of child {pid} over {args.strace:g}s (strace -c -f):")
            print(out)
    finally:
        watcher.stop(timeout=60 + args.instances / 2)
        delete_queue(broker.amqp_url, queue)
    return 0


def _strace(pid: int, seconds: float) -> str:
    """strace -c -f of a running process for `seconds`, stopped by SIGINT (its summary)."""
    proc = subprocess.Popen(["strace", "-c", "-f", "-p", str(pid)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    time.sleep(seconds)
    proc.send_signal(2)
    out, _ = proc.communicate(timeout=30)
    return out


def report(children: list[psutil.Process], before: dict[int, dict[int, tuple[float, int]]],
           after: dict[int, dict[int, tuple[float, int]]], names: dict[int, str],
           seconds: float) -> None:
    """Per-thread figures of the median child (threads ranked by creation order)."""
    totals = []
    ranked_names: list[str] = []
    if children and names:
        first = sorted(after[children[0].pid])
        ranked_names = [names.get(tid, "?") for tid in first]
    per_child: list[tuple[float, list[tuple[float, int]]]] = []
    for child in children:
        rows = []
        for tid in sorted(after[child.pid]):
            cpu, sw = after[child.pid][tid]
            cpu0, sw0 = before[child.pid].get(tid, (0.0, 0))
            rows.append((cpu - cpu0, sw - sw0))
        total = sum(r[0] for r in rows)
        totals.append(total)
        per_child.append((total, rows))
    per_child.sort(key=lambda c: c[0])
    total, rows = per_child[len(per_child) // 2]
    scale = 1e6 / seconds
    print(f"{len(children)} idle children over {seconds:g}s: all together "
          f"{100 * sum(totals) / seconds:.2f} % of one core; per child µs/s: min "
          f"{min(totals) * scale:.0f}, median {statistics.median(totals) * scale:.0f}, max "
          f"{max(totals) * scale:.0f}")
    print(f"median child: {total * scale:.0f} µs/s")
    for i, (cpu, sw) in enumerate(rows):
        name = ranked_names[i] if i < len(ranked_names) else f"thread {i}"
        per_wake = f"{1e6 * cpu / sw:.0f} µs/wakeup" if sw else "-"
        print(f"  {name:<28} {cpu * scale:7.1f} µs/s  {sw / seconds:5.2f} wakeups/s  {per_wake}")
    # The same split summed over all children, as a check on the median's.
    sums: dict[int, list[float]] = {}
    for _, rows in per_child:
        for i, (cpu, sw) in enumerate(rows):
            acc = sums.setdefault(i, [0.0, 0.0])
            acc[0] += cpu
            acc[1] += sw
    n = len(per_child)
    print("mean over children: " + ", ".join(
        f"{(ranked_names[i] if i < len(ranked_names) else i)} {acc[0] * scale / n:.0f} µs/s "
        f"({acc[1] / seconds / n:.2f}/s)" for i, acc in sorted(sums.items())))


if __name__ == "__main__":
    sys.exit(main())
