"""The trickle writer: a separate process writing one small file every INTERVAL seconds.

    python bench/trickle.py OUT.json INTERVAL DIR [DIR ...]

Prints `started T` (T on CLOCK_MONOTONIC: file k is due at T + k * INTERVAL), then writes
4 KiB files named `_probe-trickle-NNNNNN.dat` in turn into each DIR, each in one
open/write/close, and records `[path, time.monotonic() right after close()]`; on SIGTERM
it finishes the file in hand and writes `{"closed": [...]}` to OUT.json.  A slot missed
(the writer was late by a whole interval) is skipped, not caught up in a burst.  Named as
readiness probes so that the benchmark consumer reports each one as it arrives and counts
none of them among the scenario's files.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

SIZE = 4096
PREFIX = "_probe-trickle"


def main() -> int:
    out, interval, dirs = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
    stop = False

    def on_term(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    payload = bytearray(os.urandom(SIZE))
    closed: list[tuple[str, float]] = []
    started = time.monotonic() + 0.05
    print("started", started, flush=True)
    index = 0
    while not stop:
        slot = started + index * interval
        now = time.monotonic()
        if now < slot:
            time.sleep(slot - now)
            continue
        path = os.path.join(dirs[index % len(dirs)], f"{PREFIX}-{index:06d}.dat")
        payload[:8] = index.to_bytes(8, "little")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, payload)
        finally:
            os.close(fd)
        closed.append((path, time.monotonic()))
        index += 1
        late = int((time.monotonic() - started) / interval)
        index = max(index, late)  # skip slots already past
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"closed": closed}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
