"""bigfile: one big file (1 GiB), then two at once, with a small file landing behind them.

Written in 16 MiB chunks of random bytes to the scratch directory (on disk, not tmpfs; the
page cache holds it afterwards, for the watcher and the ceiling alike).  For each big file:
close() → message received, effective GB/s (size / that time: the hash starts at close()
and overlaps the settle period), and whether any message for it arrived before close() or
with a size or sha256 other than the final content's (an announcement of a partial file).
The small file is closed while the big ones are being hashed (settle + 100 ms after their
close).  Ceilings: one Python thread reading once into sha256+xxh128 (same files, after
writeback), and two threads on the two files; beside them, for information, the same read
loop started right after writing a new file, as the watcher has to.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

from bench.ceilings import fresh_write_hash_rate, parallel_hash_ceiling, single_hash_ceiling
from bench.harness import (
    GIB,
    KIB,
    MIB,
    Consumed,
    Consumer,
    Ctx,
    Watcher,
    delete_queue,
    in_threads,
    loadavg,
    ms,
    probe_ready,
    remove_tree,
    say,
    write_big_file,
    write_roster,
    write_small_files,
)

SETTLE = 0.2
INSTANCE = "bench-bigfile"


def _check(got: Consumed, path: Path, closed: float, size: int, sha256: str) -> tuple[float, str]:
    """(close → first complete announcement, problems) for one big file."""
    mine = [r for r in got.files if r[1] == str(path)]
    problems = []
    early = [r for r in mine if r[0] < closed]
    if early:
        problems.append(f"{len(early)} announcement(s) before close()")
    wrong = [r for r in mine if str(r[3]) != str(size) or (sha256 and r[4] != sha256)]
    if wrong:
        problems.append(f"{len(wrong)} announcement(s) of a partial/other content")
    if len(mine) > 1:
        problems.append(f"announced {len(mine)} times")
    good = [r[0] for r in mine if r not in wrong and r[0] >= closed]
    if not good:
        problems.append("never announced complete")
        return float("nan"), "; ".join(problems)
    return min(good) - closed, "; ".join(problems)


def _pool_lines(watcher: Watcher, names: list[str]) -> str:
    """The pool's own 'hashed big file' figures for these files (its read, without settle)."""
    watcher.wait_log(lambda line: True, timeout=5)  # reads every line written so far
    found = {Path(line["path"]).name: line for line in watcher.lines
             if line.get("message") == "hashed big file" and Path(line["path"]).name in names}
    return ", ".join(f"{name} {found[name]['seconds']:.2f}s = {found[name]['gb_per_second']:.2f} "
                     "GB/s" for name in names if name in found) or "no 'hashed big file' line"


def _cpu_now(watcher: Watcher) -> tuple[float, float, float]:
    """(monotonic, CPU-seconds used by the whole machine, by the watcher child) right now."""
    ticks = os.sysconf("SC_CLK_TCK")
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / ticks  # all but idle and iowait
    child = sum(sum(c.cpu_times()[:2]) for c in watcher.children())
    return time.monotonic(), busy, child


def _cpu_during_hash(watcher: Watcher, since: tuple[float, float, float], name: str) -> str:
    """Who used the cores from `since` until the pool logged the hash of `name`: tells a
    watcher short of CPU (other processes busy) from a slow watcher."""
    watcher.wait_log(lambda line: line.get("message") == "hashed big file"
                     and Path(line.get("path", "")).name == name, timeout=600)
    now, busy, child = _cpu_now(watcher)
    wall = now - since[0]
    child_cpu = child - since[2]
    others = max(0.0, busy - since[1] - child_cpu)
    return (f"over the {wall:.2f}s to the pool's log line: watcher child {child_cpu:.2f} "
            f"CPU-s, everything else {others:.2f} CPU-s, of {wall * (os.cpu_count() or 1):.2f}")


