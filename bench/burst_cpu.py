"""The pipeline thread's CPU per file, in one process, with no broker and no other thread.

Runs the watcher's Pipeline (as watcher/main.py builds it: a hash pool, the mount guard,
JSON log lines at INFO to /dev/null) over N files of 4 KiB in 10 directories and reports
the thread's CPU seconds per file (time.thread_time) and how much the process's peak RSS
grew.  Modes:

- `burst`: one close-after-write notification per file (what the inotify reader hands on
  for a writer's open-write-close), settle 0;
- `scan`: a first start, the startup scan finding every file (nothing tracked yet);
- `modify`: a first start, then every file rewritten and notified (changes to files
  announced moments before).

Nothing is published (the outbox only grows), so this is the pipeline's share alone: the
child's other threads (publisher, inotify reader) and the contention between them are
what `bench/run.py --only burst` and `--only profile` see.  Run as a module from the tree to
measure; compare commits back to back from a worktree of each
(`cd /tmp/wt && /path/to/.venv/bin/python -m bench.burst_cpu`).

    .venv/bin/python -m bench.burst_cpu --mode scan --files 100000 --repeat 3
    .venv/bin/python -m bench.burst_cpu --mode burst --profile     # cProfile, top functions
    .venv/bin/python -m bench.burst_cpu --mode scan --memory       # what holds the memory
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import pstats
import resource
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from multiwatch.config import InstanceConfig
from multiwatch.logs import setup_logging
from multiwatch.watcher.hash_pool import HashPool
from multiwatch.watcher.mount import MountGuard, mount_of
from multiwatch.watcher.outbox import OutboxGauge
from multiwatch.watcher.pipeline import Pipeline
from multiwatch.watcher.raw_event import EventKind, RawEvent
from multiwatch.watcher.state import StateStore

SUBDIRS = 10
FILE_SIZE = 4096


def _write(root: Path, names: list[str], tag: int) -> None:
    data = os.urandom(FILE_SIZE - 16)
    for i, relative in enumerate(names):
        with open(root / relative, "wb") as f:
            f.write(data + i.to_bytes(8, "little") + tag.to_bytes(8, "little"))


def _until(pipeline: Pipeline, event_type: str, count: int, deadline: float) -> None:
    while pipeline.counts[event_type] < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{pipeline.counts[event_type]} of {count} {event_type}")
        pipeline.step(0.0)


def one_run(mode: str, files: int, *, profile: bool, memory: bool) -> tuple[float, float]:
    """(CPU seconds per file, MiB the peak RSS grew) of one run over a fresh tree."""
    base = Path(tempfile.mkdtemp(prefix="mw-burst-cpu-", dir="/var/tmp"))
    try:
        root = base / "w"
        for d in range(SUBDIRS):
            (root / f"d{d}").mkdir(parents=True)
        names = [f"d{i % SUBDIRS}/f{i:07d}.bin" for i in range(files)]
        _write(root, names, 0)
        store = StateStore(str(base / "state.db"))
        gauge = OutboxGauge(events=0, size=0, max_events=10**8, max_bytes=10**12)
        pipeline = Pipeline(InstanceConfig(id="bench", directory=str(root), settle_seconds=0.0),
                            store, gauge, hash_pool=HashPool(None, 2))
        pipeline.mount_lost = MountGuard(str(root), required=False,
                                         remembered=mount_of(str(root))).lost
        deadline = time.monotonic() + 60 + files / 500
        event_type = "file_discovered"
        if mode in ("scan", "modify"):
            pipeline.request_scan()
        if mode == "modify":
            _until(pipeline, event_type, files, deadline)
            _write(root, names, 1)
            event_type = "file_modified"
        if mode in ("burst", "modify"):
            for relative in names:
                pipeline.notifications.put(RawEvent(EventKind.CLOSED, False, relative))
        os.sync()
        gc.collect()
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        profiler = cProfile.Profile() if profile else None
        if memory:
            tracemalloc.start(4)
        started = time.thread_time()
        if profiler is not None:
            profiler.enable()
        _until(pipeline, event_type, files, deadline)
        if profiler is not None:
            profiler.disable()
        cpu = time.thread_time() - started
        grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
        if profiler is not None:
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(40)
            print(out.getvalue(), file=sys.stderr)
        if memory:
            gc.collect()
            for stat in tracemalloc.take_snapshot().statistics("traceback")[:10]:
                print(f"{stat.size / files:7.0f} B/file, {stat.count / files:.2f} blocks/file",
                      file=sys.stderr)
                for line in stat.traceback.format()[-4:]:
                    print("    " + line, file=sys.stderr)
            tracemalloc.stop()
        store.close()
        return cpu / files, grew
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("burst", "scan", "modify"), default="burst")
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile (doubles the CPU)")
    parser.add_argument("--memory", action="store_true", help="tracemalloc (slow)")
    args = parser.parse_args()
    stdout = sys.stdout
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the log lines go nowhere
    setup_logging("INFO", "bench")
    results = [one_run(args.mode, args.files, profile=args.profile, memory=args.memory)
               for _ in range(args.repeat)]
    per_file = sorted(r[0] for r in results)
    grew = max(r[1] for r in results)
    print(f"{args.mode}, {args.files} files, {args.repeat} runs: pipeline thread CPU "
          f"{', '.join(f'{x * 1e3:.4f}' for x in per_file)} ms/file (median "
          f"{per_file[len(per_file) // 2] * 1e3:.4f}); peak RSS grew {grew:.1f} MiB "
          f"({grew * 1024 * 1024 / args.files:.0f} B/file); load {os.getloadavg()[0]:.2f}",
          file=stdout)


if __name__ == "__main__":
    main()
