"""A flood of slow HTTP clients (slowloris) and a /healthz latency probe, for tests and bench.

Each client opens a connection, sends the start of a request and then one more header byte
every `trickle_seconds`, never finishing it; a connection the server closes is opened again,
so the pressure stays on for as long as the flood runs.  One thread drives every socket.
"""

from __future__ import annotations

import http.client
import socket
import statistics
import threading
import time
from dataclasses import dataclass

_START = b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


class SlowFlood:
    """`count` trickling connections to host:port, kept open (and reopened) until stop()."""

    def __init__(self, host: str, port: int, count: int, *, trickle_seconds: float = 0.5) -> None:
        self._address = (host, port)
        self._sockets: list[socket.socket | None] = [None] * count
        self._trickle = trickle_seconds
        self._stop = threading.Event()
        self.opened = 0  # connections opened in all (reopened ones included)
        self._thread = threading.Thread(target=self._run, name="slow-flood", daemon=True)

    def __enter__(self) -> SlowFlood:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def open_now(self) -> int:
        """How many of the flood's connections are open right now (as far as it knows)."""
        return sum(s is not None for s in self._sockets)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for index, sock in enumerate(self._sockets):
            if sock is not None:
                sock.close()
                self._sockets[index] = None

    def _run(self) -> None:
        while not self._stop.is_set():
            for index, sock in enumerate(self._sockets):
                if self._stop.is_set():
                    return
                self._sockets[index] = self._step(sock)
            self._stop.wait(self._trickle)

    def _step(self, sock: socket.socket | None) -> socket.socket | None:
        """Open a missing connection, or trickle one byte on an open one; None if it failed."""
        try:
            if sock is None:
                sock = socket.create_connection(self._address, timeout=0.5)
                sock.setblocking(False)
                self.opened += 1
                sock.send(_START)
            else:
                sock.send(b"a")
            return sock
        except OSError:  # refused, reset, closed by the server, backlog full: try again later
            if sock is not None:
                sock.close()
            return None


@dataclass(frozen=True)
class Latency:
    """Response times of successive GETs; failures counted apart."""

    seconds: list[float]
    failures: list[str]

    @property
    def p50(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("inf")

    @property
    def max(self) -> float:
        return max(self.seconds) if self.seconds else float("inf")

    def describe(self) -> str:
        return (f"{len(self.seconds)} answered, p50 {self.p50 * 1000:.0f} ms, "
                f"max {self.max * 1000:.0f} ms, {len(self.failures)} failed "
                f"{sorted(set(self.failures))[:3]}")


def measure_get(host: str, port: int, path: str, *, samples: int, timeout: float,
                pause: float = 0.2) -> Latency:
    """Time `samples` GETs of `path` (each bounded by `timeout`); only 200s count as answered."""
    seconds: list[float] = []
    failures: list[str] = []
    for _ in range(samples):
        started = time.monotonic()
        try:
            connection = http.client.HTTPConnection(host, port, timeout=timeout)
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                response.read()
            finally:
                connection.close()
            if response.status == 200:
                seconds.append(time.monotonic() - started)
            else:
                failures.append(f"HTTP {response.status}")
        except (OSError, http.client.HTTPException) as exc:
            failures.append(type(exc).__name__)
        time.sleep(pause)
    return Latency(seconds, failures)
