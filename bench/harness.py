"""Machinery shared by the benchmarks: the broker and its vhosts, the `multiwatch run`
process, the consumer process, file writers, percentiles and the closing table.

Everything started here runs in its own session and is stopped by its own pid or process
group; nothing else on the machine is touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import amqp
import psutil
import yaml

from tests.support.rabbitmq import RabbitMQ

ROOT = Path(__file__).resolve().parent.parent
CONSUMER = Path(__file__).resolve().parent / "consumer.py"
TRICKLE = Path(__file__).resolve().parent / "trickle.py"
PROBE_PREFIX = "_probe"
KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


# ---- figures ------------------------------------------------------------------------------

def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


@dataclass
class Row:
    scenario: str
    figure: str
    value: str
    ceiling: str = ""
    ratio: str = ""
    target: str = ""
    ok: bool | None = None


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, scenario: str, figure: str, value: str, *, ceiling: str = "",
            ratio: str = "", target: str = "", ok: bool | None = None) -> None:
        self.rows.append(Row(scenario, figure, value, ceiling, ratio, target, ok))

    def table(self) -> str:
        head = ("scenario", "figure", "value", "ceiling (same run)", "ratio", "target", "met")
        rows = [head] + [(r.scenario, r.figure, r.value, r.ceiling, r.ratio, r.target,
                          {True: "yes", False: "NO", None: ""}[r.ok]) for r in self.rows]
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
                 for row in rows]
        lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
        return "\n".join(lines)


def say(text: str = "") -> None:
    print(text, flush=True)


# ---- the run's context --------------------------------------------------------------------

def pick_workdir(given: str | None) -> tuple[Path, str]:
    """A scratch directory on disk (not tmpfs), and a line saying where it is."""
    candidates = [given] if given else [tempfile.gettempdir(), "/var/tmp", str(ROOT / ".bench")]
    for base in candidates:
        assert base is not None
        Path(base).mkdir(parents=True, exist_ok=True)
        fs = filesystem_of(base)
        if given or fs[1] != "tmpfs":
            path = Path(tempfile.mkdtemp(prefix="mw-bench-", dir=base))
            return path, f"{path} on {fs[0]} ({fs[1]}, mounted at {fs[2]})"
    raise RuntimeError("no non-tmpfs scratch directory found; pass --workdir")


def filesystem_of(path: str) -> tuple[str, str, str]:
    """(device, fstype, mountpoint) of the mount holding path."""
    real = os.path.realpath(path)
    best = ("?", "?", "/")
    for part in psutil.disk_partitions(all=True):
        mount = part.mountpoint
        if (real == mount or real.startswith(mount.rstrip("/") + "/")) and (
                len(mount) >= len(best[2])):
            best = (part.device, part.fstype, mount)
    return best


def machine_lines(workdir_line: str) -> list[str]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    rev = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                         capture_output=True, text=True, check=False).stdout.strip()
    return [
        f"date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; multiwatch {rev or '?'}",
        f"machine: {os.cpu_count()} cores ({cpu}), "
        f"{psutil.virtual_memory().total / GIB:.1f} GiB RAM, {platform.platform()}, "
        f"Python {platform.python_version()}",
        f"scratch: {workdir_line}",
        f"{loadavg()} (shared machine: figures are indicative)",
    ]


@dataclass
class Ctx:
    """What every scenario gets: the broker, a scratch dir, sizes, the report."""

    rabbitmq: RabbitMQ
    workdir: Path
    out: Path
    quick: bool
    runs: int
    report: Report
    ceilings: dict[str, Any] = field(default_factory=dict)

    def scratch(self, label: str) -> Path:
        path = self.workdir / f"{label}-{uuid.uuid4().hex[:6]}"
        path.mkdir(parents=True)
        return path

    @contextlib.contextmanager
    def vhost(self, label: str) -> Iterator[str]:
        """AMQP URL of a fresh vhost (guest has full rights), deleted afterwards."""
        name = f"mw-bench-{label}-{uuid.uuid4().hex[:8]}"
        definitions = {"vhosts": [{"name": name}], "permissions": [
            {"user": self.rabbitmq.user, "vhost": name, "configure": ".*", "write": ".*",
             "read": ".*"}]}
        with tempfile.TemporaryDirectory(prefix="mw-bench-vhost-") as tmp:
            path = Path(tmp) / "definitions.json"
            path.write_text(json.dumps(definitions))
            self.rabbitmq.rabbitmqctl("import_definitions", str(path))
        try:
            yield self.rabbitmq.url_for(name)
        finally:
            self.rabbitmq.rabbitmqctl("delete_vhost", name)


def amqp_connection(url: str) -> amqp.Connection:
    from bench.consumer import _connect
    return _connect(url)


def queue_depth(url: str, queue: str) -> int:
    conn = amqp_connection(url)
    try:
        return int(conn.channel().queue_declare(queue, passive=True).message_count)
    finally:
        conn.close()


def delete_queue(url: str, queue: str) -> None:
    with contextlib.suppress(Exception):
        conn = amqp_connection(url)
        try:
            conn.channel().queue_delete(queue)
        finally:
            conn.close()


# ---- the multiwatch process ---------------------------------------------------------------

def write_roster(path: Path, *, state_dir: Path, url: str, queue: str,
                 instances: list[dict[str, Any]], log_level: str = "INFO") -> Path:
    path.write_text(yaml.safe_dump({
        "state_dir": str(state_dir), "log_level": log_level,
        "broker": {"url": url, "queue": queue},
        "http": {"listen": "off"},
        "supervisor": {"stop_timeout_seconds": 20, "report_interval_seconds": 3600},
        "instances": instances,
    }, sort_keys=False))
    return path


def is_watcher(process: psutil.Process) -> bool:
    """A watcher: titled `multiwatch: watcher ID` once running (setproctitle); versions that
    spawned their watchers (before the template process) showed the spawn command line
    until then, which is still recognised so older commits can be measured."""
    try:
        command = " ".join(process.cmdline())
    except psutil.Error:
        return False
    return command.startswith("multiwatch: watcher ") or "spawn_main" in command


class Watcher:
    """`multiwatch run -c roster` in its own session; stdout goes to a file, not a pipe
    we must read, so a chatty INFO log costs the benchmark process nothing."""

    def __init__(self, roster: Path, log_path: Path) -> None:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("RABBITMQ_") and k not in ("MULTIWATCH_CONFIG", "DATA_DIR",
                                                               "INSTANCE_ID", "LOG_LEVEL")}
        env["MULTIWATCH_HTTP_LISTEN"] = "off"
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.started_wall = time.time()
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "multiwatch", "run", "-c", str(roster)], cwd=ROOT, env=env,
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        self._offset = 0
        self._partial = b""
        self.lines: list[dict[str, Any]] = []

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read_new(self) -> None:
        with open(self.log_path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        chunks = (self._partial + data).split(b"\n")
        self._partial = chunks.pop()
        for raw in chunks:
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(raw))

    def wait_log(self, predicate: Callable[[dict[str, Any]], bool], timeout: float,
                 poll: float = 0.02, on_poll: Callable[[], None] | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            self._read_new()
            for line in self.lines[seen:]:
                if predicate(line):
                    return line
            seen = len(self.lines)
            if on_poll is not None:
                on_poll()
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = Path(self.log_path).read_text(errors="replace").splitlines()[-20:]
                raise RuntimeError("multiwatch log line not seen; last lines:\n" + "\n".join(tail))
            time.sleep(poll)

    def children(self) -> list[psutil.Process]:
        """The watcher processes, not helper processes; any depth below the supervisor (a
        child forked by a template process is its grandchild)."""
        try:
            kids = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [c for c in kids if is_watcher(c)]

    def helpers(self) -> list[psutil.Process]:
        """Every other process below the supervisor (resource tracker, template process)."""
        try:
            kids = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [c for c in kids if not is_watcher(c)]

    def wait_children(self, count: int, timeout: float = 60) -> list[psutil.Process]:
        deadline = time.monotonic() + timeout
        while len(kids := self.children()) < count:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"only {len(kids)} of {count} watcher children started")
            time.sleep(0.05)
        return kids

    def stop(self, timeout: float = 40) -> None:
        """SIGTERM the supervisor (it stops its children); SIGKILL our group if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # leftovers of our own session only
        self.process.wait(timeout=10)
        self._log.close()


