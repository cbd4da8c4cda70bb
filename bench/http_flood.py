"""/healthz latency of a real supervisor under a flood of slow HTTP clients.

    .venv/bin/python bench/http_flood.py [--clients 60] [--nofile 40] [--samples 30]

Starts `multiwatch run` with one idle instance (embedded broker) and an endpoint on a free
loopback port, lowers the supervisor's open-file limit (prlimit), opens `--clients`
connections that each trickle one header byte every 0.5 s and never finish their request,
then times `--samples` GET /healthz (5 s timeout each) and the supervisor's CPU meanwhile,
and finally how long SIGTERM takes.  A figure printer, not a test.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.process import free_port
from tests.support.slow_clients import SlowFlood, measure_get


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=60)
    parser.add_argument("--nofile", type=int, default=40, help="the supervisor's RLIMIT_NOFILE")
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mw-flood-") as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        port = free_port()
        roster = root / "roster.yaml"
        roster.write_text(yaml.safe_dump({
            "state_dir": str(root / "state"), "http": {"listen": f"127.0.0.1:{port}"},
            "supervisor": {"stop_timeout_seconds": 3},
            "instances": [{"id": "data", "directory": str(root / "data")}]}))
        proc = subprocess.Popen([sys.executable, "-m", "multiwatch", "run", "-c", str(roster)],
                                stdout=subprocess.PIPE, text=True, start_new_session=True)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if "HTTP endpoint listening" in line:
                    break
            # Keep reading its log, so a full pipe never blocks the supervisor.
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            supervisor = psutil.Process(proc.pid)
            quiet = measure_get("127.0.0.1", port, "/healthz", samples=10, timeout=5)
            print(f"no flood: /healthz {quiet.describe()}")
            supervisor.rlimit(psutil.RLIMIT_NOFILE, (args.nofile, args.nofile))
            with SlowFlood("127.0.0.1", port, args.clients) as flood:
                deadline = time.monotonic() + 30
                while flood.opened < args.clients and time.monotonic() < deadline:
                    time.sleep(0.1)
                time.sleep(2)
                cpu_before = sum(supervisor.cpu_times()[:2])
                wall_before = time.monotonic()
                flooded = measure_get("127.0.0.1", port, "/healthz", samples=args.samples,
                                      timeout=5)
                cpu = (sum(supervisor.cpu_times()[:2]) - cpu_before) / (
                    time.monotonic() - wall_before)
                print(f"{args.clients} slow clients, RLIMIT_NOFILE {args.nofile}: "
                      f"/healthz {flooded.describe()}; supervisor CPU {100 * cpu:.1f}% of a core")
                started = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                    print(f"SIGTERM: exited with {proc.returncode} after "
                          f"{time.monotonic() - started:.1f} s")
                except subprocess.TimeoutExpired:
                    print("SIGTERM: still running after 20 s")
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
