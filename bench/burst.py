"""burst: N files of 4 KiB land in one instance's tree (10 subdirectories) as fast as one
writer can make them; time from the first write until a consumer has received the last
distinct file.  Repeated `--runs` times at log_level INFO and again at WARNING (the cost
of one log line per event is a figure of its own), against raw publish ceilings of the
same messages.  `profile` runs one burst with py-spy attached to the watcher child.
"""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psutil

from bench.ceilings import PublishCeiling, messages_like, publish_ceiling, publish_ceilings
from bench.harness import (
    KIB,
    MIB,
    Consumer,
    Ctx,
    Watcher,
    delete_queue,
    loadavg,
    median,
    peak_rss,
    probe_ready,
    remove_tree,
    say,
    write_roster,
    write_small_files,
)

SETTLE = 0.2
SUBDIRS = 10
FILE_SIZE = 4 * KIB
INSTANCE = "bench-burst"


@dataclass
class BurstRun:
    level: str
    files: int
    seconds: float  # first write → last distinct file received
    writer_seconds: float
    delivered: int
    duplicates: int
    child_cpu: float
    threads: dict[int, float]  # native thread id → CPU seconds during the burst
    main_tid: int
    recorded: float | None  # first write → last event in the outbox (INFO log), seconds
    peak_rss: int = 0  # the child's VmHWM (bytes) once every file was received

    def thread_split(self) -> str:
        ordered = sorted(self.threads.items(), key=lambda kv: -kv[1])
        return ", ".join(f"{'main ' if tid == self.main_tid else ''}{cpu:.2f}s"
                         for tid, cpu in ordered if cpu >= 0.01)

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds if self.seconds > 0 else 0.0

    @property
    def missing(self) -> int:
        return self.files - self.delivered


def burst_paths(tree: Path, files: int) -> list[Path]:
    dirs = [tree / f"d{i:02d}" for i in range(SUBDIRS)]
    return [dirs[i % SUBDIRS] / f"f{i:06d}.dat" for i in range(files)]


def one_burst(ctx: Ctx, url: str, *, files: int, level: str,
              profile_to: Path | None = None, leave: list[Path] | None = None) -> BurstRun:
    """One burst; its scratch tree is removed at the end, or added to `leave` for the caller
    to remove after its last run (see run)."""
    base = ctx.scratch(f"burst-{level.lower()}")
    tree = base / "tree"
    for i in range(SUBDIRS):
        (tree / f"d{i:02d}").mkdir(parents=True)
    paths = burst_paths(tree, files)
    queue = f"bench-burst-{uuid.uuid4().hex[:6]}"
    consumer = Consumer(url, queue, base / "consumed.json", expect=files, linger=1.0,
                        deadline=60 + files / 50)
    roster = write_roster(base / "roster.yaml", state_dir=base / "state", url=url, queue=queue,
                          log_level=level, instances=[
                              {"id": INSTANCE, "directory": str(tree), "settle_seconds": SETTLE}])
    watcher = Watcher(roster, base / "multiwatch.log")
    spy: subprocess.Popen[bytes] | None = None
    try:
        probe_ready(consumer, [tree])
        child = watcher.wait_children(1)[0]
        if profile_to is not None:
            spy = _start_py_spy(child.pid, profile_to)
        cpu_before = sum(child.cpu_times()[:2])
        threads_before = _thread_cpu(child)
        started, written = write_small_files(paths, FILE_SIZE)
        got = consumer.result(timeout=60 + files / 50)
        cpu = sum(child.cpu_times()[:2]) - cpu_before
        rss = peak_rss(child.pid)
        threads = {tid: t - threads_before.get(tid, 0.0)
                   for tid, t in _thread_cpu(child).items()}
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        watcher.stop()
        consumer.stop()
        delete_queue(url, queue)
    first = got.first_by_path()
    wanted = {str(p) for p in paths}
    delivered = len(wanted & first.keys())
    last = max((first[p] for p in wanted & first.keys()), default=started)
    recorded = _last_recorded(base / "multiwatch.log", started)
    if leave is None:
        remove_tree(base)
    else:
        leave.append(base)
    return BurstRun(level, files, last - started, written - started, delivered,
                    got.duplicates, cpu, threads, child.pid, recorded, rss)


