"""Broker nodes that accept TCP and never answer: what a SIGSTOPped or paused node looks like.

`FrozenNode` listens, accepts and never reads.  `FreezableProxy` forwards to a real broker
until `freeze()`, after which it neither reads nor forwards anything (connections stay open,
new ones are accepted and ignored): a node that froze under a connected client.  Both run
in one daemon thread and close every socket they hold in `close()`.
"""

from __future__ import annotations

import selectors
import socket
import threading
from urllib.parse import urlsplit, urlunsplit


def url_via(url: str, port: int, host: str = "127.0.0.1") -> str:
    """`url` (credentials and vhost kept) pointed at host:port instead."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


class FreezableProxy:
    """A TCP relay to `upstream` (host, port) on 127.0.0.1:<port>; `freeze()` stops it."""

    def __init__(self, upstream: tuple[str, int], *, frozen: bool = False) -> None:
        self._upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._frozen = threading.Event()
        if frozen:
            self._frozen.set()
        self._closing = threading.Event()
        self._wake_read, self._wake_write = socket.socketpair()
        self._held: list[socket.socket] = []
        self._peer: dict[socket.socket, socket.socket] = {}
        self._selector = selectors.DefaultSelector()
        self._thread = threading.Thread(target=self._run, name="frozen-node", daemon=True)
        self._thread.start()

    @classmethod
    def listening_only(cls) -> FreezableProxy:
        """A node that accepts and never reads (no broker behind it)."""
        return cls(("127.0.0.1", 9), frozen=True)

    def freeze(self) -> None:
        """From now on nothing is read or forwarded, in either direction."""
        self._frozen.set()
        self._wake_write.send(b"f")

    def close(self) -> None:
        self._closing.set()
        self._wake_write.send(b"c")
        self._thread.join(timeout=5)
        for sock in [self._listener, self._wake_read, self._wake_write, *self._held,
                     *self._peer]:
            try:
                sock.close()
            except OSError:
                pass

    def _run(self) -> None:
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        while not self._closing.is_set():
            for key, _ in self._selector.select(timeout=1.0):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._wake_read:
                    sock.recv(64)
                    if self._frozen.is_set():
                        self._stop_relaying()
                elif sock is self._listener:
                    self._accept()
                elif sock in self._peer:
                    self._relay(sock)

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        self._held.append(client)  # kept open, never read while frozen
        if self._frozen.is_set():
            return
        upstream = socket.create_connection(self._upstream, timeout=5)
        self._held.append(upstream)
        self._peer[client], self._peer[upstream] = upstream, client
        for sock in (client, upstream):
            self._selector.register(sock, selectors.EVENT_READ)

    def _relay(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
            if data:
                self._peer[sock].sendall(data)
                return
        except OSError:
            pass
        for end in (sock, self._peer[sock]):  # one side closed: close the pair
            self._selector.unregister(end)
            self._peer.pop(end, None)
            end.close()

    def _stop_relaying(self) -> None:
        for sock in list(self._peer):
            self._selector.unregister(sock)
        self._peer.clear()
