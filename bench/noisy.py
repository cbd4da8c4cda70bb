"""noisy neighbours: one supervisor, several instances; while one instance is busy, another
instance's trickle (one 4 KiB file every 20 ms, written by a separate process) must still be
announced within settle + 100 ms of each close().

- `noisy` — instance 1 takes a burst of 10,000 files (`--quick`: 2,000; burst.py's shape),
  instance 2 gets the trickle.
- `noisy-hash` — instance 1 gets two 1 GiB files at once (`--quick`: 256 MiB; written by
  two threads that close them together, as in bigfile), twice; three other instances share
  the trickle.

close() → message as in latency.py: the trickle process takes `time.monotonic()` right
after close(), the consumer process takes it when the message arrives (one clock for every
process on the machine).  Figures: p50/p99/max of the trickle files closed while the
neighbour was busy (from its first write until the consumer had its last file), beside the
same trickle's figures over the second before (the quiet baseline, same run), against the
target settle + 100 ms.

Two consumers take each trickle message: one of its own, reading only the trickle
instances' events through a private queue (as a deployment's consumer of that directory
would: multiwatch's share, judged against the target), and the bench's shared one, which
also reads the neighbour's messages (to count them) and so adds its own wait behind the
neighbour's backlog (shown beside, not judged).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import burst
from bench.harness import (
    GIB,
    MIB,
    Consumer,
    Ctx,
    Trickle,
    Watcher,
    arrivals,
    delete_queue,
    in_threads,
    loadavg,
    ms,
    percentile,
    probe_ready,
    remove_tree,
    say,
    write_big_file,
    write_roster,
    write_small_files,
)

SETTLE = 0.2
INTERVAL = 0.020
QUIET_SECONDS = 1.0  # trickle alone before the neighbour starts: the baseline
TARGET = SETTLE + 0.100
HASH_NEIGHBOURS = 3  # instances sharing the trickle in noisy-hash


@dataclass
class Window:
    """Trickle latencies (seconds) of the files closed in one span."""

    label: str
    latencies: list[float]
    missing: int

    def line(self) -> str:
        if not self.latencies:
            return f"{self.label}: no trickle file closed in this span"
        p50, p99 = percentile(self.latencies, 50), percentile(self.latencies, 99)
        return (f"{self.label}: {len(self.latencies)} files, p50 {ms(p50)}, p99 {ms(p99)}, "
                f"max {ms(max(self.latencies))}" + (f", {self.missing} never announced"
                                                    if self.missing else ""))


def _split(closed: dict[str, float], received: dict[str, float],
           spans: Sequence[tuple[str, float, float]]) -> list[Window]:
    """The trickle's latencies per span (label, from, to) of close() times."""
    windows = []
    for label, begin, end in spans:
        inside = [p for p, t in closed.items() if begin <= t <= end]
        latencies = [received[p] - closed[p] for p in inside if p in received]
        windows.append(Window(label, latencies, len(inside) - len(latencies)))
    return windows


OWN = "via its own queue"
SHARED = "via the shared queue"


def _report(ctx: Ctx, scenario: str, quiet: Window, busy: Window, what: str,
            each: Sequence[Window] = (), via: str = OWN) -> None:
    """Rows of one consumer's figures; only the own queue's are judged against the target
    (the shared queue's include the bench consumer's wait behind the neighbour's messages)."""
    judged = via == OWN
    for window in (quiet, busy):
        say(f"  {via}: " + window.line())
    rounds = ", ".join(ms(percentile(w.latencies, 99)) for w in each if w.latencies)
    what = f"{what}, {via}"
    if not busy.latencies:
        ctx.report.add(scenario, f"trickle while {what}", "no samples", ok=False)
        return
    base50 = percentile(quiet.latencies, 50) if quiet.latencies else float("nan")
    base99 = percentile(quiet.latencies, 99) if quiet.latencies else float("nan")
    p50, p99 = percentile(busy.latencies, 50), percentile(busy.latencies, 99)
    ctx.report.add(scenario, f"trickle p50 while {what} ({len(busy.latencies)} files)", ms(p50),
                   ceiling=f"quiet p50 {ms(base50)}; settle {ms(SETTLE)}",
                   ratio=f"+{ms(p50 - SETTLE)}")
    ctx.report.add(scenario, f"trickle p99 while {what} (max {ms(max(busy.latencies))})",
                   ms(p99), ceiling=f"quiet p99 {ms(base99)}; settle {ms(SETTLE)}",
                   ratio=f"+{ms(p99 - SETTLE)}" + (f"; rounds {rounds}" if rounds else ""),
                   target=f"<= {ms(TARGET)}" if judged else "",
                   ok=(p99 <= TARGET and busy.missing == 0) if judged
                   else (False if busy.missing else None))


