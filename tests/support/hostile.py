"""Helpers for the hostile-input suite (tests/hostile): odd trees, a pipeline fed by a real
observer, memory sampling, unprivileged real processes, HTTP probes, throw-away broker users.

Everything that starts something also stops it: observers are stopped and joined, sampler
threads joined, processes stopped by the pid/process group this module started, broker users
deleted.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import tempfile
import threading
import time
import types
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import xxhash

from multiwatch.watcher.observe import start_observer
from multiwatch.watcher.pipeline import Pipeline
from multiwatch.watcher.state import DurableOutbox
from tests.support.consumer import vhost_of
from tests.support.privilege import _DROP
from tests.support.process import LogLine, Multiwatch, _env, multiwatch_command, write_roster
from tests.support.rabbitmq import RabbitMQ
from tests.watcher.test_pipeline import drain, make_pipeline

Body = dict[str, Any]

# hashlib/xxhash digests of b"": what a zero-byte file is announced with.
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
EMPTY_XXH128 = "99aa06d3014798d86001c324468d497f"
MIB = 1024 * 1024


def figure(text: str) -> None:
    """A measured figure the report quotes (visible with pytest -s)."""
    print(f"HOSTILE: {text}", flush=True)


# ---- pipelines ----------------------------------------------------------------------------


class Announced:
    """Steps a pipeline and collects every event it puts into the outbox (bodies decoded)."""

    def __init__(self, pipeline: Pipeline, outbox: DurableOutbox) -> None:
        self.pipeline = pipeline
        self.outbox = outbox
        self.bodies: list[Body] = []

    def step(self, wait: float = 0.01) -> None:
        self.pipeline.step(wait)
        self.bodies.extend(drain(self.outbox))

    def until(self, predicate: Callable[[list[Body]], bool], timeout: float = 10.0) -> list[Body]:
        """Step until predicate(all bodies so far) holds; AssertionError after `timeout`."""
        deadline = time.monotonic() + timeout
        while not predicate(self.bodies):
            if time.monotonic() >= deadline:
                raise AssertionError(f"not announced within {timeout}s; got {self.summary()}")
            self.step(0.02)
        return self.bodies

    def settled(self, timeout: float = 10.0) -> list[Body]:
        """Step until no notification, scan or settling path is left; all bodies so far."""
        self.step(0.0)
        deadline = time.monotonic() + timeout
        while not (self.pipeline.notifications.empty() and not self.pipeline.busy):
            if time.monotonic() >= deadline:
                raise AssertionError(f"pipeline still busy after {timeout}s")
            self.step(0.01)
        return self.bodies

    def paths(self, event_type: str | None = None) -> list[str]:
        return [b["file_info"]["relative_path"] for b in self.bodies
                if event_type is None or b["event_type"] == event_type]

    def summary(self) -> list[tuple[str, str]]:
        return [(b["event_type"], b["file_info"]["relative_path"][-60:]) for b in self.bodies]


@contextmanager
def observed_pipeline(tmp_path: Path, *, recursive: bool = True,
                      **options: Any) -> Iterator[tuple[Announced, Path]]:
    """A pipeline over tmp_path/w fed by a real (inotify) observer, as in the watcher child.

    Like the child, the observer starts before the caller's startup scan
    (`announced.pipeline.request_scan()`); it is stopped and joined on exit.
    """
    pipeline, outbox, root = make_pipeline(tmp_path, recursive=recursive, **options)
    observer = start_observer(str(root), recursive=recursive, events=pipeline.notifications,
                              mode="inotify")
    try:
        yield Announced(pipeline, outbox), root
    finally:
        observer.stop()
        observer.join(timeout=10)
        outbox.close()
        pipeline.store.close()


def during_hashing(monkeypatch: Any, action: Callable[[], None]) -> list[int]:
    """Run `action` (a real filesystem change) right after hash_file has read its first chunk,
    once; returns a list that records how many chunks each hash_file call read."""
    from multiwatch.watcher import hashing

    real_xxh128 = xxhash.xxh128
    chunks: list[int] = []
    pending: list[Callable[[], None]] = [action]

    class HookedXxh128:
        def __init__(self) -> None:
            self._real = real_xxh128()
            chunks.append(0)

        def update(self, data: bytes) -> None:
            self._real.update(data)
            chunks[-1] += 1
            if pending:
                pending.pop()()

        def hexdigest(self) -> str:
            return self._real.hexdigest()

    monkeypatch.setattr(hashing, "xxhash", types.SimpleNamespace(xxh128=HookedXxh128))
    return chunks


# ---- odd trees ----------------------------------------------------------------------------


@contextmanager
def descend(root: Path, names: Sequence[str]) -> Iterator[int]:
    """mkdir each name below the previous one, openat-style (relative to a directory fd), so
    the tree can grow deeper than PATH_MAX; yields an fd of the deepest directory."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names:
            os.mkdir(name, dir_fd=fd)
            below = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = below
        yield fd
    finally:
        os.close(fd)