# ---- the consumer process -----------------------------------------------------------------

@dataclass
class Consumed:
    """What a consumer received: [t, path, event_type, size_bytes, sha256] per message."""

    records: list[list[Any]]

    @property
    def files(self) -> list[list[Any]]:
        return [r for r in self.records if not os.path.basename(r[1]).startswith(PROBE_PREFIX)]

    def first_by_path(self) -> dict[str, float]:
        first: dict[str, float] = {}
        for t, path, *_ in self.files:
            first.setdefault(path, t)
        return first

    @property
    def duplicates(self) -> int:
        return len(self.files) - len(self.first_by_path())


class Consumer:
    """bench/consumer.py as a child process; `probe` lines are collected as they come.
    With `instances`, it reads only those instances' events through a private queue named
    `queue` (exclusive, auto-delete: consumer.py's docstring)."""

    def __init__(self, url: str, queue: str, out: Path, *, expect: int, linger: float = 1.0,
                 deadline: float = 300.0, progress: bool = False,
                 instances: Sequence[str] = ()) -> None:
        self.out = out
        self.process = subprocess.Popen(
            [sys.executable, str(CONSUMER), url, queue, str(out), "--expect", str(expect),
             "--linger", str(linger), "--deadline", str(deadline)]
            + (["--progress"] if progress else [])
            + [arg for instance in instances for arg in ("--instance", instance)],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
            start_new_session=True)
        self.probes: set[str] = set()
        self.count = 0  # distinct non-probe paths received so far (with progress=True)
        self._ready = threading.Event()
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(30):
            self.stop()
            raise RuntimeError("benchmark consumer did not start")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("ready"):
                self._ready.set()
            elif line.startswith("probe "):
                with self._changed:
                    self.probes.add(line[6:].rstrip("\n"))
                    self._changed.notify_all()
            elif line.startswith("count "):
                with self._changed:
                    self.count = int(line.split()[1])
                    self._changed.notify_all()

    def wait_count(self, count: int, timeout: float) -> bool:
        """Wait until `count` distinct non-probe paths arrived (needs progress=True)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.count < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.process.poll() is not None:
                    return False
                self._changed.wait(min(remaining, 0.2))
        return True

    def wait_probes(self, paths: Sequence[Path], timeout: float) -> None:
        wanted = {str(p) for p in paths}
        deadline = time.monotonic() + timeout
        with self._changed:
            while not wanted <= self.probes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    missing = len(wanted - self.probes)
                    raise RuntimeError(f"{missing} readiness probes not announced")
                self._changed.wait(min(remaining, 0.2))

    def result(self, timeout: float) -> Consumed:
        """Wait for the consumer to finish on its own (expect + linger, or its deadline)."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        return Consumed(json.loads(self.out.read_text())["records"])

    def stop(self) -> Consumed | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.out.exists():
            return Consumed(json.loads(self.out.read_text())["records"])
        return None


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM) in bytes, or 0 if it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * KIB
    return 0