def run_burst(ctx: Ctx) -> None:
    files = 2_000 if ctx.quick else 10_000
    rounds = max(1, ctx.runs)
    base = ctx.scratch("noisy")
    loud, quiet_dir = base / "burst", base / "trickle"
    trees = [loud / f"r{n}" for n in range(rounds)]  # made before the watcher starts
    for tree in trees:
        for i in range(burst.SUBDIRS):
            (tree / f"d{i:02d}").mkdir(parents=True)
    quiet_dir.mkdir()
    say(f"noisy: instance 1 takes {files} files x 4 KiB at once (burst's shape), {rounds} times "
        f"(`--runs`) with {QUIET_SECONDS:.0f}s between; instance 2 a trickle of one file every "
        f"{ms(INTERVAL)}; settle {SETTLE}s both; {loadavg()}")
    bursts: list[tuple[list[Path], float, float, float]] = []  # paths, start, written, waited
    with ctx.vhost("noisy") as url:
        queue = f"bench-noisy-{uuid.uuid4().hex[:6]}"
        consumer = Consumer(url, queue, base / "consumed.json", expect=0, progress=True,
                            deadline=600 + rounds * files / 50)
        own = Consumer(url, f"{queue}-trickle", base / "trickle-consumed.json", expect=0,
                       deadline=600 + rounds * files / 50, instances=["bench-noisy-trickle"])
        roster = write_roster(base / "roster.yaml", state_dir=base / "state", url=url,
                              queue=queue, instances=[
                                  {"id": "bench-noisy-burst", "directory": str(loud),
                                   "settle_seconds": SETTLE},
                                  {"id": "bench-noisy-trickle", "directory": str(quiet_dir),
                                   "settle_seconds": SETTLE}])
        watcher = Watcher(roster, base / "multiwatch.log")
        trickle: Trickle | None = None
        try:
            probe_ready(consumer, [loud, quiet_dir])
            time.sleep(0.5)  # let the probes' own work finish
            trickle = Trickle([quiet_dir], base / "trickle.json", INTERVAL)
            time.sleep(max(0.0, trickle.started + QUIET_SECONDS - time.monotonic()))
            for number, tree in enumerate(trees):
                paths = burst.burst_paths(tree, files)
                started, written = write_small_files(paths, burst.FILE_SIZE)
                if not consumer.wait_count(files * (number + 1), timeout=120 + files / 50):
                    say(f"  round {number + 1}: not every file within the deadline")
                bursts.append((paths, started, written, time.monotonic()))
                time.sleep(QUIET_SECONDS)  # the trickle alone again: the next round's baseline
            closed = trickle.stop()
            trickle = None
            consumer.wait_probes(list(map(Path, closed)), timeout=30)
            own.wait_probes(list(map(Path, closed)), timeout=30)
            got, own_got = consumer.stop(), own.stop()
        finally:
            if trickle is not None:
                trickle.stop()
            watcher.stop()
            consumer.stop()
            own.stop()
            delete_queue(url, queue)
    assert got is not None and own_got is not None
    first = got.first_by_path()
    spans: list[tuple[str, float, float]] = []
    delivered_all = 0
    for number, (paths, started, written, waited) in enumerate(bursts):
        delivered = sum(1 for p in paths if str(p) in first)
        delivered_all += delivered
        last = max((first[str(p)] for p in paths if str(p) in first), default=started)
        say(f"  round {number + 1}: burst {delivered}/{files} delivered in {last - started:.2f}s "
            f"(writer {written - started:.2f}s)")
        spans.append((f"round {number + 1}, quiet (trickle alone, the second before)",
                      started - QUIET_SECONDS, started))
        spans.append((f"round {number + 1}, during the burst (first write -> last burst file "
                      "received)", started, min(last, waited)))
    for via, consumed in ((OWN, own_got), (SHARED, got)):
        windows = _split(closed, arrivals(consumed), spans)
        for window in windows:
            say(f"  {via}: " + window.line())
        quiet, busy = _pool("all rounds, quiet", windows[0::2]), _pool("all rounds, during "
                                                                      "the bursts", windows[1::2])
        _report(ctx, "noisy", quiet, busy, f"a neighbour takes {files} files, {rounds} rounds",
                each=windows[1::2], via=via)
    ctx.report.add("noisy", f"neighbour's bursts of {files} delivered",
                   f"{delivered_all}/{files * rounds} ({got.duplicates} dup.)", target="all",
                   ok=delivered_all == files * rounds)
    remove_tree(base)


def _pool(label: str, windows: Sequence[Window]) -> Window:
    return Window(label, [x for w in windows for x in w.latencies],
                  sum(w.missing for w in windows))


