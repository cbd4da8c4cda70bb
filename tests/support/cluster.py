"""A private three-node RabbitMQ cluster on this machine, built from `tests.support.rabbitmq`.

Each node is a `RabbitMQ` prepared the usual way (free AMQP and distribution ports, node name
`multiwatch-test-<amqp port>@localhost`, its own data, log and HOME directories), with two
changes so that the nodes can find each other: they share the first node's epmd (started by
us, as for a single node) and its Erlang cookie. The first node boots alone; the others boot
together with `cluster_nodes` naming it, so they join it during boot.

`stop()` stops every node by pid (the joined ones first, the one owning epmd last) and
removes their directories.
"""

from __future__ import annotations

import atexit
import json
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.rabbitmq import RabbitMQ, RabbitMQError, _Proc, accepts_amqp


def _share_epmd_and_cookie(node: RabbitMQ, first: RabbitMQ) -> None:
    node.ctl_env["ERL_EPMD_PORT"] = first.ctl_env["ERL_EPMD_PORT"]
    cookie = (Path(first.ctl_env["HOME"]) / ".erlang.cookie").read_text()
    mine = Path(node.ctl_env["HOME"]) / ".erlang.cookie"
    mine.chmod(0o600)
    mine.write_text(cookie)
    mine.chmod(0o400)


def _spawn_server_only(node: RabbitMQ) -> None:
    """Start a prepared node's server without an epmd of its own (the first node's serves)."""
    assert node.workdir is not None
    atexit.register(node.stop)
    with open(node.workdir / "server.out", "wb") as out:
        server = subprocess.Popen(
            [node._bins[1]], env=node.ctl_env, cwd=node.workdir, stdin=subprocess.DEVNULL,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    node._popens.append(server)
    node.server = _Proc.of(server.pid)
    node._started_at = time.monotonic()
    node._write_state()


def _await_amqp(node: RabbitMQ, timeout: float) -> None:
    """Wait until the node serves AMQP (after discovery: a joining node has joined by then)."""
    assert node.workdir is not None
    node._wait(lambda: accepts_amqp(node.amqp_url), timeout, f"{node.node} to accept AMQP",
               node._popens[-1], node.workdir / "server.out", node.workdir / "log" / "rabbit.log")
    node.startup_seconds = time.monotonic() - node._started_at
    node._record_descendants()


@dataclass
class RabbitMQCluster:
    """Three clustered nodes: `nodes[i].amqp_url`, `.node`, `.rabbitmqctl(...)`; `stop()`."""

    nodes: list[RabbitMQ] = field(default_factory=list)
    startup_seconds: float = 0.0

    @classmethod
    def start(cls, size: int = 3, *, timeout: float = 120.0) -> RabbitMQCluster:
        """Boot the first node, then the others configured to join it as they boot.

        RabbitMQ's classic-config peer discovery (`cluster_nodes`) makes a fresh node join a
        listed running node during boot: no `stop_app`/`join_cluster`/`start_app` round trips,
        each of which costs an Erlang VM start for rabbitmqctl.
        """
        began = time.monotonic()
        cluster = cls([RabbitMQ._prepare() for _ in range(size)])
        first, *others = cluster.nodes
        try:
            for node in others:
                _share_epmd_and_cookie(node, first)
                node.ctl_env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] += (
                    f" -rabbit cluster_nodes {{['{first.node}'],disc}}")
            first._spawn()  # our epmd, then the first node
            _await_amqp(first, timeout)
            for node in others:
                _spawn_server_only(node)
            for node in others:
                _await_amqp(node, timeout)
            cluster._await_members(timeout)
        except BaseException:
            cluster.stop()
            raise
        cluster.startup_seconds = time.monotonic() - began
        return cluster

    def running_nodes(self, via: RabbitMQ | None = None) -> list[str]:
        """Names of the cluster's nodes whose RabbitMQ application runs (asked of `via`)."""
        asked = via or self.nodes[0]
        out = asked.rabbitmqctl("cluster_status", "--formatter", "json")
        return sorted(json.loads(out[out.find("{"):]).get("running_nodes", []))

    def _await_members(self, timeout: float) -> None:
        want = sorted(str(node.node) for node in self.nodes)
        deadline = time.monotonic() + timeout
        while self.running_nodes() != want:
            if time.monotonic() >= deadline:
                raise RabbitMQError(f"cluster did not form within {timeout}s: "
                                    f"{self.running_nodes()} != {want}")
            time.sleep(0.2)

    def pids(self) -> list[int]:
        return [pid for node in self.nodes for pid in node.pids()]

    def leftovers(self) -> list[int]:
        """Pids of processes we started that still run (zombies and reused pids excluded)."""
        procs = [p for node in self.nodes for p in (node.server, node.epmd, *node.descendants)]
        return [p.pid for p in procs if p is not None and p.alive()]

    def stop(self) -> None:
        """Stop every node by pid, the epmd owner last; raise if anything is left running."""
        errors: list[str] = []

        def stop(node: RabbitMQ) -> None:
            try:
                node.stop()
            except RabbitMQError as exc:
                errors.append(str(exc))

        if not self.nodes:
            return
        first, *others = self.nodes
        # The joined nodes in parallel (each `rabbitmqctl stop` starts a VM), then the first,
        # whose epmd they use.
        threads = [threading.Thread(target=stop, args=(node,)) for node in others]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stop(first)
        if errors:
            raise RabbitMQError("; ".join(errors))
