"""Connection handling for the endpoint, with hard bounds a hostile client cannot stretch.

One IO thread owns every socket (non-blocking, one selector); a small pool of worker threads
only turns a complete request head into response bytes.  So a slow client costs one file
descriptor and a few bytes, never a thread, and only until its deadline:

- a request head must arrive whole within REQUEST_DEADLINE_SECONDS of the accept (one
  deadline for the whole head: trickling a byte at a time does not renew it) and within
  MAX_HEAD_BYTES; the response must be taken within RESPONSE_DEADLINE_SECONDS;
- at most MAX_CONNECTIONS are open, at most half of the open-file limit left after
  RESERVED_FDS, and none is kept on a descriptor inside that reserve: the rest of the
  supervisor (children's pipes, psutil) keeps descriptors to work with.  Beyond a bound
  the oldest connection still sending its request is closed to make room, so a fresh probe
  gets in while a flood of trickling clients gets nothing;
- the worker queue is bounded: when it is full the answer is an immediate 503;
- `accept` failing for lack of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM)
  pauses accepting with a growing delay (the listening socket stays readable, so retrying at
  once would spin) and closes the oldest unfinished connection;
- an unexpected error in the IO loop is logged and the loop goes on after a short pause.

While idle the IO thread sleeps in select() with no timeout; `stop()` wakes it through a pipe.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import resource
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 64
RESERVED_FDS = 16
REQUEST_DEADLINE_SECONDS = 5.0
RESPONSE_DEADLINE_SECONDS = 5.0
MAX_HEAD_BYTES = 16 * 1024
WORKERS = 2
WORK_QUEUE = 8
LISTEN_BACKLOG = 16
ACCEPT_PAUSE_SECONDS = (0.05, 1.0)  # first and longest pause after accept ran out of resources
ERROR_PAUSE_SECONDS = 0.1
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_LOG_EVERY_SECONDS = 60.0

# (request head, client address) -> the complete response, status line to body.
Respond = Callable[[bytes, Any], bytes]


def plain_response(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    """A complete HTTP/1.0 response that closes the connection."""
    return (f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
            "Connection: close\r\n\r\n").encode() + body


BUSY = plain_response("503 Service Unavailable", b'{"error": "busy; try again"}\n')
TOO_LARGE = plain_response("431 Request Header Fields Too Large",
                           b'{"error": "request head too large"}\n')
FAILED = plain_response("500 Internal Server Error",
                        b'{"error": "internal error; see the supervisor log"}\n')


class _Connection:
    __slots__ = ("address", "deadline", "head", "out", "reading", "sock")

    def __init__(self, sock: socket.socket, address: Any, deadline: float) -> None:
        self.sock = sock
        self.address = address
        self.deadline = deadline
        self.head = bytearray()
        self.out: memoryview | None = None
        self.reading = True  # False once the head is complete (a worker or the send has it)


class BoundedServer:
    """Serves `respond` on a bound listening socket until `stop()`; see the module doc."""

    def __init__(self, listener: socket.socket, respond: Respond) -> None:
        self._listener = listener
        self._respond = respond
        listener.listen(LISTEN_BACKLOG)
        listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._selector.register(listener, selectors.EVENT_READ, "listener")
        self._selector.register(self._wake_read, selectors.EVENT_READ, "wake")
        self._connections: dict[int, _Connection] = {}  # in accept order: oldest first
        self._work: queue.Queue[tuple[_Connection, bytes] | None] = queue.Queue(WORK_QUEUE)
        self._done: queue.SimpleQueue[tuple[_Connection, bytes]] = queue.SimpleQueue()
        self._stopping = False
        self._accept_pause = ACCEPT_PAUSE_SECONDS[0]
        self._accepting_again_at: float | None = None  # while accepting is paused
        self._last_logged: dict[str, float] = {}
        self._workers = [threading.Thread(target=self._work_loop, daemon=True,
                                          name=f"multiwatch-http-worker-{n}")
                         for n in range(WORKERS)]

    # -- the IO thread ------------------------------------------------------------------------

    def serve(self) -> None:
        """Run the IO loop (in the calling thread) until stop()."""
        for worker in self._workers:
            worker.start()
        while not self._stopping:
            try:
                self._turn()
            except Exception:  # noqa: BLE001 - logged: outlive any bug in one connection
                self._log_limited("loop", "HTTP endpoint: unexpected error; carrying on",
                                  exc_info=True)
                time.sleep(ERROR_PAUSE_SECONDS)

    def _turn(self) -> None:
        for key, events in self._selector.select(self._timeout()):
            if key.data == "listener":
                self._accept()
            elif key.data == "wake":
                _drain(self._wake_read)
            else:
                connection: _Connection = key.data
                if events & selectors.EVENT_READ:
                    self._read(connection)
                if events & selectors.EVENT_WRITE and connection.sock.fileno() >= 0:
                    self._write(connection)
        while True:
            try:
                connection, response = self._done.get_nowait()
            except queue.Empty:
                break
            self._start_sending(connection, response)
        now = time.monotonic()
        for connection in [c for c in self._connections.values() if c.deadline <= now]:
            self._close(connection)  # too slow to send its request or to take the answer
        if self._accepting_again_at is not None and now >= self._accepting_again_at:
            self._accepting_again_at = None
            self._selector.register(self._listener, selectors.EVENT_READ, "listener")

    def _timeout(self) -> float | None:
        """Until the next deadline or the end of an accept pause; None (sleep) when idle."""
        moments = [c.deadline for c in self._connections.values()]
        if self._accepting_again_at is not None:
            moments.append(self._accepting_again_at)
        return max(0.0, min(moments) - time.monotonic()) if moments else None

    def _accept(self) -> None:
        for _ in range(LISTEN_BACKLOG):  # a batch, then the other sockets get their turn
            try:
                sock, address = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                        continue  # that client is gone; the next may be fine
                    raise
                self._pause_accepting(exc)
                return
            self._accept_pause = ACCEPT_PAUSE_SECONDS[0]
            sock.setblocking(False)
            connection = _Connection(sock, address,
                                     time.monotonic() + REQUEST_DEADLINE_SECONDS)
            if not self._make_room(sock.fileno()):
                _close_quietly(sock)  # every open connection is being answered: no room
                continue
            self._connections[sock.fileno()] = connection
            self._selector.register(sock, selectors.EVENT_READ, connection)

    def _make_room(self, fd: int) -> bool:
        """Whether a new connection on `fd` may stay: at a connection bound, or on a
        descriptor in the supervisor's reserve, only in place of the oldest one still
        sending its request (one connection is always allowed).  The limit is read each
        time: it can change while we run (prlimit)."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            bound, in_reserve = MAX_CONNECTIONS, False
        else:
            bound = min(MAX_CONNECTIONS, max(1, (soft - RESERVED_FDS) // 2))
            in_reserve = fd >= soft - RESERVED_FDS
        count = len(self._connections)
        if count < bound and not (in_reserve and count):
            return True
        return self._evict_oldest_reader()

    def _evict_oldest_reader(self) -> bool:
        """Close the oldest connection still sending its request; False if there is none."""
        oldest = next((c for c in self._connections.values() if c.reading), None)
        if oldest is None:
            return False
        self._close(oldest)
        return True

    def _pause_accepting(self, exc: OSError) -> None:
        self._evict_oldest_reader()
        self._selector.unregister(self._listener)
        self._accepting_again_at = time.monotonic() + self._accept_pause
        self._log_limited("accept", "HTTP endpoint cannot accept connections; pausing",
                          extra={"error": os.strerror(exc.errno or 0),
                                 "pause_seconds": self._accept_pause})
        self._accept_pause = min(self._accept_pause * 2, ACCEPT_PAUSE_SECONDS[1])

    def _read(self, connection: _Connection) -> None:
        try:
            data = connection.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the client went away
            self._close(connection)
            return
        connection.head += data
        end = _head_end(connection.head)
        if end < 0:
            if len(connection.head) > MAX_HEAD_BYTES:
                self._stop_reading(connection)
                self._start_sending(connection, TOO_LARGE)
            return
        self._stop_reading(connection)
        try:
            self._work.put_nowait((connection, bytes(connection.head[:end])))
        except queue.Full:
            self._start_sending(connection, BUSY)

    def _stop_reading(self, connection: _Connection) -> None:
        connection.reading = False
        self._selector.unregister(connection.sock)

    def _start_sending(self, connection: _Connection, response: bytes) -> None:
        if connection.sock.fileno() < 0:  # closed at its deadline while a worker answered
            return
        connection.out = memoryview(response)
        connection.deadline = time.monotonic() + RESPONSE_DEADLINE_SECONDS
        self._selector.register(connection.sock, selectors.EVENT_WRITE, connection)
        self._write(connection)

    def _write(self, connection: _Connection) -> None:
        assert connection.out is not None
        try:
            sent = connection.sock.send(connection.out)
        except BlockingIOError:
            return
        except OSError:
            self._close(connection)
            return
        connection.out = connection.out[sent:]
        if not connection.out:
            self._close(connection, finished=True)

    def _close(self, connection: _Connection, *, finished: bool = False) -> None:
        sock = connection.sock
        fd = sock.fileno()
        if fd < 0:
            return
        self._connections.pop(fd, None)
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass  # not registered while a worker has it
        if finished:
            try:  # end cleanly; unread request bytes would otherwise turn close into a reset
                sock.shutdown(socket.SHUT_WR)
                sock.recv(65536)
            except OSError:
                pass
        _close_quietly(sock)

    # -- the workers --------------------------------------------------------------------------

    def _work_loop(self) -> None:
        while (item := self._work.get()) is not None:
            connection, head = item
            try:
                response = self._respond(head, connection.address)
            except Exception:
                log.exception("HTTP request failed")
                response = FAILED
            self._done.put((connection, response))
            try:
                os.write(self._wake_write, b"x")
            except OSError:
                pass  # the pipe is full, so the IO thread is already due to wake; or closed

    # -- stopping -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Make serve() return (from any thread)."""
        self._stopping = True
        try:
            os.write(self._wake_write, b"x")
        except OSError:
            pass

    def close(self) -> None:
        """Close every socket and the listener; after serve() returned."""
        for connection in list(self._connections.values()):
            self._close(connection)
        for _ in self._workers:
            try:
                self._work.put(None, timeout=1.0)
            except queue.Full:
                break  # a stuck worker is a daemon thread: it cannot keep the process alive
        self._selector.close()
        _close_quietly(self._listener)
        for fd in (self._wake_read, self._wake_write):
            try:
                os.close(fd)
            except OSError:
                pass

    def _log_limited(self, kind: str, message: str, **kwargs: Any) -> None:
        """Log at most once a minute per kind: a flood must not flood the log too."""
        now = time.monotonic()
        if now - self._last_logged.get(kind, -_LOG_EVERY_SECONDS) >= _LOG_EVERY_SECONDS:
            self._last_logged[kind] = now
            log.warning(message, **kwargs)


def _head_end(head: bytearray) -> int:
    """Length of the request head including its blank line, or -1 if it is not complete."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        at = head.find(separator)
        if at >= 0:
            return at + len(separator)
    return -1


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except (BlockingIOError, OSError):
        pass


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
