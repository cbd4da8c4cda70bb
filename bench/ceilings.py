"""Ceilings measured in the same run, on the same bytes, messages and trees as the scenarios.

- hashing: one plain Python read loop feeding sha256 and xxh128 (what any Python watcher
  must do at least), one thread; and two threads on two different files (the 2-core ceiling);
- publishing: raw kombu publish of the same message bodies and properties to the same
  broker and topology (durable topic exchange file_events, durable queue bound file.#,
  delivery_mode=2) without confirms, with a wait per message, and with pipelined confirms
  in batches of 256 — timed from the first publish until a consumer received the last one,
  the same end point as the burst; plus py-amqp without kombu's Producer, pipelined, to
  show what kombu's per-message overhead costs;
- listing: os.scandir + lstat of the same tree, best of two warm runs.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import amqp
import xxhash
from kombu import Connection, Exchange, Producer, Queue

from bench.harness import (
    GIB,
    Consumer,
    amqp_connection,
    delete_queue,
    in_threads,
    say,
    wait_writeback,
    write_big_file,
)
from multiwatch.watcher.hash_split import page_aligned
from multiwatch.watcher.hashing import FileVersion, Hashed
from multiwatch.watcher.message import FILE_DISCOVERED, Event, build_event

CHUNK = 1 << 20
CONFIRM_BATCH = 256
PUBLISH_MODES = ("unconfirmed", "confirm-each", "confirm-pipelined", "pyamqp-pipelined")


# ---- hashing ------------------------------------------------------------------------------

def hash_once(path: Path, *, sha: bool = True, xxh: bool = True) -> tuple[float, str]:
    """Seconds to read `path` once feeding the chosen hashes; the sha256 hex (or '')."""
    sha256 = hashlib.sha256() if sha else None
    xxh128 = xxhash.xxh128() if xxh else None
    # Page-aligned, so the ceiling never pays for a buffer that glibc placed 16 bytes into a
    # page (the kernel's copy into it is several times slower; see hash_split.page_aligned).
    view = page_aligned(CHUNK)
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while count := f.readinto(view):
            chunk = view[:count]
            if sha256 is not None:
                sha256.update(chunk)
            if xxh128 is not None:
                xxh128.update(chunk)
    return time.perf_counter() - started, sha256.hexdigest() if sha256 else ""


@dataclass
class HashCeiling:
    gbps: float  # sha256+xxh128, one thread, GB/s (10^9)
    read_gbps: float
    sha_gbps: float
    xxh_gbps: float
    sha256: str


def single_hash_ceiling(path: Path) -> HashCeiling:
    size = path.stat().st_size
    wait_writeback()
    hash_once(path, sha=False, xxh=False)  # warm the page cache like the watcher found it
    read_s, _ = hash_once(path, sha=False, xxh=False)
    sha_s, _ = hash_once(path, xxh=False)
    xxh_s, _ = hash_once(path, sha=False)
    both = [hash_once(path) for _ in range(5)]
    best_s, digest = min(both)
    ceiling = HashCeiling(size / best_s / 1e9, size / read_s / 1e9, size / sha_s / 1e9,
                          size / xxh_s / 1e9, digest)
    say(f"  ceiling hash, 1 thread, {size / GIB:.2f} GiB: sha256+xxh128 {ceiling.gbps:.2f} GB/s "
        f"(read only {ceiling.read_gbps:.2f}, sha256 only {ceiling.sha_gbps:.2f}, "
        f"xxh128 only {ceiling.xxh_gbps:.2f} GB/s)")
    return ceiling


def fresh_write_hash_rate(path: Path, size: int) -> float:
    """GB/s of the same one-thread read, started right after writing a new `size`-byte file
    (as the watcher must: the kernel is still writing the dirty pages back), without
    waiting for writeback.  Not the issue's ceiling, which is measured on settled pages;
    it shows what the same read loop gets in the watcher's conditions."""
    wait_writeback()
    write_big_file(path, size)
    seconds, _ = hash_once(path)
    path.unlink()
    return size / seconds / 1e9


def parallel_hash_ceiling(paths: Sequence[Path]) -> tuple[float, dict[str, str]]:
    """Aggregate GB/s of one thread per file, each reading once into sha256+xxh128; best of 3."""
    digests: dict[str, str] = {}

    def work(path: Path) -> None:
        digests[str(path)] = hash_once(path)[1]

    wait_writeback()
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        in_threads(work, paths)
        best = min(best, time.perf_counter() - started)
    total = sum(p.stat().st_size for p in paths)
    return total / best / 1e9, digests


# ---- listing ------------------------------------------------------------------------------

def scandir_stat(root: Path) -> tuple[int, float]:
    """(regular files, seconds) for a recursive os.scandir + lstat walk; best of two."""
    best = float("inf")
    files = 0
    for _ in range(2):
        started = time.perf_counter()
        files = 0
        pending = [str(root)]
        while pending:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        pending.append(entry.path)
                    elif stat.S_ISREG(st.st_mode):
                        files += 1
        best = min(best, time.perf_counter() - started)
    return files, best


# ---- publishing ---------------------------------------------------------------------------

