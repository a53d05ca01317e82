"""Rounds over a local socket: host actors that wait for their next round inside one task.

Scope: the transport of ``run_round`` calls between the coordinator actor and the host
actors on its own machine; nothing about what a round does.  Every other host call, and
every host on another node of a Ray cluster, goes through ordinary Ray calls.

Why: an idle Ray actor's main thread wakes every 10 ms (a signal check hard-coded in Ray's
core worker, run whenever the thread is not inside a task) and each actor call costs both
sides Ray's submission and reply path.  With 64 host actors on two cores that was ~100
CPU-s of the large hour's ~600 (``host_other_cpu_s``).  Here each host runs one long task,
:func:`serve`, that reads round arguments from a Unix socket, runs the round and writes
the result back; blocked in ``recv`` inside a task, its main thread does not wake.  The
coordinator ends the link (closes the sockets: each task returns) before any other call
to a host, so Ray's calls and the link never overlap.

Messages are ``pickle`` frames: an 8-byte little-endian length, then the pickle.  A round
is ``(start, n, targets, feed)``; its answer ``("ok", result)`` or ``("err", exception)``.
"""

from __future__ import annotations

import os
import pickle
import selectors
import socket
import struct
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

_LEN = struct.Struct("<Q")

#: Set to 0 to send every round through Ray calls instead (for comparison).
ENV = "VMMSIM_ROUND_LINK"


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0"


def send(sock: socket.socket, obj: Any) -> None:
    """One frame: length, then the pickle."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_LEN.pack(len(data)) + data)


def recv(sock: socket.socket) -> Any:
    """The next frame's object; ``EOFError`` if the peer closed the link."""
    head = _read(sock, _LEN.size)
    return pickle.loads(_read(sock, _LEN.unpack(head)[0]))


def _read(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise EOFError("link closed")
        got += k
    return buf


def serve(run_round: Callable[..., dict], path: str, name: str) -> int:
    """Host side: connect to ``path``, then answer rounds until the coordinator closes the
    link; return how many rounds were run.  An exception in a round goes back as the
    answer (the link stays up: the coordinator decides what a failure means)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    rounds = 0
    try:
        send(sock, name)
        while True:
            try:
                args = recv(sock)
            except (EOFError, OSError):  # the coordinator ended the link
                return rounds
            try:
                answer: tuple[str, Any] = ("ok", run_round(*args))
            except Exception as e:  # noqa: BLE001 - reported to the coordinator
                answer = ("err", _picklable(e))
            try:
                send(sock, answer)
            except OSError:  # the coordinator ended the link first (a failure elsewhere)
                return rounds
            rounds += 1
    finally:
        sock.close()


def _picklable(e: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001 - any exception that will not cross the socket
        return RuntimeError(f"{type(e).__name__}: {e}")


class LinkError(Exception):
    """A host did not answer on the link: ``name`` and why (closed, or no answer in time)."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"{name}: {why}")
        self.name, self.why = name, why


class RoundLink:
    """Coordinator side: one listening socket at :attr:`path`, one connection per host.

    The caller starts :func:`serve` in each host (e.g. as a Ray task) with :attr:`path`,
    then calls :meth:`accept`, which polls ``failed()`` while it waits, so a host that
    cannot connect (it died) surfaces as whatever ``failed`` raises."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="vmmsim-link-")
        self.path = os.path.join(self._dir, "rounds")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(1024)
        self.socks: dict[str, socket.socket] = {}

    def accept(self, names: Sequence[str], timeout_s: float, failed: Callable[[], None]) -> None:
        """Wait until every host of ``names`` has connected and said its name."""
        deadline = time.monotonic() + timeout_s
        self._listener.settimeout(0.05)
        while len(self.socks) < len(names):
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                failed()
                if time.monotonic() > deadline:
                    late = next(n for n in names if n not in self.socks)
                    raise LinkError(late, f"did not connect within {timeout_s:g} s") from None
                continue
            conn.settimeout(None)
            self.socks[recv(conn)] = conn

    def rounds(
        self, names: Sequence[str], args: Sequence[tuple], window: int, timeout_s: float
    ) -> list[tuple[str, Any]]:
        """Send each host its round (at most ``window`` running at once, in host order)
        and return the answers in the order of ``names``."""
        answers: dict[str, tuple[str, Any]] = {}
        todo = list(zip(names, args, strict=True))
        sel = selectors.DefaultSelector()
        deadline = time.monotonic() + timeout_s
        running = 0
        try:
            while todo or running:
                while todo and running < window:
                    name, a = todo.pop(0)
                    self._send(name, a)
                    sel.register(self.socks[name], selectors.EVENT_READ, name)
                    running += 1
                left = deadline - time.monotonic()
                ready = sel.select(max(0.0, left))
                if not ready:
                    late = next(n for n in names if n not in answers)
                    raise LinkError(late, f"no answer to run_round within {timeout_s:g} s")
                for key, _ in ready:
                    name = key.data
                    sel.unregister(key.fileobj)
                    running -= 1
                    try:
                        answers[name] = recv(self.socks[name])
                    except (EOFError, OSError):
                        raise LinkError(name, "the link closed (actor died)") from None
        finally:
            sel.close()
        return [answers[n] for n in names]

    def _send(self, name: str, a: tuple) -> None:
        try:
            send(self.socks[name], a)
        except OSError:
            raise LinkError(name, "the link closed (actor died)") from None

    def close(self) -> None:
        """End the link: every host's :func:`serve` returns."""
        for s in self.socks.values():
            try:
                s.close()
            except OSError:
                pass
        self.socks.clear()
        self._listener.close()
        try:
            os.unlink(self.path)
            os.rmdir(self._dir)
        except OSError:
            pass
