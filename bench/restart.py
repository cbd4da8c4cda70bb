"""restart: a tree of N unchanged files that multiwatch already announced; on the later
starts (--runs of them, the best reported), the time from `multiwatch run` to the
"startup scan complete" log line, and how many bytes of file content the watcher child
read (0 expected: size, mtime and inode match the state database).  Ceiling: os.scandir +
lstat of the same tree, best of two, walked right before each start.

The figure is the whole wall time a user waits: the supervisor's interpreter and
imports, the spawn of the child (a fresh interpreter importing the watcher, kombu and
watchdog), opening the state database, then the walk and compare (which also adds the
inotify watches; a directory whose listing keeps its fingerprint needs none of its rows
read).  The ceiling is the walk alone, in an interpreter that is already
running, so the ratio charges multiwatch for everything else too (the "scan only" ratio
leaves process start out).  Both starts run from bytecode, as an installed multiwatch
does: this tree's modules are compiled first, because an environment with
PYTHONDONTWRITEBYTECODE would otherwise compile every module from source in both
processes at every start.
"""

from __future__ import annotations

import compileall
import os
import sqlite3
import statistics
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from bench.ceilings import scandir_stat
from bench.harness import (
    KIB,
    MIB,
    ROOT,
    Ctx,
    Watcher,
    delete_queue,
    loadavg,
    queue_depth,
    remove_tree,
    say,
    write_roster,
    write_small_files,
)

FILE_SIZE = 1 * KIB
PER_DIR = 1000
SETTLE = 0.2
INSTANCE = "bench-restart"


def _wall(line: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(line["timestamp"]).replace("Z", "+00:00")).timestamp()


def _read_chars(pid: int) -> int:
    try:
        return int(psutil.Process(pid).io_counters().read_chars)
    except psutil.Error:
        return -1


@dataclass(frozen=True)
class Shape:
    """Which tree a restart scenario measures: its report name and its instance id."""

    scenario: str
    instance: str
    label: str  # "100000 unchanged files", as the report rows say


def run(ctx: Ctx) -> None:
    """The flat tree: 100,000 files in 100 directories of 1,000."""
    files = 10_000 if ctx.quick else 100_000
    base = ctx.scratch("restart")
    tree = base / "tree"
    say(f"restart: {files} files x {FILE_SIZE // KIB} KiB in {-(-files // PER_DIR)} "
        f"directories; {loadavg()}")
    started = time.monotonic()
    flat_tree(tree, files)
    say(f"  tree written in {time.monotonic() - started:.1f}s")
    measure(ctx, base, tree, files, Shape("restart", INSTANCE, f"{files} unchanged files"))
    remove_tree(base)