def _last_recorded(log: Path, started: float) -> float | None:
    """Seconds from the first write to the pipeline's last 'file discovered' log line (the
    event is then in the outbox; the rest of the time is the publisher's), or None at
    WARNING.  Log timestamps are wall-clock milliseconds: mapped onto CLOCK_MONOTONIC."""
    offset = time.time() - time.monotonic()
    last = None
    with open(log, "rb") as f:
        for raw in f:
            if b'"file discovered"' in raw:
                last = json.loads(raw)["timestamp"]
    if last is None:
        return None
    wall = datetime.fromisoformat(last.replace("Z", "+00:00")).timestamp()
    return wall - offset - started


def _thread_cpu(process: psutil.Process) -> dict[int, float]:
    """CPU seconds (user + system) of each thread, from /proc: what py-spy cannot tell
    apart (runnable-but-waiting vs running) on a loaded 2-core machine."""
    return {t.id: t.user_time + t.system_time for t in process.threads()}


def run(ctx: Ctx) -> None:
    files = 2_000 if ctx.quick else 10_000
    say(f"burst: {files} files x {FILE_SIZE // KIB} KiB into {SUBDIRS} subdirectories, "
        f"settle_seconds {SETTLE}, {ctx.runs} runs per log level; {loadavg()}")
    with ctx.vhost("burst") as url:
        scratch = ctx.scratch("burst-ceiling")
        tree = scratch / "tree"
        events = messages_like(burst_paths(tree, files), tree, INSTANCE, FILE_SIZE)
        ceilings = publish_ceilings(url, events, scratch)
        ctx.ceilings["publish"] = ceilings
        results: dict[str, list[BurstRun]] = collections.defaultdict(list)
        # Each run's tree is removed after the last run (the workdir goes at exit anyway):
        # right after 10,000 files were deleted, creating the next 10,000 took 8-11x the
        # kernel time on this machine's ext4, so each run would have measured the cleanup
        # of the one before.
        done: list[Path] = []
        try:
            for index in range(ctx.runs):  # interleaved: drifting load hits both levels alike
                for level in ("INFO", "WARNING"):
                    result = one_burst(ctx, url, files=files, level=level, leave=done)
                    results[level].append(result)
                    say(f"  run {index + 1}/{ctx.runs} [{level:7s}] {result.rate:6.0f} files/s "
                        f"({result.delivered}/{files} in {result.seconds:.2f}s; writer "
                        f"{result.writer_seconds:.2f}s = "
                        f"{files / result.writer_seconds:.0f} files/s"
                        + (f"; all in the outbox after {result.recorded:.2f}s"
                           if result.recorded is not None else "") + "); "
                        f"duplicates {result.duplicates}, missing {result.missing}; child CPU "
                        f"{result.child_cpu:.1f}s ({1000 * result.child_cpu / files:.2f} "
                        f"ms/file; by thread {result.thread_split()}); {loadavg()}")
        finally:
            for path in done:
                remove_tree(path)
    _summarise(ctx, files, results, ceilings)


