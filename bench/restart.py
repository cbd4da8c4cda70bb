"""restart: a tree of N unchanged files that multiwatch already announced; on the second
start, the time from `multiwatch run` to the "startup scan complete" log line, and how many
bytes of file content the watcher child read (0 expected: size, mtime and inode match the
state database).  Ceiling: os.scandir + lstat of the same tree.

The figure is the whole wall time a user waits: the supervisor's interpreter and imports,
the spawn of the child (a fresh interpreter importing the watcher, kombu and watchdog),
loading the files table, adding the inotify watches, then the walk and compare.  The
ceiling is the walk alone, in an interpreter that is already running, so the ratio charges
multiwatch for everything else too (the "scan only" ratio leaves process start out).  Both
starts run from bytecode, as an installed multiwatch does: this tree's modules are compiled
first, because an environment with PYTHONDONTWRITEBYTECODE would otherwise compile every
module from source in both processes at every start.
"""

from __future__ import annotations

import compileall
import os
import time
import uuid
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


def run(ctx: Ctx) -> None:
    files = 10_000 if ctx.quick else 100_000
    base = ctx.scratch("restart")
    tree = base / "tree"
    dirs = [tree / f"r{i:03d}" for i in range(-(-files // PER_DIR))]
    for d in dirs:
        d.mkdir(parents=True)
    paths = [dirs[i // PER_DIR] / f"f{i:06d}.dat" for i in range(files)]
    say(f"restart: {files} files x {FILE_SIZE // KIB} KiB in {len(dirs)} directories; {loadavg()}")
    started, written = write_small_files(paths, FILE_SIZE)
    say(f"  tree written in {written - started:.1f}s")
    _compile_bytecode()
    with ctx.vhost("restart") as url:
        queue = f"bench-restart-{uuid.uuid4().hex[:6]}"
        kwargs: dict[str, Any] = {"state_dir": base / "state", "url": url, "queue": queue,
                                  "instances": [{"id": INSTANCE, "directory": str(tree),
                                                 "settle_seconds": SETTLE}]}
        try:
            _first_start(base, files, url, queue, kwargs)
            _second_start(ctx, base, tree, files, url, queue, kwargs)
        finally:
            delete_queue(url, queue)
    remove_tree(base)


def _compile_bytecode() -> None:
    """Write multiwatch's bytecode, as `pip install` does for an installed package."""
    compileall.compile_dir(str(ROOT / "multiwatch"), quiet=1)
    unset = "PYTHONDONTWRITEBYTECODE" not in os.environ
    say("  multiwatch compiled to bytecode ahead of both starts (as pip install does"
        + ("" if unset else "; this environment sets PYTHONDONTWRITEBYTECODE") + ")")


def _first_start(base: Path, files: int, url: str, queue: str, kwargs: dict[str, Any]) -> None:
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


def _second_start(ctx: Ctx, base: Path, tree: Path, files: int, url: str, queue: str,
                  kwargs: dict[str, Any]) -> None:
    before_depth = queue_depth(url, queue)
    roster = write_roster(base / "roster.yaml", log_level="INFO", **kwargs)
    watcher = Watcher(roster, base / "second.log")
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
    total = _wall(complete) - watcher.started_wall
    scan = _wall(complete) - _wall(watching)
    state = base / "state" / "instances" / INSTANCE
    db_bytes = sum(p.stat().st_size for p in state.glob("state.db*"))
    tree_bytes = files * FILE_SIZE
    hashed = int(complete.get("bytes_hashed", -1))
    listed, list_s = scandir_stat(tree)
    ceiling = listed / list_s
    say(f"  second start: 'startup scan complete' {total:.2f}s after `multiwatch run` "
        f"({files / total:.0f} files/s); from 'watching' {scan:.2f}s ({files / scan:.0f} files/s);"
        f" files_hashed {complete.get('files_hashed')}, bytes_hashed {hashed}; "
        f"new events {new_events}; {loadavg()}")
    say(f"  milestones after `multiwatch run`: supervisor started "
        f"{_wall(supervisor) - watcher.started_wall:.2f}s, child 'watching' (imports, files "
        f"table loaded, inotify watches added) {_wall(watching) - watcher.started_wall:.2f}s, "
        f"'startup scan complete' {total:.2f}s")
    say(f"  child read_chars: {read_at_complete / MIB:.1f} MiB in all by then (imports, "
        f"state.db {db_bytes / MIB:.1f} MiB, ...), "
        f"{(read_at_complete - read_at_watching) / MIB:.2f} MiB between 'watching' and "
        f"'scan complete'; tree content {tree_bytes / MIB:.1f} MiB")
    say(f"  ceiling scandir+lstat of the same tree: {listed} files in {list_s:.2f}s "
        f"= {ceiling:.0f} files/s")
    ctx.report.add("restart", f"{files} unchanged files: start -> scan complete",
                   f"{total:.2f}s = {files / total:.0f} files/s",
                   ceiling=f"{ceiling:.0f} files/s scandir+lstat",
                   ratio=f"{files / total / ceiling:.0%} ({files / scan / ceiling:.0%} scan only)",
                   target=">= 50%", ok=files / total / ceiling >= 0.5)
    ctx.report.add("restart", "bytes hashed / read between watching and complete",
                   f"{hashed} / {(read_at_complete - read_at_watching) / MIB:.2f} MiB",
                   ceiling=f"tree {tree_bytes / MIB:.0f} MiB", target="~0",
                   ok=hashed == 0 and new_events == 0)
    ctx.report.add("ceilings", "os.scandir + lstat", f"{ceiling:.0f} files/s")
