"""A private RabbitMQ node for the test suite, or a broker someone else runs.

`RabbitMQ.start()` boots a throw-away node that shares nothing with any other broker on the
machine:

- free TCP ports for AMQP, Erlang distribution and epmd, all bound to 127.0.0.1;
- node name `multiwatch-test-<amqp port>@localhost`;
- its own HOME (Erlang cookie), mnesia, logs, config paths, env file and an empty
  enabled-plugins file (no plugins: faster boot) under one temp dir, removed at stop;
- its own epmd. epmd is normally a machine-wide daemon that the first Erlang node starts
  with `-daemon` (it then detaches into its own session, so nobody "owns" it). We start
  `epmd -port P -address 127.0.0.1` in the foreground as our own child, point the node and
  every rabbitmqctl at it with ERL_EPMD_PORT=P, and forbid erl to start one itself
  (ERL_AFLAGS=-start_epmd false). So the system epmd (port 4369, maybe serving a system
  RabbitMQ) is never used or started, and ours is stopped by pid like everything else.

Every process is started in a new session and stopped by pid / process group; the pids (and
their start times, to guard against pid reuse) are also written to `<workdir>/state.json`.

On Debian `/usr/sbin/rabbitmq-server` is a wrapper that `su`s to the rabbitmq user and
hard-codes /var/lib/rabbitmq; we run the real scripts from /usr/lib/rabbitmq/bin instead (or
from MULTIWATCH_TEST_RABBITMQ_SBIN, or from PATH on other layouts).

Reusing an external broker: set MULTIWATCH_TEST_AMQP_URL. rabbitmqctl is then available only if
MULTIWATCH_TEST_RABBITMQ_NODE names the node (plus MULTIWATCH_TEST_ERLANG_COOKIE and
ERL_EPMD_PORT when they differ from the defaults); the `broker_url` fixture needs it.

By hand:
    eval "$(python -m tests.support.rabbitmq start)"   # prints export lines
    python -m tests.support.rabbitmq stop               # stops what `start` started
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import amqp
import psutil

AMQP_URL_ENV = "MULTIWATCH_TEST_AMQP_URL"
NODE_ENV = "MULTIWATCH_TEST_RABBITMQ_NODE"
COOKIE_ENV = "MULTIWATCH_TEST_ERLANG_COOKIE"
SBIN_ENV = "MULTIWATCH_TEST_RABBITMQ_SBIN"
STATE_ENV = "MULTIWATCH_TEST_RABBITMQ_STATE"

_SBIN_DIRS = ("/usr/lib/rabbitmq/bin",)  # Debian/Ubuntu: the real scripts behind /usr/sbin
_EXTRA_PATH = "/usr/local/sbin:/usr/sbin:/sbin"

# No rabbitmq.conf on purpose: RABBITMQ_CONFIG_FILE points at a file we never create, which
# keeps /etc/rabbitmq/rabbitmq.conf out and skips the cuttlefish schema pass (~0.7 s of boot
# here). Listener address and port come from RABBITMQ_NODE_IP_ADDRESS/RABBITMQ_NODE_PORT; the
# rest are plain Erlang app settings. guest stays loopback-only (the default).
_ERL_ARGS = (
    "-kernel inet_dist_use_interface {127,0,0,1}"  # distribution listens on loopback only
    " -rabbit disk_free_limit 1000000"  # 1MB, not 50MB: a full CI disk must not block publishers
)


class RabbitMQError(RuntimeError):
    """The test broker could not be started, reached or controlled."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable  # the node died early (e.g. a port got taken): try again


def find_tool(name: str) -> str | None:
    """Path of the real RabbitMQ script `name` (rabbitmq-server, rabbitmqctl), or None."""
    dirs = [os.environ[SBIN_ENV]] if os.environ.get(SBIN_ENV) else []
    for directory in [*dirs, *_SBIN_DIRS]:
        candidate = Path(directory) / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:{_EXTRA_PATH}")


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports that are free on 127.0.0.1 right now."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def amqp_connection(url: str, connect_timeout: float) -> amqp.Connection:
    """A not-yet-connected py-amqp connection to the URL's vhost.

    py-amqp directly: kombu's `Connection.connect()` sleeps 2 s between its own retries.
    """
    parts = urllib.parse.urlsplit(url)
    return amqp.Connection(
        host=f"{parts.hostname}:{parts.port}",
        userid=urllib.parse.unquote(parts.username or "guest"),
        password=urllib.parse.unquote(parts.password or "guest"),
        virtual_host=urllib.parse.unquote(parts.path[1:]) if len(parts.path) > 1 else "/",
        connect_timeout=connect_timeout,
    )


