"""The benchmark consumer: a separate process that timestamps every message it receives.

    python bench/consumer.py URL QUEUE OUT.json [--expect N] [--linger S] [--deadline S]
                                                [--progress] [--instance ID ...]

Declares the application's topology (durable topic exchange `file_events`, durable queue
QUEUE bound with `file.#`), prints `ready`, then consumes without acks (no_ack, prefetch
2000) and records `[time.monotonic(), path, event_type, size_bytes, sha256]` per message.
CLOCK_MONOTONIC is one clock for every process on a Linux machine, so these times compare
directly with a writer's close() times in another process.

Files whose name starts with `_probe` are readiness probes: each is printed as
`probe PATH` when it arrives and is not counted.  The process exits after it has seen
`--expect` distinct other paths and `--linger` more seconds (to catch duplicates), after
`--deadline` seconds, or on SIGTERM; then it writes OUT.json.  With `--progress` it also
prints `count N` (distinct non-probe paths so far) whenever N grew, at most every 50 ms.
A separate process so that neither the writer nor the consumer steals the other's GIL.

With `--instance ID` (repeatable) it reads only those instances' events, through a private
queue as a deployment's per-directory consumer would (and as the standby does,
multiwatch/watcher/standby_feed.py): a headers exchange `QUEUE.x` (not durable,
auto-delete) bound to `file_events` for `#`, and QUEUE itself exclusive and auto-delete,
bound to it once per ID with `instance_id` = ID (x-match all).  Other instances' messages
never reach it, so its times do not include waiting behind them in a shared queue or
consumer.  It deletes both on exit; the broker does too if it dies (exclusive queue, then
auto-delete exchange).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import urllib.parse

import amqp

EXCHANGE = "file_events"
BINDING_KEY = "file.#"
PROBE_PREFIX = "_probe"


def _connect(url: str) -> amqp.Connection:
    parts = urllib.parse.urlsplit(url)
    vhost = urllib.parse.unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    conn = amqp.Connection(
        host=f"{parts.hostname}:{parts.port or 5672}",
        userid=urllib.parse.unquote(parts.username or "guest"),
        password=urllib.parse.unquote(parts.password or "guest"),
        virtual_host=vhost, connect_timeout=10, heartbeat=0)
    conn.connect()
    return conn


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("queue")
    parser.add_argument("out")
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--linger", type=float, default=1.0)
    parser.add_argument("--deadline", type=float, default=300.0)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--instance", action="append", default=[],
                        help="only this instance's events, via a private queue (repeatable)")
    args = parser.parse_args()

    stop = False

    def on_term(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    conn = _connect(args.url)
    channel = conn.channel()
    channel.exchange_declare(EXCHANGE, "topic", durable=True, auto_delete=False)
    private = f"{args.queue}.x" if args.instance else ""
    if private:
        channel.exchange_declare(private, "headers", durable=False, auto_delete=True)
        channel.queue_declare(args.queue, durable=False, exclusive=True, auto_delete=True)
        for instance in args.instance:
            channel.queue_bind(args.queue, private, routing_key="",
                               arguments={"x-match": "all", "instance_id": instance})
        channel.exchange_bind(destination=private, source=EXCHANGE, routing_key="#")
    else:
        channel.queue_declare(args.queue, durable=True, auto_delete=False)
        channel.queue_bind(args.queue, EXCHANGE, BINDING_KEY)
    channel.basic_qos(0, 2000, False)
    records: list[list[object]] = []
    distinct: set[str] = set()

    def on_message(message: amqp.Message) -> None:
        now = time.monotonic()
        body = json.loads(message.body)
        info = body.get("file_info") or {}
        path = info.get("path", "")
        records.append([now, path, body.get("event_type"), info.get("size_bytes"),
                        info.get("sha256_hash")])
        if os.path.basename(path).startswith(PROBE_PREFIX):
            print("probe", path, flush=True)
        else:
            distinct.add(path)

    tag = channel.basic_consume(args.queue, callback=on_message, no_ack=True)
    print("ready", flush=True)
    deadline = time.monotonic() + args.deadline
    reached: float | None = None
    told = 0
    told_at = 0.0
    while not stop:
        now = time.monotonic()
        if args.progress and len(distinct) > told and now - told_at >= 0.05:
            told, told_at = len(distinct), now
            print("count", told, flush=True)
        if now >= deadline:
            break
        if args.expect and len(distinct) >= args.expect:
            reached = reached if reached is not None else now
            if now - reached >= args.linger:
                break
        try:
            conn.drain_events(timeout=0.1)
        except TimeoutError:
            pass
    with open(args.out, "w", encoding="utf-8") as out:
        json.dump({"records": records}, out)
    try:
        if private:  # cancelled first: a queue deleted under its consumer is a Basic.Cancel
            channel.basic_cancel(tag)
            channel.exchange_delete(private)
            channel.queue_delete(args.queue)
        conn.close()
    except Exception:  # noqa: BLE001 - results are written; how we hang up does not matter
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