def _summarise(ctx: Ctx, files: int, results: dict[str, list[BurstRun]],
               ceilings: dict[str, PublishCeiling]) -> None:
    raw = ceilings["unconfirmed"].rate
    each = ceilings["confirm-each"].rate
    piped = ceilings["confirm-pipelined"].rate
    direct = ceilings["pyamqp-pipelined"].rate
    rates = {level: median([r.rate for r in runs]) for level, runs in results.items()}
    cpu = {level: median([r.child_cpu / r.files * 1000 for r in runs])
           for level, runs in results.items()}
    for level, runs in results.items():
        complete = sum(1 for r in runs if r.missing == 0)
        dups = sum(r.duplicates for r in runs)
        lag = median([r.seconds - r.writer_seconds for r in runs])
        writer = median([r.writer_seconds for r in runs])
        say(f"  {level}: median {rates[level]:.0f} files/s = {rates[level] / raw:.0%} of raw "
            f"unconfirmed publish, {rates[level] / piped:.0%} of pipelined-confirm publish, "
            f"{rates[level] / each:.0%} of confirm-each; all delivered in {complete}/{len(runs)} "
            f"runs, {dups} duplicates; median writer {writer:.2f}s, last message "
            f"{lag:.2f}s after the last write; child CPU {cpu[level]:.2f} ms/file")
        ctx.report.add("burst", f"files/s, log {level} (median of {len(runs)})",
                       f"{rates[level]:.0f}", ceiling=f"{raw:.0f} msg/s raw unconfirmed",
                       ratio=f"{rates[level] / raw:.0%}", target=">= 40%",
                       ok=rates[level] / raw >= 0.40)
        ctx.report.add("burst", f"runs with every file delivered, log {level}",
                       f"{complete}/{len(runs)} ({dups} dup.)", target="all",
                       ok=complete == len(runs))
        ctx.report.add("burst", f"child CPU per file, log {level}", f"{cpu[level]:.2f} ms",
                       ceiling=f"{1000 / raw:.2f} ms/msg raw publish (wall)")
    if "INFO" in rates and "WARNING" in rates:
        diff = rates["WARNING"] / rates["INFO"] - 1
        cpu_diff = cpu["WARNING"] / cpu["INFO"] - 1
        say(f"  log WARNING instead of INFO: throughput {diff:+.0%} (WARNING {rates['WARNING']:.0f}"
            f" vs INFO {rates['INFO']:.0f} files/s), child CPU per file {cpu_diff:+.0%} "
            f"({cpu['WARNING']:.2f} vs {cpu['INFO']:.2f} ms); throughput follows the writer's "
            "speed on a busy machine, CPU per file does not")
        ctx.report.add("burst", "WARNING vs INFO: files/s, CPU/file",
                       f"{diff:+.0%}, {cpu_diff:+.0%}")
    ctx.report.add("ceilings", "raw kombu publish, pipelined confirms (256)", f"{piped:.0f} msg/s")
    ctx.report.add("ceilings", "raw kombu publish, confirm each message", f"{each:.0f} msg/s")
    ctx.report.add("ceilings", "raw py-amqp publish (no kombu), pipelined", f"{direct:.0f} msg/s")


# ---- burst-bound ----------------------------------------------------------------------------

BOUND_TARGET = 0.85


def _flush(path: Path) -> None:
    """Write back the dirty pages of the filesystem holding `path` (syncfs, `sync -f`)."""
    subprocess.run(["sync", "-f", str(path)], check=False, timeout=300)


def _writer_alone(ctx: Ctx, files: int, leave: list[Path]) -> float:
    """Seconds the same writer takes for the same files into a fresh tree, no watcher
    running (the tree is kept until the scenario ends, as the burst's are: deleting it
    would slow the next writer down)."""
    base = ctx.scratch("burst-writer")
    leave.append(base)
    for i in range(SUBDIRS):
        (base / f"d{i:02d}").mkdir()
    started, written = write_small_files(burst_paths(base, files), FILE_SIZE)
    return written - started


def run_bound(ctx: Ctx) -> None:
    """The issue's burst bound: first write -> last message against settle + max(the
    writer alone, N / unconfirmed publish rate), at 10,000 and 100,000 files (`--quick`:
    2,000 and 20,000), log INFO, `--runs` runs each, each between two writer-alone runs."""
    sizes = (2_000, 20_000) if ctx.quick else (10_000, 100_000)
    say(f"burst-bound: {' and '.join(map(str, sizes))} files x {FILE_SIZE // KIB} KiB into "
        f"{SUBDIRS} subdirectories, settle {SETTLE}s, log INFO, {ctx.runs} runs each; bound = "
        f"settle + max(writer alone, N / raw unconfirmed publish); {loadavg()}")
    done: list[Path] = []
    with ctx.vhost("burst-bound") as url:
        try:
            for files in sizes:
                scratch = ctx.scratch(f"burst-bound-{files}")
                done.append(scratch)
                tree = scratch / "tree"
                events = messages_like(burst_paths(tree, files), tree, INSTANCE, FILE_SIZE)
                raw = max((publish_ceiling(url, events, "unconfirmed", scratch)
                           for _ in range(2)), key=lambda r: r.rate)
                del events
                say(f"  {files}: ceiling publish unconfirmed {raw.rate:.0f} msg/s "
                    f"({raw.delivered}/{files} in {raw.delivered_s:.2f}s; best of 2)")
                _bound_runs(ctx, url, files, raw.rate, done)
        finally:
            for path in done:
                remove_tree(path)