def accepts_amqp(url: str) -> bool:
    """True if the broker completes an AMQP handshake on the URL's vhost now (a booting or
    stopped broker refuses)."""
    conn = amqp_connection(url, connect_timeout=2)
    try:
        conn.connect()
    except Exception:  # noqa: BLE001 - any failure just means "not yet"
        conn.collect()
        return False
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - it answered; how it hung up does not matter
        conn.collect()
    return True


def _tails(paths: Sequence[Path], lines: int = 30) -> str:
    """The last lines of each log, for error messages."""
    parts = []
    for path in paths:
        try:
            text = "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            text = "<missing>"
        parts.append(f"--- {path}\n{text}")
    return "\n".join(parts)


@dataclass
class _Proc:
    """A process we started, identified by pid plus start time (pids get reused)."""

    pid: int
    create_time: float
    name: str

    @classmethod
    def of(cls, pid: int) -> _Proc:
        p = psutil.Process(pid)
        return cls(pid=pid, create_time=p.create_time(), name=p.name())

    def process(self) -> psutil.Process | None:
        """The live process, or None if it exited (zombies of ours are reaped here)."""
        try:
            p = psutil.Process(self.pid)
            if abs(p.create_time() - self.create_time) > 0.01:
                return None  # the pid now belongs to someone else
            if p.status() == psutil.STATUS_ZOMBIE:
                try:
                    os.waitpid(self.pid, os.WNOHANG)
                except ChildProcessError:
                    pass
                return None
            return p
        except psutil.NoSuchProcess:
            return None

    def alive(self) -> bool:
        return self.process() is not None

    def wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def signal(self, sig: int, *, group: bool = False) -> None:
        if self.process() is None:
            return
        try:
            if group:
                os.killpg(self.pid, sig)  # started with start_new_session: pgid == pid
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 10.0, *, group: bool = False) -> None:
        """SIGTERM, wait up to `timeout`, then SIGKILL and wait again."""
        if not self.alive():
            return
        self.signal(signal.SIGTERM, group=group)
        if not self.wait_gone(timeout):
            self.signal(signal.SIGKILL, group=group)
            if not self.wait_gone(5.0):
                raise RabbitMQError(f"{self.name} pid {self.pid} survived SIGKILL")


