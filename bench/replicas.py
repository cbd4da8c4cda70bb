"""replicas: a takeover by a warm standby over N unchanged files (roster `ha`).

Two supervisors run one instance on two state_dirs, as on two hosts: the first becomes the
active replica, the second stands by and applies the active one's events to its own state
database.  N files (directories of 1,000, written beside the watched directory and renamed
into it, so the active replica scans them in) are announced by the active replica; once
the standby's database tracks all N, the active supervisor's process group is killed (-9).
Printed: the time with no active replica (kill → the standby's "took over" line; target
<= 2 x the AMQP heartbeat + lease_retry_seconds), the time to the end of its reconcile,
the bytes it hashed and the events it announced at takeover (target 0 and 0; how many of
them its in-flight window published again, from its log), and the
standby's catch-up (how long after the active replica's last announcement its database
tracked every file).  Ceiling: os.scandir + lstat of the same tree (the reconcile's walk).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from bench.ceilings import scandir_stat
from bench.harness import (
    KIB,
    Ctx,
    Watcher,
    delete_queue,
    loadavg,
    queue_depth,
    remove_tree,
    say,
)
from bench.restart import FILE_SIZE, PER_DIR, flat_tree

INSTANCE = "bench-replicas"
HEARTBEAT_SECONDS = 5
LEASE_RETRY_SECONDS = 2.0
TARGET_SECONDS = 2 * HEARTBEAT_SECONDS + LEASE_RETRY_SECONDS


def _wall(line: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(line["timestamp"]).replace("Z", "+00:00")).timestamp()


def _roster(path: Path, *, state_dir: Path, url: str, queue: str, tree: Path,
            log_level: str) -> Path:
    path.write_text(yaml.safe_dump({
        "state_dir": str(state_dir), "log_level": log_level,
        "broker": {"url": url, "queue": queue, "heartbeat_seconds": HEARTBEAT_SECONDS},
        "http": {"listen": "off"},
        "ha": {"enabled": True, "lease_retry_seconds": LEASE_RETRY_SECONDS},
        "supervisor": {"stop_timeout_seconds": 20, "report_interval_seconds": 3600},
        "instances": [{"id": INSTANCE, "directory": str(tree), "settle_seconds": 0.2}],
    }, sort_keys=False))
    return path


def _tracked(state_dir: Path) -> int:
    """Files in a replica's state.db (read-only; 0 before it exists)."""
    db = state_dir / "instances" / INSTANCE / "state.db"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("SELECT n FROM counts WHERE name = 'files'").fetchone()[0])
    except sqlite3.Error:
        return 0


def _wait(what: str, check: Any, timeout: float, poll: float = 0.2) -> float:
    """Poll `check` until true; the monotonic time it was first seen true."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"replicas: {what} not seen within {timeout:.0f}s")
        time.sleep(poll)
    return time.monotonic()


def run(ctx: Ctx) -> None:
    files = 10_000 if ctx.quick else 100_000
    base = ctx.scratch("replicas")
    staging, tree = base / "staging", base / "tree"
    tree.mkdir()
    say(f"replicas: {files} files x {FILE_SIZE // KIB} KiB in {-(-files // PER_DIR)} "
        f"directories; heartbeat {HEARTBEAT_SECONDS}s, lease_retry {LEASE_RETRY_SECONDS}s; "
        f"{loadavg()}")
    flat_tree(staging, files)
    with ctx.vhost("replicas") as url:
        queue = f"bench-replicas-{uuid.uuid4().hex[:6]}"
        rosters = [_roster(base / f"{name}.yaml", state_dir=base / name, url=url, queue=queue,
                           tree=tree, log_level=level)
                   for name, level in (("a", "WARNING"), ("b", "INFO"))]
        active = Watcher(rosters[0], base / "a.log")
        try:
            _measure(ctx, files, url, queue, base, staging, tree, active, rosters)
        finally:
            active.stop()
            delete_queue(url, queue)
    remove_tree(base)


def _measure(ctx: Ctx, files: int, url: str, queue: str, base: Path, staging: Path,
             tree: Path, active: Watcher, rosters: list[Path]) -> None:
    _wait("the active replica's queue", lambda: _depth(url, queue) >= 0, 60)
    standby = Watcher(rosters[1], base / "b.log")
    try:
        standby.wait_log(lambda line: str(line.get("message", "")).startswith(
            "standby is warm"), timeout=60)
        started = time.monotonic()
        for directory in sorted(staging.iterdir()):
            os.rename(directory, tree / directory.name)
        announced_at = _wait("every file announced", lambda: _depth(url, queue) >= files,
                             120 + files / 50, poll=0.5)
        warm_at = _wait("every file in the standby's database",
                        lambda: _tracked(base / "b") >= files, 120, poll=0.1)
        depth = _depth(url, queue)
        say(f"  active replica announced {depth}/{files} in {announced_at - started:.1f}s; "
            f"the standby's database tracked all {files} "
            f"{max(warm_at - announced_at, 0):.1f}s after that (polled every 0.1s)")
        listed, walk = scandir_stat(tree)
        killed_at = time.time()
        os.killpg(active.pid, signal.SIGKILL)
        took = standby.wait_log(lambda line: line.get("message") == "took over as the active "
                                "replica of this instance", timeout=120)
        window = standby.wait_log(lambda line: str(line.get("message", "")).startswith(
            "re-announcing the previous active replica's in-flight window"), timeout=120)
        scan = standby.wait_log(lambda line: line.get("message") == "startup scan complete",
                                timeout=120 + files / 1000)
        time.sleep(2.0)  # what the new active replica announces is in the queue by now
        announced = _depth(url, queue) - depth
        gap = _wall(took) - killed_at
        reconciled = _wall(scan) - killed_at
        say(f"  kill -9 of the active replica: took over after {gap:.2f}s (its own count: "
            f"{took.get('no_active_replica_seconds')}s; target <= {TARGET_SECONDS:.0f}s), "
            f"reconciled {listed} files {reconciled:.2f}s after the kill (scan "
            f"{scan.get('elapsed_seconds')}s; ceiling walk {walk:.2f}s): "
            f"{scan.get('bytes_hashed')} bytes hashed, {scan.get('files_hashed')} files "
            f"hashed, {announced} events announced ({window.get('events')} of them the "
            f"in-flight window published again)")
        ctx.report.add("replicas", f"takeover (kill -9) over {files} unchanged files: time "
                       "with no active replica", f"{gap:.2f}s",
                       target=f"<= {TARGET_SECONDS:.0f}s", ok=gap <= TARGET_SECONDS)
        ctx.report.add("replicas", f"takeover over {files} unchanged files: bytes hashed, "
                       "events announced", f"{scan.get('bytes_hashed')} B, {announced}",
                       target="0 B, 0", ok=scan.get("bytes_hashed") == 0 and announced == 0)
        ctx.report.add("replicas", f"takeover over {files} unchanged files: kill -> "
                       "reconciled", f"{reconciled:.2f}s",
                       ceiling=f"walk {walk:.2f}s", ratio=f"{reconciled / max(walk, 1e-6):.1f}x")
    finally:
        standby.stop()


def _depth(url: str, queue: str) -> int:
    try:
        return queue_depth(url, queue)
    except Exception:  # noqa: BLE001 - the queue is declared once the watcher connects
        return -1