def _bound_runs(ctx: Ctx, url: str, files: int, raw: float, done: list[Path]) -> None:
    ratios, complete, rss, seconds, bounds = [], 0, [], [], []
    for index in range(max(1, ctx.runs)):
        # The writer alone right before and right after the run, the faster of the two: on
        # this shared machine one writer-alone run can take 7x the other (deletions and
        # writeback of someone else's files), and a ceiling is the best the machine did.
        # Each writer, the watched one too, starts with no dirty pages: otherwise the kernel
        # writes the last tree back (30 s after it was written) while the next writer runs.
        _flush(ctx.workdir)
        before = _writer_alone(ctx, files, done)
        _flush(ctx.workdir)
        result = one_burst(ctx, url, files=files, level="INFO", leave=done)
        _flush(ctx.workdir)
        after = _writer_alone(ctx, files, done)
        alone = min(before, after)
        bound = SETTLE + max(alone, files / raw)
        ratios.append(bound / result.seconds)
        bounds.append(bound)
        seconds.append(result.seconds)
        complete += result.missing == 0 and result.duplicates == 0
        rss.append(result.peak_rss)
        say(f"  {files} run {index + 1}/{ctx.runs}: first write -> last message "
            f"{result.seconds:.2f}s ({result.delivered}/{files}, {result.duplicates} dup.; "
            f"writer {result.writer_seconds:.2f}s); bound {bound:.2f}s = settle + max(writer "
            f"alone {alone:.2f}s (before {before:.2f}, after {after:.2f}), publish "
            f"{files / raw:.2f}s) -> {bound / result.seconds:.0%}; "
            f"child CPU {1000 * result.child_cpu / files:.2f} ms/file, peak RSS "
            f"{result.peak_rss / MIB:.1f} MiB; {loadavg()}")
    ratio = median(ratios)
    ctx.report.add("burst-bound", f"{files} files: first write -> last message (median of "
                   f"{len(ratios)})", f"{median(seconds):.2f}s; {complete}/{len(ratios)} runs "
                   "all delivered once",
                   ceiling=f"{median(bounds):.2f}s settle + max(writer alone, N/{raw:.0f} msg/s)",
                   ratio=f"{ratio:.0%} (best {max(ratios):.0%})",
                   target=f">= {BOUND_TARGET:.0%}, all",
                   ok=ratio >= BOUND_TARGET and complete == len(ratios))
    ctx.report.add("burst-bound", f"{files} files: child peak RSS", f"{max(rss) / MIB:.1f} MiB")


# ---- profile ------------------------------------------------------------------------------

def _start_py_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    spy_bin = Path(sys.executable).with_name("py-spy")
    if not spy_bin.exists():
        raise RuntimeError(f"py-spy not found beside {sys.executable}: "
                           f"{sys.executable} -m pip install py-spy")
    spy = subprocess.Popen(
        [str(spy_bin), "record", "--pid", str(pid), "--format", "raw", "--threads",
         "--nonblocking", "--rate", "100", "-o", str(out)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    time.sleep(1.0)  # let it attach before the burst starts
    return spy


def run_profile(ctx: Ctx) -> None:
    files = 2_000 if ctx.quick else 10_000
    out = ctx.out / "burst-profile.txt"
    say(f"profile: one burst of {files} files at log INFO with py-spy (100 Hz, non-blocking) "
        f"on the watcher child; {loadavg()}")
    with ctx.vhost("profile") as url:
        result = one_burst(ctx, url, files=files, level="INFO", profile_to=out)
    say(f"  burst under py-spy: {result.rate:.0f} files/s, missing {result.missing}; child CPU "
        f"{result.child_cpu:.2f}s ({1000 * result.child_cpu / files:.2f} ms/file); collapsed "
        f"stacks in {out} (flamegraph.pl / speedscope / inferno read them)")
    from bench.profile import summarise
    (out.with_suffix(".threads.json")).write_text(json.dumps(result.threads))
    for line in summarise(out, result.threads):
        say("  " + line)
