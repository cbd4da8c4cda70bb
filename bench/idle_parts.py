"""Where one idle watcher's wakeups go: CPU per call of each part of its main loop and of its
publisher thread, measured inside one real watcher against a real RabbitMQ.

    .venv/bin/python bench/idle_parts.py [--seconds 120]

Runs one watcher's work loop (watcher/main.py `_run`) in this process over an empty
directory, its reports read by a thread standing in for the supervisor; wraps the parts an
idle wakeup runs with a per-thread CPU clock (CLOCK_THREAD_CPUTIME_ID); after start-up
work is done, counts over `--seconds`, then stops it as SIGTERM would.  Prints each
thread's total in µs of CPU per second, and each part's µs/s, calls/s and µs per call.
The wrappers add about a microsecond per call; the parts nest (step contains take).  A
figure printer, not a test: it reaches into private names, which may move.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

# (run as a script: the repo first on the path)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from multiwatch.config.load import load_roster
from multiwatch.logs import setup_logging
from multiwatch.supervisor.fleet import child_spec
from multiwatch.watcher import (
    commit_buffer,
    confined,
    deletion_guard,
    main,
    notifications,
    parent_link,
    pipeline,
    publisher,
    state,
)
from tests.support.rabbitmq import RabbitMQ

START_UP_SECONDS = 8.0
_spent: dict[tuple[str, str], list[int]] = collections.defaultdict(lambda: [0, 0])


def _timed(owner: Any, attribute: str) -> None:
    """Wrap owner.attribute to add its CPU time (this thread's) and calls to _spent."""
    function: Callable[..., Any] = getattr(owner, attribute)
    label = f"{getattr(owner, '__name__', owner)}.{attribute}".replace("multiwatch.watcher.", "")

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.thread_time_ns()
        try:
            return function(*args, **kwargs)
        finally:
            spent = _spent[(threading.current_thread().name, label)]
            spent[0] += time.thread_time_ns() - began
            spent[1] += 1

    setattr(owner, attribute, wrapper)


PARTS: list[tuple[Any, str]] = [
    (pipeline.Pipeline, "step"), (deletion_guard.DeletionGuard, "step"),
    (notifications.NotificationRouter, "take"), (notifications.NotificationRouter, "retry_due"),
    (pipeline.Pipeline, "_collect_hashes"), (pipeline.Pipeline, "_handle_settled"),
    (commit_buffer.CommitBuffer, "commit"), (confined.ConfinedRoot, "release"),
    (parent_link.HeartbeatSender, "maybe_send"), (parent_link.ParentLink, "send"),
    (parent_link.ParentLink, "send_pickled"), (parent_link.ParentLink, "alive"),
    (main, "heartbeat_snapshot"), (main, "activity_summary"), (main, "follow_mount"),
    (main, "observer_alive"), (main, "_wait_budget"), (publisher.Publisher, "failure"),
    (publisher, "service_heartbeat"), (publisher.Publisher, "_wait"),
    (state.DurableOutbox, "take_resynced"),
]


def _thread_cpu(thread: threading.Thread) -> float:
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def main_() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    args = parser.parse_args()
    broker = RabbitMQ.start_or_reuse()
    try:
        with tempfile.TemporaryDirectory(prefix="mw-idle-parts-", dir="/var/tmp") as tmp:
            measure(Path(tmp), broker.amqp_url, args.seconds)
    finally:
        broker.stop()
    return 0


def measure(root: Path, url: str, seconds: float) -> None:
    (root / "data").mkdir()
    roster_path = root / "roster.yaml"
    roster_path.write_text(yaml.safe_dump({
        "state_dir": str(root / "state"), "log_level": "WARNING", "http": {"listen": "off"},
        "broker": {"url": url, "queue": f"bench-idle-parts-{root.name}"},
        "instances": [{"id": "idle", "directory": str(root / "data")}]}))
    roster = load_roster(str(roster_path), {})
    os.makedirs(roster.state_dir, exist_ok=True)
    spec = dataclasses.replace(child_spec(roster, roster.instances[0]), parent_pid=os.getppid())
    setup_logging("WARNING", "idle", "json")
    for owner, attribute in PARTS:
        _timed(owner, attribute)
    reader, writer = multiprocessing.Pipe(duplex=False)
    stop = parent_link.StopRequest()
    figures: dict[str, Any] = {}

    def supervisor() -> None:  # reads the reports, as the supervisor would
        while True:
            try:
                reader.recv()
            except EOFError:
                return

    def window() -> None:
        time.sleep(START_UP_SECONDS)
        loop = threading.main_thread()
        sender = next(t for t in threading.enumerate() if t.name.startswith("publisher"))
        _spent.clear()
        before = _thread_cpu(loop), _thread_cpu(sender)
        time.sleep(seconds)
        figures["loop"] = _thread_cpu(loop) - before[0]
        figures["publisher"] = _thread_cpu(sender) - before[1]
        figures["parts"] = {k: list(v) for k, v in _spent.items()}
        stop.set()

    threading.Thread(target=supervisor, daemon=True, name="supervisor").start()
    threading.Thread(target=window, daemon=True, name="window").start()
    main._run(spec, writer, stop)
    writer.close()
    scale = 1e6 / seconds
    print(f"one idle watcher over {seconds:g}s: main loop {figures['loop'] * scale:.1f} µs/s, "
          f"publisher {figures['publisher'] * scale:.1f} µs/s")
    for (thread, label), (ns, calls) in sorted(figures["parts"].items(), key=lambda kv: -kv[1][0]):
        print(f"  {thread[:12]:<12} {label:<42} {ns / 1e3 / seconds:7.1f} µs/s "
              f"{calls / seconds:6.2f} calls/s {ns / 1e3 / max(calls, 1):7.1f} µs/call")


if __name__ == "__main__":
    sys.exit(main_())