def run(ctx: Ctx) -> None:
    size = 256 * MIB if ctx.quick else GIB
    base = ctx.scratch("bigfile")
    tree = base / "tree"
    tree.mkdir()
    say(f"bigfile: {size / GIB:.2f} GiB files, settle_seconds {SETTLE}; {loadavg()}")
    with ctx.vhost("bigfile") as url:
        queue = f"bench-bigfile-{uuid.uuid4().hex[:6]}"
        roster = write_roster(base / "roster.yaml", state_dir=base / "state", url=url,
                              queue=queue, instances=[
                                  {"id": INSTANCE, "directory": str(tree),
                                   "settle_seconds": SETTLE}])
        consumer = Consumer(url, queue, base / "one.json", expect=1, linger=1.5, deadline=600)
        watcher = Watcher(roster, base / "multiwatch.log")
        try:
            probe_ready(consumer, [tree])
            one = tree / "big-1.bin"
            started = time.monotonic()
            closed = write_big_file(one, size)
            at_close = _cpu_now(watcher)
            cpu_note = _cpu_during_hash(watcher, at_close, one.name)
            say(f"  wrote 1 file in {closed - started:.2f}s ({size / (closed - started) / 1e9:.2f} "
                f"GB/s); {loadavg()}")
            got_one = consumer.result(timeout=600)
            consumer = Consumer(url, queue, base / "two.json", expect=3, linger=1.5, deadline=600)
            ceiling = single_hash_ceiling(one)
            fresh = fresh_write_hash_rate(base / "fresh.bin", size)
            latency, problems = _check(got_one, one, closed, size, ceiling.sha256)
            rate = size / latency / 1e9
            # The hash starts at close() and overlaps the settle period, so no "without
            # settle" figure: close -> message is the whole cost.
            say(f"  1 file: close -> message {latency:.2f}s = {rate:.2f} GB/s "
                f"({rate / ceiling.gbps:.0%} of ceiling); "
                f"{problems or 'announced once, complete, after close'}")
            say(f"  the same read loop started right after writing a new file (writeback still "
                f"running, not waited for): {fresh:.2f} GB/s = {fresh / ceiling.gbps:.0%} of the "
                f"ceiling; the watcher reached {rate / fresh:.0%} of that")
            say(f"  the pool's log: {_pool_lines(watcher, [one.name])}; {cpu_note}")
            ctx.report.add("bigfile", f"1 x {size / GIB:.2f} GiB close->message",
                           f"{rate:.2f} GB/s",
                           ceiling=f"{ceiling.gbps:.2f} GB/s 1-thread hash",
                           ratio=f"{rate / ceiling.gbps:.0%} ({rate / fresh:.0%} of a read "
                                 "right after writing)",
                           target=">= 95%", ok=rate / ceiling.gbps >= 0.95)
            ctx.report.add("bigfile", "partial-file announcements", problems or "none",
                           target="none", ok=not problems)
            _two_at_once(ctx, tree, size, consumer, ceiling.gbps)
            say(f"  the pool's log: {_pool_lines(watcher, ['big-2.bin', 'big-3.bin'])}")
        finally:
            watcher.stop()
            consumer.stop()
            delete_queue(url, queue)
    remove_tree(base)


def _two_at_once(ctx: Ctx, tree: Path, size: int, consumer: Consumer, single: float) -> None:
    paths = [tree / "big-2.bin", tree / "big-3.bin"]
    closes: dict[Path, float] = {}
    # Both writers close together ("landing together"): otherwise one file would still be
    # written while the other is hashed, and the span would time the writer, not the watcher.
    together = threading.Barrier(len(paths))

    def write(path: Path) -> None:
        closes[path] = write_big_file(path, size, before_close=together.wait)

    started = time.monotonic()
    in_threads(write, paths)
    last_close = max(closes.values())
    say(f"  wrote 2 files at once in {last_close - started:.2f}s, closed "
        f"{ms(last_close - min(closes.values()))} apart; {loadavg()}")
    small = tree / "small-behind.dat"
    time.sleep(max(0.0, last_close + SETTLE + 0.1 - time.monotonic()))
    _, small_closed = write_small_files([small], 4 * KIB)
    got = consumer.result(timeout=600)
    both, digests = parallel_hash_ceiling(paths)
    say(f"  ceiling hash, 2 threads on the 2 files: {both:.2f} GB/s together "
        f"({both / single:.2f}x one thread)")
    results = [_check(got, p, closes[p], size, digests[str(p)]) for p in paths]
    problems = "; ".join(f"{p.name}: {r[1]}" for p, r in zip(paths, results, strict=True) if r[1])
    done = [closes[p] + r[0] for p, r in zip(paths, results, strict=True)]
    span = max(done) - min(closes.values())
    rate = 2 * size / span / 1e9
    small_first = got.first_by_path().get(str(small))
    small_latency = small_first - small_closed if small_first is not None else float("nan")
    say(f"  2 files at once: first close -> both announced {span:.2f}s = {rate:.2f} GB/s "
        f"together, {rate / single:.2f}x the 1-thread ceiling; per file " + ", ".join(
            f"{p.name} {r[0]:.2f}s" for p, r in zip(paths, results, strict=True))
        + f"; {problems or 'each announced once, complete, after close'}")
    say(f"  small file closed {ms(small_closed - max(closes.values()))} after the big ones: "
        f"close -> message {ms(small_latency)} (target <= settle + 100 ms = {ms(SETTLE + 0.1)})")
    ctx.report.add("bigfile", f"2 x {size / GIB:.2f} GiB at once", f"{rate:.2f} GB/s",
                   ceiling=f"{single:.2f} GB/s 1-thread ({both:.2f} 2-thread)",
                   ratio=f"{rate / single:.2f}x",
                   target=">= 1.7x", ok=rate / single >= 1.7)
    ctx.report.add("bigfile", "small file behind them", ms(small_latency),
                   ceiling=f"settle {ms(SETTLE)}", target=f"<= {ms(SETTLE + 0.1)}",
                   ok=small_latency <= SETTLE + 0.1)
    if problems:
        ctx.report.add("bigfile", "partial-file announcements (2 files)", problems,
                       target="none", ok=False)
    ctx.report.add("ceilings", "hash sha256+xxh128, 1 thread", f"{single:.2f} GB/s")
    ctx.report.add("ceilings", "hash sha256+xxh128, 2 threads, 2 files", f"{both:.2f} GB/s",
                   ratio=f"{both / single:.2f}x")
