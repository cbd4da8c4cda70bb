"""replica-faults: two replicas of one instance (roster `ha`), each with a state_dir of its
own (as on two hosts).  The tree is written while both run, so the standby keeps its state
warm from the active replica's events; then one fault at a time on the active one, with a
burst of files written across the fault:

- SIGTERM of the active supervisor (a clean stop, as in a rollout: not a fault, for
  comparison);
- `kill -9` of the active supervisor's process group (also with a new standby, started after
  the tree was announced, which never saw its events);
- SIGSTOP of it (frozen, not dead; continued once the figures are taken);
- the active replica cut off from the broker (its connection goes through a TCP proxy that
  stops relaying: tests/support/frozen.py), with the direct URL as its route back;
- the broker node holding the lease stopped (`rabbitmqctl stop_app`; a private three-node
  cluster, tests/support/cluster.py, with a quorum queue): the active replica's connection,
  hence its exclusive lease queue, is on that node, the standby's on another.

Figures per fault: the time with no active replica (the fault → the first "took over" or
"holding the lease again" line of either replica, from their log timestamps), against the
target 2 x heartbeat + lease_retry_seconds; files lost (every file of the tree and of the
burst, counted by path on a consumer; on a surviving node for the cluster); repeats by
message_id (of the tree's unchanged files, and of the burst's: the in-flight window); the
bytes the new active replica hashed at takeover (its "startup scan complete" line) against
the bytes of the burst, which it may legitimately have to hash.  The tree's files (4 KiB)
are larger than the burst's (256 B), so hashing the unchanged tree shows at once.
Runs in the benchmark process; every process it starts runs in its own session and is
stopped by pid or process group.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import amqp
import yaml

from bench.consumer import BINDING_KEY, EXCHANGE, _connect
from bench.harness import (
    KIB,
    Ctx,
    Watcher,
    loadavg,
    queue_depth,
    remove_tree,
    say,
    write_small_files,
)
from tests.support.cluster import RabbitMQCluster
from tests.support.frozen import FreezableProxy, url_via

INSTANCE = "bench-replica"
HEARTBEAT = 4  # broker.heartbeat_seconds
LEASE_RETRY = 1.0  # ha.lease_retry_seconds
TARGET = 2 * HEARTBEAT + LEASE_RETRY
TREE_FILE = 4 * KIB
BURST_FILE = 256
TAKEOVER = "took over as the active replica of this instance"
HELD_AGAIN = "holding the lease again"
REANNOUNCED = "re-announcing the previous active replica's in-flight window"
STANDING_BY = "another replica is active; standing by"
FAULTS = ("SIGTERM", "kill -9", "SIGSTOP", "cut off", "lease node stopped")


@dataclass
class Outcome:
    """What one fault gave."""

    fault: str
    warm: bool  # the standby was running while the tree was announced
    gap: float | None = None  # fault → a replica holds the lease again (s)
    who: str = ""
    said: float | None = None  # the takeover line's no_active_replica_seconds
    lost: int = 0
    expected: int = 0
    repeats_tree: int = 0
    repeats_burst: int = 0
    several_ids: int = 0  # files that came under more than one message_id
    window: int | None = None  # events the new active replica published again (its log)
    hashed: int | None = None  # bytes the new active replica hashed at takeover
    hashed_files: int | None = None
    burst_bytes: int = 0
    notes: list[str] = field(default_factory=list)


def run(ctx: Ctx) -> None:
    files = 1_000 if ctx.quick else 10_000
    burst = 300
    say(f"replica-faults: {files} files of {TREE_FILE // KIB} KiB, then a burst of "
        f"{burst} files of {BURST_FILE} B across each fault; heartbeat {HEARTBEAT} s, "
        f"lease_retry_seconds {LEASE_RETRY:g} (target {TARGET:g} s); {loadavg()}")
    outcomes: list[Outcome] = []
    for fault in FAULTS[:4]:
        with ctx.vhost("replica-faults") as url:
            outcomes.append(_one_fault(ctx, fault, files, burst, [url], [url]))
    with ctx.vhost("replica-faults") as url:  # the standby started after the tree was announced
        outcomes.append(_one_fault(ctx, "kill -9", files, burst, [url], [url], warm=False))
    began = time.monotonic()
    cluster = RabbitMQCluster.start()
    say(f"  three-node cluster booted in {time.monotonic() - began:.1f}s")
    try:
        urls = [node.amqp_url for node in cluster.nodes]
        outcomes.append(_one_fault(ctx, FAULTS[4], files, burst, urls, [*urls[1:], urls[0]],
                                   cluster=cluster))
    finally:
        cluster.stop()
    for outcome in outcomes:
        _report(ctx, outcome)


def _report(ctx: Ctx, o: Outcome) -> None:
    name = f"replica-faults, {o.fault}" + ("" if o.warm else " (a new standby)")
    if o.gap is None:
        ctx.report.add(name, "time with no active replica", "no replica took over",
                       target=f"≤ {TARGET:g} s", ok=False)
    else:
        said = f"; its log says ≤ {o.said:.1f} s" if o.said is not None else ""
        ctx.report.add(name, "time with no active replica",
                       f"{o.gap:.1f} s ({o.who}{said})",
                       ceiling=f"2 x {HEARTBEAT} s heartbeat + {LEASE_RETRY:g} s",
                       ratio=f"{o.gap / TARGET:.2f}", target=f"≤ {TARGET:g} s",
                       ok=o.gap <= TARGET)
    ctx.report.add(name, "files lost", f"{o.lost} of {o.expected}", target="0", ok=o.lost == 0)
    # The new active replica publishes the failed one's in-flight window again (the tree's
    # last events too when the burst followed them closely): repeats only from it.
    window = "" if o.window is None else f" (in-flight window published again: {o.window})"
    several = f"; {o.several_ids} files under more than one id" if o.several_ids else ""
    if o.warm:
        ctx.report.add(name, "repeats by message_id",
                       f"{o.repeats_tree} of unchanged files, {o.repeats_burst} of the burst"
                       + window + several, target="only the in-flight window",
                       ok=o.repeats_tree <= (o.window or 0) and not o.several_ids)
    else:  # never warm: it reconciles like a first start, under the same message ids
        ctx.report.add(name, "repeats by message_id",
                       f"{o.repeats_tree} of unchanged files, {o.repeats_burst} of the burst"
                       + window + several,
                       target="every file again, same message_id", ok=not o.several_ids)
    if o.hashed is not None and not o.warm:
        ctx.report.add(name, "bytes hashed at takeover",
                       f"{o.hashed:,} B ({o.hashed_files} files)",
                       target="the tree (never warm)", ok=True)
    elif o.hashed is None:
        ctx.report.add(name, "bytes hashed at takeover", "no new scan (the same process "
                       "took the lease again)", target="0 for unchanged files", ok=True)
    else:
        ctx.report.add(name, "bytes hashed at takeover",
                       f"{o.hashed:,} B ({o.hashed_files} files)",
                       ceiling=f"the burst: {o.burst_bytes:,} B",
                       target="0 for unchanged files", ok=o.hashed <= o.burst_bytes)
    for note in o.notes:
        say(f"  note ({o.fault}): {note}")


# ---- one fault ----------------------------------------------------------------------------

def _one_fault(ctx: Ctx, fault: str, files: int, burst_count: int, urls_a: list[str],
               urls_b: list[str], cluster: RabbitMQCluster | None = None,
               warm: bool = True) -> Outcome:
    """Warm: the tree is written while both replicas run (the standby applies the active
    one's events to its own state); else before the standby starts (it never saw them)."""
    base = ctx.scratch("replica-faults")
    tree = base / "tree"
    tree.mkdir()
    paths = [tree / f"t{i:06d}.dat" for i in range(files)]
    queue = f"bench-replica-{uuid.uuid4().hex[:6]}"
    quorum = cluster is not None
    _declare(urls_b[0], queue, quorum=quorum)
    outcome = Outcome(fault, warm, expected=files + burst_count,
                      burst_bytes=burst_count * BURST_FILE)
    proxy: FreezableProxy | None = None
    if fault == "cut off":
        host, port = _host_port(urls_a[0])
        proxy = FreezableProxy((host, port))
        urls_a = [url_via(urls_a[0], proxy.port), urls_a[0]]
    say(f"  {fault}: two replicas, {files} files, " + (
        "written while the standby runs" if warm else "announced before the standby starts"))
    a = Watcher(_roster(base / "a.yaml", base / "state-a", urls_a, queue, tree, quorum),
                base / "a.log")
    b: Watcher | None = None
    frozen = False
    try:
        a.wait_log(lambda line: line.get("message") == "startup scan complete", 120)
        if not warm:
            write_small_files(paths, TREE_FILE)
            _wait_depth(urls_b[0], queue, files, 120 + files / 50)
        b = Watcher(_roster(base / "b.yaml", base / "state-b", urls_b, queue, tree, quorum),
                    base / "b.log")
        b.wait_log(lambda line: line.get("message") == STANDING_BY, 60)
        with contextlib.suppress(RuntimeError):  # a warm standby says so (not every version)
            b.wait_log(lambda line: str(line.get("message", "")).startswith(
                "standby is warm"), 10)
        if warm:
            write_small_files(paths, TREE_FILE)
            _wait_depth(urls_b[0], queue, files, 120 + files / 50)
            if not _wait_tracked(base / "state-b", files, 60):
                outcome.notes.append("the standby had not applied every event of the tree "
                                     "within 60 s")
        marks = len(a.lines), len(b.lines)
        writer = _Burst(tree, burst_count)
        writer.start()
        writer.wait_written(burst_count // 3)
        fault_at = time.time()
        if fault == "SIGTERM":
            a.process.send_signal(signal.SIGTERM)  # a clean stop: a rollout, systemctl stop
        elif fault == "kill -9":
            os.killpg(a.pid, signal.SIGKILL)
        elif fault == "SIGSTOP":
            os.killpg(a.pid, signal.SIGSTOP)
            frozen = True
        elif fault == "cut off":
            assert proxy is not None
            proxy.freeze()
        else:
            assert cluster is not None
            cluster.nodes[0].rabbitmqctl("stop_app", timeout=120)
        writer.join(60)
        _takeover(outcome, a, b, marks, fault_at)
        consumer_url = urls_b[0]
        seen = _drain(consumer_url, queue, tree, files, writer.names, 120)
        outcome.lost = outcome.expected - seen.distinct_paths
        if seen.missing:
            kept = ctx.out / f"replica-faults-{uuid.uuid4().hex[:6]}"
            kept.mkdir(parents=True)
            for log in (a.log_path, b.log_path):
                shutil.copy(log, kept / Path(log).name)
            outcome.notes.append(f"never delivered: {', '.join(sorted(seen.missing)[:5])}; "
                                 f"both logs kept in {kept}")
        outcome.repeats_tree, outcome.repeats_burst = seen.repeats_tree, seen.repeats_burst
        outcome.several_ids = seen.several_ids
    finally:
        if frozen:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(a.pid, signal.SIGCONT)
        a.stop()
        if b is not None:
            b.stop()
        if proxy is not None:
            proxy.close()
        with contextlib.suppress(Exception):
            _delete(urls_b[0], queue)
        remove_tree(base)
    return outcome


def _takeover(outcome: Outcome, a: Watcher, b: Watcher, marks: tuple[int, int],
              fault_at: float) -> None:
    """The first line, after the fault, saying a replica holds the lease; then the new
    active replica's scan."""
    deadline = time.monotonic() + 120
    found: tuple[str, Watcher, int, dict[str, Any]] | None = None
    while found is None and time.monotonic() < deadline:
        for who, watcher, mark in (("the standby took over", b, marks[1]),
                                   ("the same replica took it again", a, marks[0])):
            if watcher.process.poll() is None:
                watcher._read_new()
            for index, line in enumerate(watcher.lines[mark:], start=mark):
                if line.get("message") in (TAKEOVER, HELD_AGAIN):
                    found = who, watcher, index, line
                    break
            if found:
                break
        time.sleep(0.05)
    if found is None:
        outcome.notes.append("no replica held the lease within 120 s")
        return
    who, watcher, index, line = found
    outcome.who = who
    outcome.gap = _wall(line) - fault_at
    if "no_active_replica_seconds" in line:
        outcome.said = float(line["no_active_replica_seconds"])
    if line.get("message") == HELD_AGAIN:
        return
    since = marks[1] if watcher is b else marks[0]
    with contextlib.suppress(RuntimeError):
        watcher.wait_log(lambda ln: ln.get("message") == "startup scan complete", 120)
    for window in watcher.lines[since:]:  # (logged as the lease is taken, before the scan)
        if str(window.get("message", "")).startswith(REANNOUNCED):
            outcome.window = int(window.get("events", 0))
            break
    for scan in watcher.lines[index:]:
        if scan.get("message") == "startup scan complete":
            outcome.hashed = int(scan.get("bytes_hashed", 0))
            outcome.hashed_files = int(scan.get("files_hashed", 0))
            break


def _wall(line: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(line["timestamp"]).replace("Z", "+00:00")).timestamp()


def _wait_tracked(state_dir: Path, count: int, timeout: float) -> bool:
    """Until a state database of the replica tracks `count` files (the standby applied the
    active replica's events); False at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for db in (state_dir / "instances" / INSTANCE).glob("state*.db"):
            with contextlib.suppress(sqlite3.Error):
                conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
                try:
                    if conn.execute("SELECT count(*) FROM files").fetchone()[0] >= count:
                        return True
                finally:
                    conn.close()
        time.sleep(0.5)
    return False


def _wait_depth(url: str, queue: str, count: int, timeout: float) -> None:
    """Until `queue` holds `count` messages (the first replica announced the tree)."""
    deadline = time.monotonic() + timeout
    while queue_depth(url, queue) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the tree's {count} files were not announced in {timeout:.0f}s")
        time.sleep(0.5)


# ---- broker -------------------------------------------------------------------------------

def _host_port(url: str) -> tuple[str, int]:
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 5672


def _declare(url: str, queue: str, *, quorum: bool) -> None:
    """The application's topology, with the arguments the publisher declares its queue with."""
    conn = _connect(url)
    try:
        channel = conn.channel()
        channel.exchange_declare(EXCHANGE, "topic", durable=True, auto_delete=False)
        channel.queue_declare(queue, durable=True, auto_delete=False,
                              arguments={"x-queue-type": "quorum"} if quorum else None)
        channel.queue_bind(queue, EXCHANGE, BINDING_KEY)
    finally:
        conn.close()


def _delete(url: str, queue: str) -> None:
    conn = _connect(url)
    try:
        conn.channel().queue_delete(queue)
    finally:
        conn.close()


@dataclass
class _Seen:
    distinct_paths: int
    repeats_tree: int
    repeats_burst: int
    missing: set[str]
    several_ids: int


def _drain(url: str, queue: str, tree: Path, files: int, burst: list[str],
           timeout: float) -> _Seen:
    """Consume until every file of the tree and of the burst came (and 2 s more, for
    repeats) or `timeout`; repeats counted by message_id."""
    want = {str(tree / f"t{i:06d}.dat") for i in range(files)} | {str(tree / n) for n in burst}
    paths: set[str] = set()
    ids: set[str] = set()
    ids_of: dict[str, set[str]] = {}
    repeats = {"tree": 0, "burst": 0}

    def on_message(message: amqp.Message) -> None:
        import json
        body = json.loads(message.body)
        path = (body.get("file_info") or {}).get("path", "")
        message_id = str(message.properties.get("message_id"))
        if message_id in ids:
            repeats["tree" if os.path.basename(path).startswith("t") else "burst"] += 1
        ids.add(message_id)
        paths.add(path)
        ids_of.setdefault(path, set()).add(message_id)

    conn = _connect(url)
    try:
        channel = conn.channel()
        channel.basic_qos(0, 2000, False)
        channel.basic_consume(queue, callback=on_message, no_ack=True)
        deadline = time.monotonic() + timeout
        linger: float | None = None
        while time.monotonic() < (linger or deadline):
            if linger is None and want <= paths:
                linger = time.monotonic() + 2
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=0.2)
    finally:
        with contextlib.suppress(Exception):
            conn.close()
    return _Seen(len(want & paths), repeats["tree"], repeats["burst"], want - paths,
                 sum(1 for got in ids_of.values() if len(got) > 1))


# ---- files and rosters --------------------------------------------------------------------

def _roster(path: Path, state_dir: Path, urls: list[str], queue: str, tree: Path,
            quorum: bool) -> Path:
    broker: dict[str, Any] = {"url": urls, "queue": queue, "heartbeat_seconds": HEARTBEAT,
                              "connect_timeout_seconds": 2, "confirm_timeout_seconds": 3,
                              "reconnect_max_seconds": 2}
    if quorum:
        broker["queue_type"] = "quorum"
    path.write_text(yaml.safe_dump({
        "state_dir": str(state_dir), "log_level": "INFO", "broker": broker,
        "http": {"listen": "off"},
        "supervisor": {"stop_timeout_seconds": 10, "report_interval_seconds": 3600},
        "ha": {"enabled": True, "lease_retry_seconds": LEASE_RETRY},
        "instances": [{"id": INSTANCE, "directory": str(tree), "settle_seconds": 0.1}],
    }, sort_keys=False))
    return path


class _Burst(threading.Thread):
    """`count` files of BURST_FILE bytes, 10 at a time, over about 3 s."""

    def __init__(self, tree: Path, count: int) -> None:
        super().__init__(name="replica-faults-burst", daemon=True)
        self.names = [f"b{i:05d}.dat" for i in range(count)]
        self._tree = tree
        self._pause = 3.0 / max(1, count // 10)
        self.written = 0
        self._changed = threading.Condition()

    def run(self) -> None:
        for start in range(0, len(self.names), 10):
            for name in self.names[start:start + 10]:
                (self._tree / name).write_bytes(name.encode().ljust(BURST_FILE, b"."))
            with self._changed:
                self.written = min(start + 10, len(self.names))
                self._changed.notify_all()
            time.sleep(self._pause)

    def wait_written(self, count: int, timeout: float = 30) -> None:
        def until() -> bool:
            return self.written >= count or not self.is_alive()

        with self._changed:
            self._changed.wait_for(until, timeout)
