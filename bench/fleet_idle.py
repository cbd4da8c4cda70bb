"""Fleet footprint: start N idle instances (embedded broker) and print RSS and idle CPU.

    .venv/bin/python bench/fleet_idle.py [--instances 50] [--seconds 10]

Prints the supervisor's RSS, each child's RSS (min/median/max) and USS (memory not shared
with other processes), and the CPU all children and the supervisor use while idle, as
percent of one core.  A figure printer, not a test.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import is_watcher  # (run as a script: the repo first on the path)


def cpu_seconds(process: psutil.Process) -> float:
    """CPU time of all threads in nanosecond resolution (/proc/PID/task/*/schedstat):
    psutil's cpu_times() counts 10 ms ticks, as much as an idle child uses in 10 s."""
    total = 0
    for schedstat in Path(f"/proc/{process.pid}/task").glob("*/schedstat"):
        try:
            total += int(schedstat.read_text().split()[0])
        except OSError:
            pass
    return total / 1e9 if total else sum(process.cpu_times()[:2])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0, help="idle CPU window")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mw-fleet-") as tmp:
        root = Path(tmp)
        ids = [f"w{i:03d}" for i in range(args.instances)]
        for iid in ids:
            (root / "data" / iid).mkdir(parents=True)
        roster = root / "roster.yaml"
        roster.write_text(yaml.safe_dump({
            "state_dir": str(root / "state"), "http": {"listen": "off"},
            "instances": [{"id": i, "directory": str(root / "data" / i)} for i in ids]}))
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "multiwatch", "run", "-c", str(roster)],
                                stdout=subprocess.PIPE, text=True, start_new_session=True)
        try:
            assert proc.stdout is not None
            watching = 0
            for line in proc.stdout:
                watching += '"message": "watching"' in line
                if watching == len(ids):
                    break
            ready = time.monotonic() - started
            supervisor = psutil.Process(proc.pid)
            # (children of the template process, grandchildren of the supervisor)
            children = [c for c in supervisor.children(recursive=True) if is_watcher(c)]
            time.sleep(2)  # let start-up work finish before the idle window
            before = {c.pid: cpu_seconds(c) for c in [supervisor, *children]}
            time.sleep(args.seconds)
            used = {c.pid: cpu_seconds(c) - before[c.pid]
                    for c in [supervisor, *children]}
            rss = [c.memory_info().rss / 2**20 for c in children]
            uss = [c.memory_full_info().uss / 2**20 for c in children]
            child_cpu = 100 * sum(used[c.pid] for c in children) / args.seconds
            print(f"instances: {len(children)} watching after {ready:.1f}s")
            print(f"supervisor RSS: {supervisor.memory_info().rss / 2**20:.1f} MiB, "
                  f"idle CPU {100 * used[supervisor.pid] / args.seconds:.1f}% of one core")
            print(f"child RSS MiB: min {min(rss):.1f} median {statistics.median(rss):.1f} "
                  f"max {max(rss):.1f}; USS median {statistics.median(uss):.1f} MiB")
            print(f"all children idle CPU: {child_cpu:.1f}% of one core "
                  f"({child_cpu / len(children):.2f}% each)")
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