class Trickle:
    """bench/trickle.py as a child process: one small file every `interval` seconds, in
    turn into each of `dirs`, named as readiness probes (so the consumer reports each as
    it arrives and does not count it among a scenario's files) until stop().  A separate
    interpreter, so neither the benchmark's own writers nor its GIL delay the trickle."""

    def __init__(self, dirs: Sequence[Path], out: Path, interval: float) -> None:
        self.out = out
        self.process = subprocess.Popen(
            [sys.executable, str(TRICKLE), str(out), str(interval), *map(str, dirs)],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
            start_new_session=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # "started T": its schedule's origin
        if not line.startswith("started "):
            self.stop()
            raise RuntimeError("trickle writer did not start")
        self.started = float(line.split()[1])

    def stop(self) -> dict[str, float]:
        """Stop writing; {path: close() time on CLOCK_MONOTONIC} of every file written."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not self.out.exists():
            return {}
        return {path: t for path, t in json.loads(self.out.read_text())["closed"]}


def arrivals(got: Consumed) -> dict[str, float]:
    """First receive time of every path, probes included."""
    first: dict[str, float] = {}
    for t, path, *_ in got.records:
        first.setdefault(path, t)
    return first


def probe_ready(consumer: Consumer, dirs: Sequence[Path], timeout: float = 120) -> float:
    """Write one probe file per watched dir; seconds until every one was announced."""
    started = time.monotonic()
    paths = [d / f"{PROBE_PREFIX}-{uuid.uuid4().hex[:6]}.dat" for d in dirs]
    for path in paths:
        path.write_bytes(b"probe\n")
    consumer.wait_probes(paths, timeout)
    return time.monotonic() - started


# ---- writers ------------------------------------------------------------------------------

def write_small_files(paths: Sequence[Path], size: int = 4 * KIB) -> tuple[float, float]:
    """Create each file in one open/write/close, unique content; (first start, end) monotonic."""
    payload = bytearray(os.urandom(size))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    started = time.monotonic()
    for index, path in enumerate(paths):
        payload[:8] = index.to_bytes(8, "little")
        fd = os.open(path, flags, 0o644)
        try:
            os.write(fd, payload)
        finally:
            os.close(fd)
    return started, time.monotonic()


def write_big_file(path: Path, size: int, chunk: int = 16 * MIB,
                   before_close: Callable[[], object] | None = None) -> float:
    """Write `size` bytes of a random 16 MiB block (fast, unique per file); close() time.

    `before_close` runs after the last write, before close() (e.g. a barrier, so that
    files written by several threads land together)."""
    block = bytearray(os.urandom(chunk))
    with open(path, "wb", buffering=0) as f:
        written = 0
        while written < size:
            block[:8] = written.to_bytes(8, "little")
            written += f.write(block[: min(chunk, size - written)])
        if before_close is not None:
            before_close()
    return time.monotonic()


def in_threads(work: Callable[[Path], object], paths: Sequence[Path]) -> None:
    """Run work(path) for every path, each in its own thread, and wait for them all."""
    threads = [threading.Thread(target=work, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def wait_writeback(limit: int = 64 * MIB, timeout: float = 20.0) -> float:
    """Wait until the kernel has written back dirty pages (Dirty + Writeback < limit), so
    a ceiling is not measured against background writeback; seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        fields = {}
        with contextlib.suppress(OSError):
            for line in Path("/proc/meminfo").read_text().splitlines():
                key, _, value = line.partition(":")
                fields[key] = int(value.split()[0]) * KIB
        if fields.get("Dirty", 0) + fields.get("Writeback", 0) < limit:
            break
        time.sleep(0.2)
    return time.monotonic() - started


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")