def run_hash(ctx: Ctx) -> None:
    size = 256 * MIB if ctx.quick else GIB
    rounds = max(1, ctx.runs)
    base = ctx.scratch("noisy-hash")
    loud = base / "big"
    loud.mkdir()
    smalls = [base / f"small{i}" for i in range(HASH_NEIGHBOURS)]
    for d in smalls:
        d.mkdir()
    say(f"noisy-hash: instance 1 takes two {size / GIB:.2f} GiB files at once ({rounds} "
        f"rounds, `--runs`), {HASH_NEIGHBOURS} other instances share a trickle of one file every "
        f"{ms(INTERVAL)}; settle {SETTLE}s; {loadavg()}")
    spans: list[tuple[str, float, float]] = []
    with ctx.vhost("noisy-hash") as url:
        queue = f"bench-noisy-hash-{uuid.uuid4().hex[:6]}"
        consumer = Consumer(url, queue, base / "consumed.json", expect=0, progress=True,
                            deadline=1800)
        instances = [{"id": "bench-noisy-big", "directory": str(loud), "settle_seconds": SETTLE}]
        instances += [{"id": f"bench-noisy-small{i}", "directory": str(d),
                       "settle_seconds": SETTLE} for i, d in enumerate(smalls)]
        own = Consumer(url, f"{queue}-trickle", base / "trickle-consumed.json", expect=0,
                       deadline=1800, instances=[str(i["id"]) for i in instances[1:]])
        roster = write_roster(base / "roster.yaml", state_dir=base / "state", url=url,
                              queue=queue, instances=instances)
        watcher = Watcher(roster, base / "multiwatch.log")
        trickle: Trickle | None = None
        closes: dict[Path, float] = {}
        try:
            probe_ready(consumer, [loud, *smalls])
            time.sleep(0.5)
            trickle = Trickle(smalls, base / "trickle.json", INTERVAL)
            time.sleep(max(0.0, trickle.started + QUIET_SECONDS - time.monotonic()))
            spans.append(("quiet (trickle alone, the second before)",
                          time.monotonic() - QUIET_SECONDS, time.monotonic()))
            for number in range(rounds):
                pair = [loud / f"big-{number}-{i}.bin" for i in range(2)]
                together = threading.Barrier(len(pair))

                def write(path: Path, together: threading.Barrier = together) -> None:
                    closes[path] = write_big_file(path, size, before_close=together.wait)

                began = time.monotonic()
                in_threads(write, pair)
                closed_at = max(closes[p] for p in pair)
                consumer.wait_count(2 * (number + 1), timeout=600)
                done = time.monotonic()
                spans.append((f"round {number + 1}: while written", began, closed_at))
                spans.append((f"round {number + 1}: close -> both announced (hashing)",
                              closed_at, done))
                say(f"  round {number + 1}: wrote 2 files in {closed_at - began:.2f}s, both "
                    f"announced {done - closed_at:.2f}s after close; {loadavg()}")
                time.sleep(0.5)
            closed = trickle.stop()
            trickle = None
            consumer.wait_probes(list(map(Path, closed)), timeout=30)
            own.wait_probes(list(map(Path, closed)), timeout=30)
            got, own_got = consumer.stop(), own.stop()
        finally:
            if trickle is not None:
                trickle.stop()
            watcher.stop()
            consumer.stop()
            own.stop()
            delete_queue(url, queue)
    assert got is not None and own_got is not None
    received = arrivals(got)
    big_latency = [received[str(p)] - t for p, t in closes.items() if str(p) in received]
    say(f"  big files close -> message: {', '.join(f'{x:.2f}s' for x in big_latency)} "
        f"= {size / max(big_latency, default=float('nan')) / 1e9 * 2:.2f} GB/s per pair")
    for via, consumed in ((OWN, own_got), (SHARED, got)):
        windows = _split(closed, arrivals(consumed), spans)
        for window in windows[1:]:
            say(f"  {via}: " + window.line())
        hashing = Window("all rounds, close -> both announced (hashing)",
                         [x for w in windows if "hashing" in w.label for x in w.latencies],
                         sum(w.missing for w in windows if "hashing" in w.label))
        writing = Window("all rounds, while written",
                         [x for w in windows if "written" in w.label for x in w.latencies],
                         sum(w.missing for w in windows if "written" in w.label))
        say(f"  {via}: " + writing.line())
        _report(ctx, "noisy-hash", windows[0], hashing,
                f"a neighbour hashes 2 x {size / GIB:.2f} GiB, {rounds} rounds",
                each=[w for w in windows if "hashing" in w.label], via=via)
        if writing.latencies:
            ctx.report.add("noisy-hash", f"trickle p99 while the 2 x {size / GIB:.2f} GiB are "
                           f"written, {via}", ms(percentile(writing.latencies, 99)),
                           ratio=f"{len(writing.latencies)} files", ceiling=f"settle {ms(SETTLE)}")
    remove_tree(base)