def messages_like(paths: Sequence[Path], root: Path, instance_id: str,
                  size: int) -> list[Event]:
    """The file_discovered events multiwatch builds for these paths (same body sizes)."""
    events = []
    for index, path in enumerate(paths):
        hashed = Hashed(version=FileVersion(size=size, mtime_ns=time.time_ns(), inode=index + 1),
                        sha256=hashlib.sha256(str(path).encode()).hexdigest(),
                        xxh128=uuid.uuid4().hex, ctime_ns=time.time_ns())
        events.append(build_event(event_type=FILE_DISCOVERED, instance_id=instance_id,
                                  watched_directory=str(root),
                                  relative_path=str(path.relative_to(root)), hashed=hashed))
    return events


@dataclass
class PublishCeiling:
    mode: str
    published_s: float  # first publish → last publish call returned (and confirms, if any)
    delivered_s: float  # first publish → consumer received the last message
    delivered: int

    @property
    def rate(self) -> float:
        return self.delivered / self.delivered_s if self.delivered_s > 0 else 0.0


class _Acks:
    """Publisher-confirm bookkeeping: delivery tags sent and not yet acked."""

    def __init__(self) -> None:
        self.sent = 0
        self.pending: set[int] = set()

    def on_ack(self, tag: int, multiple: bool) -> None:
        if multiple:
            self.pending.difference_update({t for t in self.pending if t <= tag})
        else:
            self.pending.discard(tag)

    def published(self, drain: Callable[[], object], batch: int) -> None:
        self.sent += 1
        self.pending.add(self.sent)
        if self.sent % batch == 0:
            self.wait(drain)

    def wait(self, drain: Callable[[], object]) -> None:
        while self.pending:
            drain()


def _kombu_publish(url: str, queue_name: str, events: Sequence[Event], mode: str) -> float:
    """Seconds to publish (and confirm) everything through kombu's Producer, as multiwatch."""
    options = {"confirm_publish": True} if mode == "confirm-each" else {}
    with Connection(url, heartbeat=0, transport_options=options) as conn:
        channel = conn.channel()
        exchange = Exchange("file_events", type="topic", durable=True)(channel)
        exchange.declare()
        Queue(queue_name, Exchange("file_events", type="topic", durable=True),
              routing_key="file.#", durable=True)(channel).declare()
        producer = Producer(channel, exchange=exchange)
        acks = _Acks()
        pipelined = mode == "confirm-pipelined"
        if pipelined:
            channel.confirm_select()
            channel.events["basic_ack"].add(acks.on_ack)
        started = time.monotonic()
        for event in events:
            producer.publish(
                event.body, routing_key=event.routing_key, content_type="application/json",
                content_encoding="utf-8", delivery_mode=2, message_id=event.message_id,
                correlation_id=event.correlation_id, headers=event.headers, retry=False)
            if pipelined:
                acks.published(lambda: conn.drain_events(timeout=10), CONFIRM_BATCH)
        acks.wait(lambda: conn.drain_events(timeout=10))
        return time.monotonic() - started


def _pyamqp_publish(url: str, queue_name: str, events: Sequence[Event]) -> float:
    """The same with py-amqp directly (kombu's Producer bypassed), pipelined confirms."""
    conn = amqp_connection(url)
    try:
        channel = conn.channel()
        channel.exchange_declare("file_events", "topic", durable=True, auto_delete=False)
        channel.queue_declare(queue_name, durable=True, auto_delete=False)
        channel.queue_bind(queue_name, "file_events", "file.#")
        acks = _Acks()
        channel.confirm_select()
        channel.events["basic_ack"].add(acks.on_ack)
        started = time.monotonic()
        for event in events:
            channel.basic_publish(amqp.Message(
                event.body, content_type="application/json", content_encoding="utf-8",
                delivery_mode=2, message_id=event.message_id,
                correlation_id=event.correlation_id, application_headers=event.headers),
                exchange="file_events", routing_key=event.routing_key)
            acks.published(lambda: conn.drain_events(timeout=10), CONFIRM_BATCH)
        acks.wait(lambda: conn.drain_events(timeout=10))
        return time.monotonic() - started
    finally:
        conn.close()


def publish_ceiling(url: str, events: Sequence[Event], mode: str, scratch: Path) -> PublishCeiling:
    """Publish `events` raw in `mode`; a consumer process times the arrival."""
    queue_name = f"bench-ceiling-{mode}-{uuid.uuid4().hex[:6]}"
    consumer = Consumer(url, queue_name, scratch / f"ceiling-{mode}.json", expect=len(events),
                        linger=0.2, deadline=300)
    try:
        started = time.monotonic()
        if mode == "pyamqp-pipelined":
            published = _pyamqp_publish(url, queue_name, events)
        else:
            published = _kombu_publish(url, queue_name, events, mode)
        got = consumer.result(timeout=300)
    finally:
        consumer.stop()
        delete_queue(url, queue_name)
    first = got.first_by_path()
    last = max(first.values()) if first else started
    return PublishCeiling(mode, published, last - started, len(first))


def publish_ceilings(url: str, events: Sequence[Event], scratch: Path,
                     tries: int = 2) -> dict[str, PublishCeiling]:
    """Each mode's best of `tries` (a ceiling is the best this machine did in this run)."""
    results = {}
    for mode in PUBLISH_MODES:
        result = max((publish_ceiling(url, events, mode, scratch) for _ in range(tries)),
                     key=lambda r: r.rate)
        results[mode] = result
        say(f"  ceiling publish {mode:17s}: {result.rate:7.0f} msg/s delivered "
            f"({result.delivered}/{len(events)} in {result.delivered_s:.2f}s; "
            f"publisher side {len(events) / result.published_s:.0f} msg/s; best of {tries})")
    return results