def flat_tree(tree: Path, files: int) -> list[Path]:
    """Write `files` files of FILE_SIZE in directories of PER_DIR under `tree`."""
    dirs = [tree / f"r{i:03d}" for i in range(-(-files // PER_DIR))]
    for d in dirs:
        d.mkdir(parents=True)
    paths = [dirs[i // PER_DIR] / f"f{i:06d}.dat" for i in range(files)]
    write_small_files(paths, FILE_SIZE)
    return paths


def measure(ctx: Ctx, base: Path, tree: Path, files: int, shape: Shape) -> None:
    """A first start that announces the tree, then the restarts over it, unchanged."""
    _compile_bytecode()
    with ctx.vhost(shape.scenario) as url:
        queue = f"bench-{shape.scenario}-{uuid.uuid4().hex[:6]}"
        kwargs: dict[str, Any] = {"state_dir": base / "state", "url": url, "queue": queue,
                                  "instances": [{"id": shape.instance, "directory": str(tree),
                                                 "settle_seconds": SETTLE}]}
        try:
            _first_start(ctx, base, files, url, queue, kwargs, shape)
            _second_start(ctx, base, tree, files, url, queue, kwargs, shape)
        finally:
            delete_queue(url, queue)


def _compile_bytecode() -> None:
    """Write multiwatch's bytecode, as `pip install` does for an installed package."""
    compileall.compile_dir(str(ROOT / "multiwatch"), quiet=1)
    unset = "PYTHONDONTWRITEBYTECODE" not in os.environ
    say("  multiwatch compiled to bytecode ahead of both starts (as pip install does"
        + ("" if unset else "; this environment sets PYTHONDONTWRITEBYTECODE") + ")")


def _first_start(ctx: Ctx, base: Path, files: int, url: str, queue: str,
                 kwargs: dict[str, Any], shape: Shape) -> None:
    roster = write_roster(base / "roster.yaml", log_level="WARNING", **kwargs)
    watcher = Watcher(roster, base / "first.log")
    try:
        deadline = time.monotonic() + 120 + files / 100
        depth = 0
        while time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                depth = queue_depth(url, queue)
            except Exception:  # noqa: BLE001 - the queue is declared once the watcher connects
                continue
            if depth >= files:
                break
        took = time.monotonic() - watcher.started
    finally:
        watcher.stop()
    say(f"  first start (empty state): {depth}/{files} files announced in {took:.1f}s "
        f"= {depth / took:.0f} files/s (scan + hash + publish, log WARNING); {loadavg()}")
    if shape.scenario != "restart":  # the flat tree's first start is the burst's business
        ctx.report.add(shape.scenario, f"first start over {files} files: all announced",
                       f"{depth}/{files} in {took:.1f}s = {depth / took:.0f} files/s",
                       ok=depth >= files)


@dataclass
class _Restart:
    """The figures of one start over the announced tree."""

    total: float  # `multiwatch run` -> "startup scan complete"
    supervisor: float  # -> "supervisor started"
    watching: float  # -> the child's "watching"
    files_hashed: int
    bytes_hashed: int
    read_between: int  # child read_chars between "watching" and "startup scan complete"
    read_total: int
    new_events: int

    @property
    def scan(self) -> float:
        return self.total - self.watching


def _second_start(ctx: Ctx, base: Path, tree: Path, files: int, url: str, queue: str,
                  kwargs: dict[str, Any], shape: Shape) -> None:
    """`ctx.runs` starts over the unchanged tree, each right after a ceiling walk (best of
    two) of the same tree: the best start is reported against the best walk, and the
    median of each start's ratio to the walk just before it (on a shared machine a single
    run mostly measures the neighbours, and a pair shares them)."""
    walks: list[float] = []
    runs = []
    for number in range(max(1, ctx.runs)):
        listed, seconds = scandir_stat(tree)
        walks.append(seconds)
        runs.append(_restart_once(base, files, url, queue, kwargs, number))
    best = min(runs, key=lambda r: r.total)
    paired = statistics.median(walk / run.total for walk, run in zip(walks, runs, strict=True))
    state = base / "state" / "instances" / shape.instance
    # As after a crash: no directory fingerprints, so every directory's rows are read and
    # compared file by file (the scan fingerprints them again).
    with sqlite3.connect(state / "state.db") as conn:
        conn.execute("DELETE FROM directories")
    conn.close()
    say("  next start: the directory fingerprints deleted first, as after a crash")
    unvouched = _restart_once(base, files, url, queue, kwargs, len(runs))
    db_bytes = sum(p.stat().st_size for p in state.glob("state.db*"))
    tree_bytes = files * FILE_SIZE
    list_s = min(walks)
    ceiling = listed / list_s
    say(f"  best of {len(runs)}: {best.total:.2f}s (median "
        f"{statistics.median(r.total for r in runs):.2f}s); milestones of the best: supervisor "
        f"started {best.supervisor:.2f}s, child 'watching' (imports, state opened, root "
        f"watched) {best.watching:.2f}s, 'startup scan complete' (the walk adds the watches "
        f"below the root) {best.total:.2f}s")
    say(f"  child read_chars: {best.read_total / MIB:.1f} MiB in all by then (imports, "
        f"state.db {db_bytes / MIB:.1f} MiB, ...), {best.read_between / MIB:.2f} MiB between "
        f"'watching' and 'scan complete'; tree content {tree_bytes / MIB:.1f} MiB")
    say(f"  ceiling scandir+lstat of the same tree: {listed} files in {list_s:.2f}s "
        f"= {ceiling:.0f} files/s (best of the {len(walks)} walks, one before each start: "
        f"{', '.join(f'{w:.2f}' for w in walks)}s); each start against the walk just before "
        f"it: median {paired:.0%}")
    hashed = max(r.bytes_hashed for r in (*runs, unvouched))
    new_events = sum(r.new_events for r in (*runs, unvouched))
    ctx.report.add(shape.scenario, f"{shape.label}: start -> scan complete",
                   f"{best.total:.2f}s = {files / best.total:.0f} files/s (best of {len(runs)})",
                   ceiling=f"{ceiling:.0f} files/s scandir+lstat",
                   ratio=f"{files / best.total / ceiling:.0%} "
                         f"({files / best.scan / ceiling:.0%} scan only; paired median "
                         f"{paired:.0%})",
                   target=">= 50%", ok=files / best.total / ceiling >= 0.5)
    ctx.report.add(shape.scenario, f"{shape.label}, no fingerprints (as after a crash)",
                   f"{unvouched.total:.2f}s = {files / unvouched.total:.0f} files/s (one start)",
                   ceiling=f"{ceiling:.0f} files/s scandir+lstat",
                   ratio=f"{files / unvouched.total / ceiling:.0%}")
    ctx.report.add(shape.scenario, "bytes hashed / read between watching and complete",
                   f"{hashed} / {max(r.read_between for r in runs) / MIB:.2f} MiB",
                   ceiling=f"tree {tree_bytes / MIB:.0f} MiB", target="~0",
                   ok=hashed == 0 and new_events == 0)
    ctx.report.add("ceilings", "os.scandir + lstat", f"{ceiling:.0f} files/s")


def _restart_once(base: Path, files: int, url: str, queue: str, kwargs: dict[str, Any],
                  number: int) -> _Restart:
    before_depth = queue_depth(url, queue)
    roster = write_roster(base / "roster.yaml", log_level="INFO", **kwargs)
    watcher = Watcher(roster, base / f"restart-{number}.log")
    try:
        supervisor = watcher.wait_log(lambda line: line.get("message") == "supervisor started",
                                      timeout=120)
        watching = watcher.wait_log(lambda line: line.get("message") == "watching", timeout=120)
        child = watcher.wait_children(1)[0].pid
        read_at_watching = _read_chars(child)
        complete = watcher.wait_log(
            lambda line: line.get("message") == "startup scan complete", timeout=300 + files / 200)
        read_at_complete = _read_chars(child)
        time.sleep(1.5)
        new_events = queue_depth(url, queue) - before_depth
    finally:
        watcher.stop()
    started = watcher.started_wall
    run = _Restart(total=_wall(complete) - started, supervisor=_wall(supervisor) - started,
                   watching=_wall(watching) - started,
                   files_hashed=int(complete.get("files_hashed", -1)),
                   bytes_hashed=int(complete.get("bytes_hashed", -1)),
                   read_between=read_at_complete - read_at_watching,
                   read_total=read_at_complete, new_events=new_events)
    say(f"  start {number + 2}: 'startup scan complete' {run.total:.2f}s after `multiwatch run` "
        f"({files / run.total:.0f} files/s); from 'watching' {run.scan:.2f}s "
        f"({files / run.scan:.0f} files/s); files_hashed {run.files_hashed}, bytes_hashed "
        f"{run.bytes_hashed}; new events {run.new_events}; {loadavg()}")
    return run