def write_at(dir_fd: int, name: str | bytes, data: bytes) -> None:
    """Create (or replace) a file relative to a directory fd."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=dir_fd)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def names_for_depth(root: Path, total_length: int, leaf: str) -> list[str]:
    """Directory names (200 bytes each, the last one padded) such that
    root/names.../leaf is exactly `total_length` bytes long."""
    length = len(os.fsencode(str(root)))
    names = []
    while length + 1 + 200 + 1 + len(leaf) + 2 < total_length:
        names.append("d" * 200)
        length += 201
    names.append("p" * (total_length - length - 2 - len(leaf)))
    return names


def remove_tree(path: Path) -> None:
    """rm -rf for a tree of any depth and path length: fd-relative and iterative (Python
    3.11's shutil.rmtree recurses, so it cannot remove a 1,000-level tree)."""
    try:
        top = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    stack: list[tuple[int, str]] = [(top, "")]
    while stack:
        fd, _ = stack[-1]
        below = None
        with os.scandir(fd) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    below = entry.name
                    break
                os.unlink(entry.name, dir_fd=fd)
        if below is not None:
            os.chmod(below, 0o700, dir_fd=fd, follow_symlinks=True)
            stack.append((os.open(below, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                  dir_fd=fd), below))
            continue
        os.close(fd)
        _, name = stack.pop()
        if stack:
            os.rmdir(name, dir_fd=stack[-1][0])
    os.rmdir(path)


@contextmanager
def tiny_tmpfs(path: Path, size: str = "2m") -> Iterator[Path]:
    """Mount a tmpfs of `size` on `path` (root only; pytest.skip otherwise); unmounted on exit
    once nothing has files open there any more."""
    import pytest

    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                              str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        deadline = time.monotonic() + 15
        while True:
            done = subprocess.run(["umount", str(path)], capture_output=True, text=True)
            if done.returncode == 0:
                break
            if time.monotonic() >= deadline:  # still busy: detach it rather than leave it
                subprocess.run(["umount", "--lazy", str(path)], check=True)
                break
            time.sleep(0.2)


def fill_up(path: Path) -> int:
    """Write a file at `path` until its filesystem is full (ENOSPC); returns bytes written."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        block = b"\xff" * 4096
        while True:
            try:
                written += os.write(fd, block)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    return written
                raise
    finally:
        os.close(fd)


# ---- memory -------------------------------------------------------------------------------


class PeakRss(threading.Thread):
    """Samples a process's RSS every `interval` seconds until stopped; `.peak`, `.start_rss`."""

    def __init__(self, pid: int | None = None, interval: float = 0.02) -> None:
        super().__init__(name="peak-rss", daemon=True)
        self._process = psutil.Process(pid or os.getpid())
        self._interval = interval
        self._halt = threading.Event()
        self.start_rss = self._process.memory_info().rss
        self.peak = self.start_rss
        self.samples = 0

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                rss = self._process.memory_info().rss
            except psutil.NoSuchProcess:
                return
            self.peak = max(self.peak, rss)
            self.samples += 1
            self._halt.wait(self._interval)

    @property
    def growth(self) -> int:
        return self.peak - self.start_rss

    def __enter__(self) -> PeakRss:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self.join(timeout=5)


# ---- real processes -----------------------------------------------------------------------


class HostileMultiwatch(Multiwatch):
    """`multiwatch run` like tests.support.process.Multiwatch, with two more options:

    - unprivileged: permission bits enforced even as root (setpriv drops CAP_DAC_OVERRIDE and
      CAP_DAC_READ_SEARCH from the bounding set, as privilege.py does); setpriv execs python,
      so the supervisor keeps the pid we started;
    - unset: environment variables removed after Multiwatch's defaults were applied (e.g.
      MULTIWATCH_HTTP_LISTEN, which the harness sets to "off").
    """

    def __init__(self, args: Sequence[str], env: Mapping[str, str] | None = None, *,
                 unprivileged: bool = False, unset: Sequence[str] = ()) -> None:
        prefix = _DROP if unprivileged and os.geteuid() == 0 else []
        environment = _env(env)
        for name in unset:
            environment.pop(name, None)
        self.process = subprocess.Popen(
            [*prefix, *multiwatch_command("run", *args)], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env=environment, start_new_session=True,
        )
        self.lines = []
        self.raw = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()


def UnprivilegedMultiwatch(args: Sequence[str],
                           env: Mapping[str, str] | None = None) -> HostileMultiwatch:
    return HostileMultiwatch(args, env, unprivileged=True)


def roster(tmp_path: Path, instances: Sequence[Mapping[str, Any]], *,
           broker: Mapping[str, Any] | None = None, http_port: int | None = None,
           log_level: str = "INFO", state_dir: Path | None = None,
           defaults: Mapping[str, Any] | None = None) -> Path:
    """A roster with quick settling and restarts; the embedded spool unless `broker` is given;
    the HTTP endpoint on 127.0.0.1:`http_port` if given (else none)."""
    document: dict[str, Any] = {
        "state_dir": str(state_dir or tmp_path / "state"),
        "log_level": log_level,
        "supervisor": {"stop_timeout_seconds": 4, "restart_backoff_seconds": 0.3,
                       "restart_backoff_max_seconds": 1, "report_interval_seconds": 3600},
        "defaults": {"settle_seconds": 0.1, **(defaults or {})},
        "instances": [dict(i) for i in instances],
    }
    if broker is not None:
        document["broker"] = dict(broker)
    if http_port is not None:
        document["http"] = {"listen": f"127.0.0.1:{http_port}"}
    return write_roster(tmp_path / "roster.yaml", document)


def is_log(line: LogLine, message: str, instance_id: str | None = None) -> bool:
    return line.get("message") == message and (
        instance_id is None or line.get("instance_id") == instance_id)


def process_tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def http_request(port: int, path: str, method: str = "GET",
                 host: str = "127.0.0.1") -> tuple[int, str, dict[str, str]]:
    """(status, body, headers) of one request; status 0 if nothing listens."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(f"http://{host}:{port}{path}", method=method,
                                     data=b"{}" if method in ("POST", "PUT", "PATCH") else None)
    try:
        with opener.open(request, timeout=5) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), dict(error.headers)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, "", {}


def http_json(port: int, path: str) -> dict[str, Any]:
    code, body, _ = http_request(port, path)
    try:
        return json.loads(body) if body else {"_status": code}
    except ValueError:
        return {"_status": code, "_body": body}


def instance_view(port: int, instance_id: str) -> dict[str, Any]:
    return http_json(port, "/status").get("instances", {}).get(instance_id, {})


def log_text(mw: Multiwatch) -> str:
    """Everything the process printed so far, one line per log line."""
    return "\n".join(list(mw.raw))


# ---- broker -------------------------------------------------------------------------------


def url_with_user(url: str, user: str, password: str) -> str:
    """The same broker and vhost as `url`, as another user."""
    parts = urllib.parse.urlsplit(url)
    netloc = (f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
              f"@{parts.hostname}:{parts.port}")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@contextmanager
def broker_user(rabbitmq: RabbitMQ, url: str, password: str,
                permissions: tuple[str, str, str] | None = (".*", ".*", ".*"),
                ) -> Iterator[str]:
    """A fresh user with `password` and `permissions` (configure, write, read regexes; None:
    no permission entry at all) on the vhost of `url`; yields its name, deletes it after."""
    user = f"mw-hostile-{uuid.uuid4().hex[:12]}"
    definitions: dict[str, Any] = {
        "users": [{"name": user, "password": password, "tags": ""}],
        "permissions": [],
    }
    if permissions is not None:
        configure, write, read = permissions
        definitions["permissions"] = [{"user": user, "vhost": vhost_of(url),
                                       "configure": configure, "write": write, "read": read}]
    with tempfile.TemporaryDirectory(prefix="mw-user-") as tmp:
        path = Path(tmp) / "definitions.json"
        path.write_text(json.dumps(definitions))
        rabbitmq.rabbitmqctl("import_definitions", str(path))
    try:
        yield user
    finally:
        rabbitmq.rabbitmqctl("delete_user", user)
