"""Summarise py-spy's collapsed stacks (`record --format raw --threads`) per thread.

Each line is `thread (TID): NAME;frame;frame... COUNT`.  On a loaded 2-core machine py-spy
counts a thread that is runnable but waiting for a core (just woken from poll(), a
Condition or a socket read) as active, so raw sample shares overstate waiting threads.
When the threads' real CPU seconds (from /proc, tid → seconds) are given, each thread's
samples are scaled to its CPU time: a function's figure is then "estimated CPU seconds
spent in it", shown as a share of the child's total CPU.

Roles: MainThread is the pipeline (notifications, settle, stat, hash, sqlite commit, event
building, logging); `publisher-*` the publisher thread; watchdog runs three threads (the
inotify reader, the emitter that turns raw events into watchdog events, the dispatcher
that calls our handler).

    .venv/bin/python -m bench.profile PROFILE.txt [THREADS.json]   # summary of a saved run
"""

from __future__ import annotations

import collections
import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
_HEAD = re.compile(r"^thread \((?P<tid>\d+)\): (?P<name>.*)$")
TOP_SELF = 8
TOP_INCLUSIVE = 12
_BORING = ("_bootstrap", "<module>", "spawn_main", "_main (", "BaseProcess.run", "child_main",
           "run_child",
           "Thread.run (")


def _frame_name(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    parts = match["file"].split("/")
    return f"{match['func']} ({'/'.join(parts[-2:])})"


def _role(name: str, frames: list[str]) -> str:
    if name == "MainThread":
        return "pipeline (MainThread)"
    if name.startswith("publisher"):
        return "publisher thread"
    joined = ";".join(frames)
    if "InotifyFD.run" in joined:
        return "watchdog inotify reader"
    if "EventEmitter.run" in joined:
        return "watchdog emitter"
    if "dispatch_events" in joined or "EventDispatcher.run" in joined:
        return "watchdog dispatcher"
    return f"other ({name})"


class _Thread:
    def __init__(self) -> None:
        self.name = ""
        self.roles: collections.Counter[str] = collections.Counter()
        self.samples = 0
        self.selfs: collections.Counter[str] = collections.Counter()
        self.inclusive: collections.Counter[str] = collections.Counter()

    @property
    def role(self) -> str:
        return self.roles.most_common(1)[0][0] if self.roles else f"other ({self.name})"


def _parse(path: Path) -> dict[int, _Thread]:
    threads: dict[int, _Thread] = collections.defaultdict(_Thread)
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        head, *frames = stack.split(";")
        match = _HEAD.match(head)
        tid, name = (int(match["tid"]), match["name"]) if match else (0, head)
        count = int(count_text)
        thread = threads[tid]
        thread.name = name
        thread.roles[_role(name, frames)] += count
        thread.samples += count
        names = [_frame_name(f) for f in frames]
        if names:
            thread.selfs[names[-1]] += count
        for fn in set(names):
            thread.inclusive[fn] += count
    return threads


def summarise(path: Path, cpu: Mapping[Any, float] | None = None) -> list[str]:
    threads = _parse(path)
    samples = sum(t.samples for t in threads.values())
    if not samples:
        return [f"no samples in {path}"]
    seconds = {int(k): v for k, v in (cpu or {}).items()}
    if seconds:
        weight = {tid: seconds.get(tid, 0.0) / t.samples for tid, t in threads.items()}
        unit, total = "CPU", sum(seconds.values())
        lines = [f"{samples} py-spy samples, scaled to each thread's CPU seconds from /proc "
                 f"({total:.2f}s in the child during the burst)"]
    else:
        weight = dict.fromkeys(threads, 1.0)
        unit, total = "samples", float(samples)
        lines = [f"{samples} py-spy samples (no per-thread CPU given: raw sample shares)"]
    by_role: dict[str, list[int]] = collections.defaultdict(list)
    for tid, thread in threads.items():
        by_role[thread.role].append(tid)
    role_total = {role: sum(threads[t].samples * weight[t] for t in tids)
                  for role, tids in by_role.items()}
    unsampled = sum(v for k, v in seconds.items() if k not in threads)
    lines.append(f"child {unit} by thread: " + ", ".join(
        f"{role} {share / total:.0%}" for role, share in
        sorted(role_total.items(), key=lambda kv: -kv[1]))
        + (f", threads py-spy never saw {unsampled / total:.0%}" if unsampled else ""))
    for role, share in sorted(role_total.items(), key=lambda kv: -kv[1]):
        if share / total < 0.03:
            continue
        inclusive: dict[str, float] = collections.defaultdict(float)
        selfs: dict[str, float] = collections.defaultdict(float)
        for tid in by_role[role]:
            for fn, n in threads[tid].inclusive.items():
                inclusive[fn] += n * weight[tid]
            for fn, n in threads[tid].selfs.items():
                selfs[fn] += n * weight[tid]
        lines.append(f"{role}: {share / total:.0%} of child {unit}; inclusive:")
        shown = [(fn, n) for fn, n in sorted(inclusive.items(), key=lambda kv: -kv[1])
                 if not any(b in fn for b in _BORING)][:TOP_INCLUSIVE]
        lines += [f"    {n / total:6.1%}  {fn}" for fn, n in shown]
        lines.append("  self (leaf frame; C calls are billed to their Python caller):")
        top_self = sorted(selfs.items(), key=lambda kv: -kv[1])[:TOP_SELF]
        lines += [f"    {n / total:6.1%}  {fn}" for fn, n in top_self]
    return lines


if __name__ == "__main__":
    given = json.loads(Path(sys.argv[2]).read_text()) if len(sys.argv) > 2 else None
    for text in summarise(Path(sys.argv[1]), given):
        print(text)
