"""multiwatch benchmark suite: figures, and ratios against ceilings measured in the same run.

    .venv/bin/python bench/run.py                      # everything, full sizes (~10 min)
    .venv/bin/python bench/run.py --quick              # smaller sizes (~4 min)
    .venv/bin/python bench/run.py --only burst,latency --runs 10
    .venv/bin/python bench/run.py --only profile       # one burst under py-spy

Starts a private RabbitMQ node as the tests do (or reuses MULTIWATCH_TEST_AMQP_URL), gives
each scenario its own vhost, runs the real `multiwatch run` (own session, HTTP off), and
stops everything it started.  Scenarios: burst, latency, bigfile, restart, deep, fleet (the
default set), plus profile (needs py-spy), replica-faults (boots a three-node cluster
too), replicas (a warm standby's takeover) and ceilings (all ceilings alone, on their own
data; the default set measures each ceiling beside the figure it bounds).  Benchmarks
print figures; they are not tests and never fail on a missed target.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import (
    bigfile,
    burst,
    deep,
    firststart,
    fleet,
    latency,
    noisy,
    replica_faults,
    replicas,
    restart,
)
from bench.ceilings import (
    messages_like,
    parallel_hash_ceiling,
    publish_ceilings,
    scandir_stat,
    single_hash_ceiling,
)
from bench.harness import (
    GIB,
    MIB,
    Ctx,
    Report,
    loadavg,
    machine_lines,
    pick_workdir,
    say,
    write_big_file,
    write_small_files,
)
from tests.support.rabbitmq import RabbitMQ

DEFAULT = ["burst", "latency", "bigfile", "restart", "deep", "fleet", "noisy", "noisy-hash",
           "firststart", "burst-bound", "fleet-200"]
EXTRA = ["profile", "ceilings", "replica-faults", "replicas"]


def run_ceilings(ctx: Ctx) -> None:
    """Every ceiling on data of the scenarios' sizes, without running the scenarios."""
    size = 256 * MIB if ctx.quick else GIB
    files = 2_000 if ctx.quick else 10_000
    base = ctx.scratch("ceilings")
    say(f"ceilings: hash {size / GIB:.2f} GiB files, publish {files} burst messages, "
        f"scandir a {files}-file tree; {loadavg()}")
    paths = [base / "a.bin", base / "b.bin"]
    for path in paths:
        write_big_file(path, size)
    single = single_hash_ceiling(paths[0])
    both, _ = parallel_hash_ceiling(paths)
    say(f"  ceiling hash, 2 threads on 2 files: {both:.2f} GB/s ({both / single.gbps:.2f}x)")
    tree = base / "tree"
    tree_paths = burst.burst_paths(tree, files)
    for d in {p.parent for p in tree_paths}:
        d.mkdir(parents=True, exist_ok=True)
    write_small_files(tree_paths)
    listed, seconds = scandir_stat(tree)
    say(f"  ceiling scandir+lstat: {listed / seconds:.0f} files/s")
    with ctx.vhost("ceilings") as url:
        events = messages_like(tree_paths, tree, burst.INSTANCE, burst.FILE_SIZE)
        pub = publish_ceilings(url, events, base)
    alone = "standalone: "
    ctx.report.add("ceilings", f"{alone}hash sha256+xxh128, 1 thread", f"{single.gbps:.2f} GB/s")
    ctx.report.add("ceilings", f"{alone}hash sha256+xxh128, 2 threads, 2 files",
                   f"{both:.2f} GB/s", ratio=f"{both / single.gbps:.2f}x")
    for mode, result in pub.items():
        ctx.report.add("ceilings", f"{alone}raw publish, {mode}", f"{result.rate:.0f} msg/s")
    ctx.report.add("ceilings", f"{alone}os.scandir + lstat", f"{listed / seconds:.0f} files/s")
    shutil.rmtree(base, ignore_errors=True)


def _sigterm(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(DEFAULT),
                        help=f"comma-separated scenarios out of {', '.join(DEFAULT + EXTRA)}")
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--runs", type=int, default=3, help="burst repetitions per log level")
    parser.add_argument("--latency-modes", default=None,
                        help=f"latency modes to run (default: all of {', '.join(latency.MODES)})")
    parser.add_argument("--workdir", default=None, help="scratch parent directory (not tmpfs)")
    parser.add_argument("--out", default=None,
                        help="where profiles are kept (default: a directory under the workdir's "
                             "parent, printed at the end)")
    args = parser.parse_args()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(DEFAULT + EXTRA)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    modes = args.latency_modes.split(",") if args.latency_modes else None
    if modes and set(modes) - set(latency.MODES):
        parser.error(f"unknown latency mode(s); known: {', '.join(latency.MODES)}")

    signal.signal(signal.SIGTERM, _sigterm)
    workdir, where = pick_workdir(args.workdir)
    out = Path(args.out) if args.out else workdir.parent / f"{workdir.name}-out"
    out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    say("multiwatch benchmarks" + (" (--quick)" if args.quick else ""))
    for line in machine_lines(where):
        say(line)
    broker = RabbitMQ.start_or_reuse()
    say(f"broker: {'private node ' + str(broker.node) if broker.owned else 'reused'} "
        f"{broker.amqp_url}" + (f", booted in {broker.startup_seconds:.1f}s"
                                 if broker.startup_seconds else ""))
    ctx = Ctx(rabbitmq=broker, workdir=workdir, out=out, quick=args.quick, runs=args.runs,
              report=Report())
    scenarios = {"burst": burst.run, "latency": lambda c: latency.run(c, modes),
                 "bigfile": bigfile.run, "restart": restart.run, "deep": deep.run,
                 "fleet": fleet.run, "noisy": noisy.run_burst, "noisy-hash": noisy.run_hash,
                 "firststart": firststart.run, "burst-bound": burst.run_bound,
                 "fleet-200": lambda c: fleet.run(c, 200),
                 "profile": burst.run_profile, "ceilings": run_ceilings,
                 "replica-faults": replica_faults.run, "replicas": replicas.run}
    try:
        for name in chosen:
            say()
            started = time.monotonic()
            try:
                scenarios[name](ctx)
            except Exception as exc:  # noqa: BLE001 - report it and go on with the next scenario
                traceback.print_exc()
                ctx.report.add(name, "FAILED", f"{type(exc).__name__}: {exc}"[:120], ok=False)
            say(f"  ({name} took {time.monotonic() - started:.0f}s)")
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    say()
    say(f"summary ({time.monotonic() - began:.0f}s in all; {loadavg()}):")
    say(ctx.report.table())
    if any(out.iterdir()):
        say(f"kept: {out}")
    else:
        out.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