@dataclass
class RabbitMQ:
    """A broker the tests can use: `amqp_url`, `node`, `rabbitmqctl(...)`, `stop()`."""

    amqp_url: str
    node: str | None
    ctl_env: dict[str, str] = field(repr=False)
    cookie: str | None = field(default=None, repr=False)
    owned: bool = False
    workdir: Path | None = None
    server: _Proc | None = None
    epmd: _Proc | None = None
    descendants: list[_Proc] = field(default_factory=list)
    startup_seconds: float | None = None
    _bins: tuple[str, str] = field(default=("", ""), repr=False)  # epmd, rabbitmq-server
    _ctl_bin: str | None = field(default=None, repr=False)
    _popens: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)
    _started_at: float = field(default=0.0, repr=False)
    _stopped: bool = field(default=False, repr=False)

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def start_or_reuse(cls, environ: Mapping[str, str] | None = None) -> RabbitMQ:
        """Reuse the broker named by MULTIWATCH_TEST_AMQP_URL, else start a private node."""
        env = os.environ if environ is None else environ
        if env.get(AMQP_URL_ENV):
            return cls.reuse(env)
        return cls.start()

    @classmethod
    def reuse(cls, environ: Mapping[str, str]) -> RabbitMQ:
        """Describe an already running broker; `stop()` will leave it alone."""
        ctl_env = dict(environ)
        # rabbitmqctl must not leave an epmd daemon behind either; the node's epmd is running.
        ctl_env["ERL_AFLAGS"] = f"-start_epmd false {ctl_env.get('ERL_AFLAGS', '')}".strip()
        return cls(
            amqp_url=environ[AMQP_URL_ENV],
            node=environ.get(NODE_ENV) or None,
            ctl_env=ctl_env,
            cookie=environ.get(COOKIE_ENV) or None,
            owned=False,
        )

    @classmethod
    def start(cls, *, timeout: float = 120.0, attempts: int = 3) -> RabbitMQ:
        """Boot a private node and wait (up to `timeout` per attempt) until it serves AMQP.

        A port picked free can be taken before the node binds it; such an attempt fails
        fast (the node exits) and is retried with fresh ports.
        """
        for attempt in range(1, attempts + 1):
            broker = cls._prepare()
            try:
                broker._spawn()
                broker._await_ready(timeout)
                return broker
            except RabbitMQError as exc:
                broker.stop()
                if not exc.retryable or attempt == attempts:
                    raise
            except BaseException:  # Ctrl-C while booting: still leave nothing behind
                broker.stop()
                raise
        raise AssertionError("unreachable")

    @classmethod
    def _prepare(cls) -> RabbitMQ:
        """Pick ports, write the node's files and environment; start nothing yet."""
        server_bin = find_tool("rabbitmq-server")
        ctl_bin = find_tool("rabbitmqctl")
        epmd_bin = shutil.which("epmd", path=f"{os.environ.get('PATH', '')}:/usr/lib/erlang/bin")
        if not (server_bin and ctl_bin and epmd_bin):
            raise RabbitMQError(
                "rabbitmq-server/rabbitmqctl/epmd not found; install it with `make rabbitmq-deps` "
                f"(apt-get install rabbitmq-server), set {SBIN_ENV}, or point {AMQP_URL_ENV} "
                "at a running broker"
            )
        amqp_port, dist_port, epmd_port = free_ports(3)
        node = f"multiwatch-test-{amqp_port}@localhost"
        workdir = Path(tempfile.mkdtemp(prefix=f"multiwatch-rabbitmq-{amqp_port}-"))
        home = workdir / "home"
        home.mkdir()
        cookie = secrets.token_hex(16).upper()
        cookie_file = home / ".erlang.cookie"
        cookie_file.write_text(cookie)
        cookie_file.chmod(0o400)
        (workdir / "enabled_plugins").write_text("[].\n")
        (workdir / "rabbitmq-env.conf").write_text("")  # shadows /etc/rabbitmq/rabbitmq-env.conf

        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(home),
            ERL_EPMD_PORT=str(epmd_port),
            ERL_CRASH_DUMP=str(workdir / "erl_crash.dump"),
            # Every erl we cause (node, its epmd-starter helper, each rabbitmqctl) would
            # otherwise run `epmd -daemon`, which detaches: if our epmd were gone, a stray one
            # nobody owns would be left behind. Ours is started up front instead.
            ERL_AFLAGS="-start_epmd false",
            RABBITMQ_NODENAME=node,
            RABBITMQ_USE_LONGNAME="false",
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(amqp_port),
            RABBITMQ_DIST_PORT=str(dist_port),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=_ERL_ARGS,
            RABBITMQ_CONF_ENV_FILE=str(workdir / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(workdir / "rabbitmq.conf"),  # absent on purpose
            RABBITMQ_ADVANCED_CONFIG_FILE=str(workdir / "advanced.config"),  # absent on purpose
            RABBITMQ_ENABLED_PLUGINS_FILE=str(workdir / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(workdir / "mnesia"),
            RABBITMQ_LOG_BASE=str(workdir / "log"),
            RABBITMQ_LOGS=str(workdir / "log" / "rabbit.log"),
        )
        return cls(
            amqp_url=f"amqp://guest:guest@127.0.0.1:{amqp_port}//",
            node=node,
            ctl_env=env,
            owned=True,
            workdir=workdir,
            _bins=(epmd_bin, server_bin),
            _ctl_bin=ctl_bin,
        )

    def _spawn(self) -> None:
        """Start our epmd, wait for it to listen, then start the node (both in new sessions)."""
        assert self.workdir is not None
        epmd_bin, server_bin = self._bins
        epmd_port = int(self.ctl_env["ERL_EPMD_PORT"])
        atexit.register(self.stop)  # backstop; the fixture stops it explicitly
        self._started_at = time.monotonic()
        with open(self.workdir / "epmd.out", "wb") as out:
            epmd = subprocess.Popen(
                [epmd_bin, "-port", str(epmd_port), "-address", "127.0.0.1"],
                env=self.ctl_env, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        self._popens.append(epmd)
        self.epmd = _Proc.of(epmd.pid)
        self._wait(lambda: _port_open(epmd_port), 10.0, "epmd to listen", epmd,
                   self.workdir / "epmd.out")
        with open(self.workdir / "server.out", "wb") as out:
            server = subprocess.Popen(
                [server_bin], env=self.ctl_env, cwd=self.workdir, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self._popens.append(server)
        self.server = _Proc.of(server.pid)
        self._write_state()

    # ---- readiness ----------------------------------------------------------------------

    def _wait(self, ready: Callable[[], bool], timeout: float, what: str,
              proc: subprocess.Popen[bytes], *logs: Path) -> None:
        """Poll `ready` until true; fail fast if `proc` exits, or at the deadline."""
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                raise RabbitMQError(f"{what}: process exited with {proc.returncode}\n"
                                    + _tails(logs), retryable=True)
            if time.monotonic() >= deadline:
                raise RabbitMQError(f"timed out after {timeout}s waiting for {what}\n"
                                    + _tails(logs))
            time.sleep(0.1)

    def _await_ready(self, timeout: float) -> None:
        assert self.workdir is not None
        server = self._popens[-1]
        self._wait(lambda: accepts_amqp(self.amqp_url), timeout, f"{self.node} to accept AMQP",
                   server, self.workdir / "server.out", self.workdir / "log" / "rabbit.log")
        # Also proves the CLI can reach the node (cookie, epmd) before any test relies on it.
        self.rabbitmqctl("await_startup", "--timeout", str(int(timeout)), timeout=timeout)
        self.startup_seconds = time.monotonic() - self._started_at
        self._record_descendants()

    def _record_descendants(self) -> None:
        """Remember the node's helper processes (beam, erl_child_setup, ...) by pid.

        erl_child_setup calls setsid(), so the server's process group does not cover it.
        """
        known = {(p.pid, p.create_time) for p in self.descendants}
        p = self.server.process() if self.server is not None else None
        for child in p.children(recursive=True) if p else []:
            try:
                proc = _Proc.of(child.pid)
            except psutil.NoSuchProcess:
                continue
            if (proc.pid, proc.create_time) not in known:
                self.descendants.append(proc)
        self._write_state()

    # ---- control ------------------------------------------------------------------------

    @property
    def has_rabbitmqctl(self) -> bool:
        return self.node is not None and self._ctl() is not None

    def _ctl(self) -> str | None:
        return self._ctl_bin or find_tool("rabbitmqctl")

    def rabbitmqctl(self, *args: str, timeout: float = 60.0, quiet: bool = True) -> str:
        """Run `rabbitmqctl -n <node> [-q] args...` against this broker; return its stdout."""
        ctl = self._ctl()
        if self.node is None or ctl is None:
            raise RabbitMQError(
                f"rabbitmqctl unavailable for {self.amqp_url}: set {NODE_ENV} "
                "(and install rabbitmq-server for its CLI)"
            )
        cmd = [ctl, "-n", self.node]
        if self.cookie:
            cmd += ["--erlang-cookie", self.cookie]
        if quiet:
            cmd.append("-q")
        cmd += list(args)
        try:
            done = subprocess.run(cmd, env=self.ctl_env, capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired as exc:
            raise RabbitMQError(f"rabbitmqctl {' '.join(args)} timed out after {timeout}s") from exc
        if done.returncode != 0:
            raise RabbitMQError(
                f"rabbitmqctl {' '.join(args)} exited {done.returncode}:\n"
                f"{done.stdout}{done.stderr}"
            )
        return done.stdout

    @property
    def user(self) -> str:
        """The user in `amqp_url` (guest for a private node; guest works from localhost only)."""
        return urllib.parse.unquote(urllib.parse.urlsplit(self.amqp_url).username or "guest")

    def url_for(self, vhost: str) -> str:
        """The AMQP URL of `vhost` on this broker (vhost percent-quoted, '/' included)."""
        parts = urllib.parse.urlsplit(self.amqp_url)
        return urllib.parse.urlunsplit(
            (parts.scheme, parts.netloc, "/" + urllib.parse.quote(vhost, safe=""), "", "")
        )

    def pids(self) -> list[int]:
        """Pids of every process this object started and still considers its own."""
        procs = [self.epmd, self.server, *self.descendants]
        return [p.pid for p in procs if p is not None]

    def stop(self) -> None:
        """Stop what we started (never a reused broker), by pid / process group; remove files.

        `rabbitmqctl stop` first (clean shutdown), then SIGTERM → SIGKILL to the server's process
        group, then any recorded descendant that left the group (erl_child_setup calls setsid),
        then our epmd. Idempotent.
        """
        if self._stopped or not self.owned:
            self._stopped = True
            return
        self._stopped = True
        errors: list[str] = []
        if self.server is not None and self.server.alive():
            self._record_descendants()
            try:
                self.rabbitmqctl("stop", timeout=30.0)
            except RabbitMQError as exc:
                errors.append(str(exc))
            # The sh wrapper exits when beam does; give the clean shutdown time to finish.
            if not self.server.wait_gone(30.0):
                errors.append(f"{self.node} ignored `rabbitmqctl stop`; killing its group")
        if self.server is not None:
            try:
                self.server.stop(10.0, group=True)
            except RabbitMQError as exc:
                errors.append(str(exc))
        for proc in self.descendants:  # helpers exit on their own once beam is gone
            if not proc.wait_gone(5.0):
                try:
                    proc.stop(5.0)
                except RabbitMQError as exc:
                    errors.append(str(exc))
        if self.epmd is not None:
            try:
                self.epmd.stop(5.0, group=True)
            except RabbitMQError as exc:
                errors.append(str(exc))
        for popen in self._popens:
            popen.poll()  # reap, so no zombie of ours outlives the session
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        state = Path(os.environ.get(STATE_ENV, _default_state_file()))
        if state.exists() and _state_workdir(state) == str(self.workdir):
            state.unlink(missing_ok=True)
        leftovers = [p for p in [self.server, self.epmd, *self.descendants] if p and p.alive()]
        if leftovers:
            raise RabbitMQError(f"processes left running: {leftovers}; {errors}")

    # ---- state file (for `python -m tests.support.rabbitmq stop`) ------------------------

    def _state(self) -> dict[str, Any]:
        def proc(p: _Proc | None) -> dict[str, Any] | None:
            return None if p is None else {"pid": p.pid, "create_time": p.create_time,
                                           "name": p.name}

        return {
            "amqp_url": self.amqp_url,
            "node": self.node,
            "workdir": str(self.workdir),
            "ctl_env": {k: v for k, v in self.ctl_env.items()
                        if k == "HOME" or k.startswith(("RABBITMQ_", "ERL_"))},
            "server": proc(self.server),
            "epmd": proc(self.epmd),
            "descendants": [proc(p) for p in self.descendants],
        }

    def _write_state(self) -> None:
        if self.workdir is not None and self.workdir.exists():
            (self.workdir / "state.json").write_text(json.dumps(self._state(), indent=2))

    @classmethod
    def from_state(cls, path: Path) -> RabbitMQ:
        """Rebuild an owned broker from the state.json a `start` wrote (to stop it later)."""
        data = json.loads(path.read_text())

        def proc(d: dict[str, Any] | None) -> _Proc | None:
            return None if d is None else _Proc(d["pid"], d["create_time"], d["name"])

        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(data["ctl_env"])
        return cls(
            amqp_url=data["amqp_url"], node=data["node"], ctl_env=env, owned=True,
            workdir=Path(data["workdir"]), server=proc(data["server"]), epmd=proc(data["epmd"]),
            descendants=[p for p in map(proc, data["descendants"]) if p is not None],
        )

    def export_lines(self) -> list[str]:
        """Shell `export` lines that let another process reuse this broker."""
        cookie = (Path(self.ctl_env["HOME"]) / ".erlang.cookie").read_text().strip()
        pairs = {
            AMQP_URL_ENV: self.amqp_url,
            NODE_ENV: self.node or "",
            COOKIE_ENV: cookie,
            "ERL_EPMD_PORT": self.ctl_env["ERL_EPMD_PORT"],
        }
        return [f"export {k}={shlex.quote(v)}" for k, v in pairs.items()]


def _default_state_file() -> str:
    return os.path.join(tempfile.gettempdir(), "multiwatch-test-rabbitmq.json")


def _state_workdir(path: Path) -> str | None:
    try:
        return str(json.loads(path.read_text())["workdir"])
    except (OSError, ValueError, KeyError):
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """`start`: boot a node, print export lines, leave it running. `stop`: stop that node."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0] not in {"start", "stop"}:
        print("usage: python -m tests.support.rabbitmq start|stop", file=sys.stderr)
        return 2
    state = Path(os.environ.get(STATE_ENV, _default_state_file()))
    if args[0] == "start":
        if state.exists():
            print(f"{state} exists: run `stop` first", file=sys.stderr)
            return 1
        broker = RabbitMQ.start()
        atexit.unregister(broker.stop)  # leave it running for the user
        assert broker.workdir is not None
        shutil.copyfile(broker.workdir / "state.json", state)
        print(f"# {broker.node} ready in {broker.startup_seconds:.1f}s; state in {state}",
              file=sys.stderr)
        print("\n".join(broker.export_lines()))
        return 0
    if not state.exists():
        print(f"{state} not found: nothing to stop", file=sys.stderr)
        return 1
    broker = RabbitMQ.from_state(state)
    broker.stop()
    state.unlink(missing_ok=True)
    print(f"# stopped {broker.node}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
