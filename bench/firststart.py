"""firststart: multiwatch, with an empty state directory, pointed at a tree that already
exists — the flat tree of 100,000 files of 1 KiB in 100 directories (restart.py's shape)
and the music library of 500,000 files in 52,500 directories (deep.py's shape; `--quick`:
10,000 files, and 50,000 files in 5,250 directories).

Figure: `multiwatch run` (log INFO, the default) → the consumer has received every file,
and how many arrived (each once, or duplicates).  Bound, measured in the same run on the
same tree (the issue's): the slowest of
- files ÷ the unconfirmed publish rate: raw kombu publish of the events multiwatch builds
  for a sample of the tree's paths (up to 20,000, evenly spaced; best of 2), first publish →
  the consumer has the last one;
- bytes ÷ (the one-read hash ceiling x cores used): one Python thread reading a 256 MiB
  file (`--quick`: 64 MiB) once into sha256+xxh128; files under the hash pool's threshold
  are hashed on the pipeline's one thread, so one core;
- a bare `os.scandir` + `lstat` walk of the tree (best of two).
Ratio = bound ÷ figure (target >= 70 %).  For information, one thread opening, reading and
hashing each file of the same sample (what the per-file cost of hashing small files is,
which the issue's byte term does not count), and the child's milestones ("watching",
"startup scan complete"), CPU and peak RSS.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import psutil
import xxhash

from bench import deep
from bench.ceilings import (
    HashCeiling,
    messages_like,
    publish_ceiling,
    scandir_stat,
    single_hash_ceiling,
)
from bench.harness import (
    MIB,
    Consumer,
    Ctx,
    Watcher,
    delete_queue,
    loadavg,
    peak_rss,
    remove_tree,
    say,
    write_big_file,
    write_roster,
)
from bench.restart import FILE_SIZE, _compile_bytecode, flat_tree
from multiwatch.watcher.hash_pool import BIG_FILE_BYTES

SETTLE = 0.2
SAMPLE = 20_000
INSTANCE = "bench-firststart"
TARGET = 0.70


def run(ctx: Ctx) -> None:
    flat_files = 10_000 if ctx.quick else 100_000
    artists = 250 if ctx.quick else 2_500
    base = ctx.scratch("firststart")
    say(f"firststart: an empty state over an existing tree; log INFO, settle {SETTLE}s; "
        f"{loadavg()}")
    big = base / "hash-ceiling.bin"
    write_big_file(big, 64 * MIB if ctx.quick else 256 * MIB)
    hashing = single_hash_ceiling(big)
    big.unlink()
    _compile_bytecode()
    with ctx.vhost("firststart") as url:
        trees: list[tuple[str, Callable[[Path], tuple[list[Path], int]]]] = [
            (f"{flat_files} files in {-(-flat_files // 1000)} directories",
             lambda tree: (flat_tree(tree, flat_files), -(-flat_files // 1000))),
            (f"library, {artists * deep.ALBUMS_PER_ARTIST * deep.TRACKS_PER_ALBUM} files in "
             f"{artists * (1 + deep.ALBUMS_PER_ARTIST)} directories",
             lambda tree: deep.build_tree(tree, artists)),
        ]
        for number, (label, build) in enumerate(trees):
            work = base / f"t{number}"
            began = time.monotonic()
            paths, dirs = build(work / "tree")
            say(f"  {label}: written in {time.monotonic() - began:.1f}s; {loadavg()}")
            _one_tree(ctx, url, work, paths, dirs, label, hashing)
            remove_tree(work)
    remove_tree(base)


def _hash_each(paths: list[Path]) -> float:
    """Seconds for one thread to open, read once into sha256+xxh128 and close each file."""
    started = time.perf_counter()
    for path in paths:
        sha, xxh = hashlib.sha256(), xxhash.xxh128()
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(fd, 1 << 20)
        finally:
            os.close(fd)
        sha.update(data)
        xxh.update(data)
    return time.perf_counter() - started


def _milestones(log: Path, started_wall: float) -> dict[str, float]:
    """Seconds from the command to the child's 'watching' and 'startup scan complete' lines
    (found by a byte search: at INFO the log has a line per file)."""
    found: dict[str, float] = {}
    wanted = {b'"message": "watching"': "watching",
              b'"message": "startup scan complete"': "scan complete"}
    with open(log, "rb") as f:
        for raw in f:
            for needle, name in wanted.items():
                if name not in found and needle in raw:
                    stamp = json.loads(raw)["timestamp"]
                    wall = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
                    found[name] = wall - started_wall
    return found


def _one_tree(ctx: Ctx, url: str, work: Path, paths: list[Path], dirs: int, label: str,
              hashing: HashCeiling) -> None:
    files = len(paths)
    tree = work / "tree"
    listed, walk_s = scandir_stat(tree)
    step = max(1, files // SAMPLE)
    sample = paths[::step][:SAMPLE]
    events = messages_like(sample, tree, INSTANCE, FILE_SIZE)
    publish = max((publish_ceiling(url, events, "unconfirmed", work) for _ in range(2)),
                  key=lambda r: r.rate)
    each_s = _hash_each(sample) * files / len(sample)
    cores = 1 if FILE_SIZE < BIG_FILE_BYTES else min(2, os.cpu_count() or 1)
    terms = {"publish": files / publish.rate,
             "hash": files * FILE_SIZE / (hashing.gbps * 1e9 * cores),
             "walk": walk_s}
    slowest = max(terms, key=lambda k: terms[k])
    bound = terms[slowest]
    say(f"  bound terms: publish {files} at {publish.rate:.0f} msg/s unconfirmed (sample of "
        f"{len(sample)}) = {terms['publish']:.2f}s; hash {files * FILE_SIZE / MIB:.0f} MiB at "
        f"{hashing.gbps:.2f} GB/s x {cores} core = {terms['hash']:.2f}s; scandir+lstat "
        f"{listed} files = {walk_s:.2f}s -> bound {bound:.2f}s ({slowest}); for information, "
        f"open+read+hash of each file, 1 thread: {each_s:.2f}s ({files / each_s:.0f} files/s)")
    queue = f"bench-firststart-{uuid.uuid4().hex[:6]}"
    consumer = Consumer(url, queue, work / "consumed.json", expect=files, linger=1.0,
                        deadline=600 + files / 100)
    roster = write_roster(work / "roster.yaml", state_dir=work / "state", url=url, queue=queue,
                          instances=[{"id": INSTANCE, "directory": str(tree),
                                      "settle_seconds": SETTLE}])
    watcher = Watcher(roster, work / "multiwatch.log")
    cpu = rss = 0.0
    try:
        got = consumer.result(timeout=600 + files / 100)
        for child in watcher.children():
            try:
                cpu += sum(child.cpu_times()[:2])
            except psutil.Error:
                continue
            rss = max(rss, peak_rss(child.pid))
    finally:
        watcher.stop()
        consumer.stop()
        delete_queue(url, queue)
    first = got.first_by_path()
    wanted = {str(p) for p in paths}
    delivered = len(wanted & first.keys())
    last = max((first[p] for p in wanted & first.keys()), default=watcher.started)
    took = last - watcher.started
    marks = _milestones(work / "multiwatch.log", watcher.started_wall)
    ratio = bound / took
    say(f"  first start: {delivered}/{files} announced in {took:.2f}s = {files / took:.0f} "
        f"files/s, {got.duplicates} duplicates; bound {bound:.2f}s -> {ratio:.0%}; child "
        + ", ".join(f"'{k}' {v:.2f}s" for k, v in marks.items())
        + f"; child CPU {cpu:.1f}s ({cpu / took:.0%} of the wall time), peak RSS "
        f"{rss / MIB:.1f} MiB; {loadavg()}")
    ctx.report.add("firststart", f"{label}: command -> all announced",
                   f"{took:.1f}s = {files / took:.0f} files/s; {delivered}/{files}, "
                   f"{got.duplicates} dup.",
                   ceiling=f"{bound:.1f}s {slowest} (publish {terms['publish']:.1f}, hash "
                           f"{terms['hash']:.2f}, walk {terms['walk']:.2f})",
                   ratio=f"{ratio:.0%}", target=f">= {TARGET:.0%}, all",
                   ok=ratio >= TARGET and delivered == files)

