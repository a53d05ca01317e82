"""Worker processes for the points of an in-process sweep.

Scope: :func:`run_all` calls ``fn(item)`` for every item, ``n`` at a time: in the calling
thread and in ``n - 1`` fresh interpreter processes (``python -c`` calling
:func:`_worker`; not ``-m``, which would run this module a second time beside the copy
the package imports, with a RuntimeWarning), each taking the next item when it is done;
calls and results travel pickled over the workers' stdin/stdout.
Unlike :mod:`multiprocessing`'s spawn, the caller's ``__main__`` is never re-imported,
so a script calling ``vmmsim.sweep`` needs no ``if __name__ == "__main__"`` guard; unlike
fork, nothing of the caller's threads or state is inherited.  ``fn`` must be importable
by name (a module-level function); the workers get the caller's ``sys.path``.

The first failure -- ``fn`` raising, or a worker dying -- ends every worker and raises
:class:`WorkerFailed` naming the item.  Workers ignore SIGINT (the caller ends them) and
write anything printed to stdout to stderr instead.
"""

from __future__ import annotations

import itertools
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

_HEAD = struct.Struct("<Q")


class WorkerFailed(RuntimeError):
    """Item ``index`` failed in a worker: ``reason`` is one line."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index, self.reason = index, reason


def _send(f: BinaryIO, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(_HEAD.pack(len(data)) + data)
    f.flush()


def _recv(f: BinaryIO) -> Any:
    head = f.read(_HEAD.size)
    if len(head) < _HEAD.size:
        raise EOFError
    (n,) = _HEAD.unpack(head)
    data = f.read(n)
    if len(data) < n:
        raise EOFError
    return pickle.loads(data)


def one_line(e: BaseException) -> str:
    """An exception as one line: its message, else its type's name."""
    return " ".join(str(e).split()) or type(e).__name__


def run_all(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    n: int,
    on_done: Callable[[int, Any], None],
) -> None:
    """``fn(item)`` for every item, ``n`` at a time: in this thread and ``n - 1`` worker
    processes (this process needs no start-up).  ``on_done(i, result)`` runs as each item
    finishes (in the order they finish), one call at a time, in this thread or the thread
    that waits for that worker.  A worker's failure is raised here when this thread's own
    item is done."""
    results: queue.Queue[tuple[int, bool, Any]] = queue.Queue()
    counter = itertools.count()
    lock = threading.Lock()
    stop = threading.Event()
    procs: list[subprocess.Popen] = []
    reporting = threading.Lock()

    def done(i: int, result: Any) -> None:
        with reporting:
            on_done(i, result)

    def slot() -> None:
        i = -1
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", _WORKER_MAIN], stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            with lock:
                procs.append(proc)
            assert proc.stdin is not None and proc.stdout is not None
            _send(proc.stdin, list(sys.path))
            while not stop.is_set():
                with lock:
                    i = next(counter)
                if i >= len(items):
                    return
                _send(proc.stdin, (fn, items[i]))
                try:
                    ok, payload = _recv(proc.stdout)
                except EOFError:
                    if not stop.is_set():
                        code = proc.wait()
                        results.put((i, False, f"its worker process died (exit code {code})"))
                    return
                if ok:
                    done(i, payload)
                results.put((i, ok, None if ok else payload))
                if not ok:
                    return
        except Exception as e:  # noqa: BLE001 - reported as the item's failure
            if not stop.is_set() and 0 <= i < len(items):  # (no item: the others do them)
                results.put((i, False, f"worker process: {one_line(e)}"))
        finally:
            if "proc" in locals() and proc.stdin is not None:
                try:
                    proc.stdin.close()
                except OSError:
                    pass

    threads = [threading.Thread(target=slot, daemon=True) for _ in range(n - 1)]
    for t in threads:
        t.start()
    remaining = len(items)

    def take(block: bool) -> bool:
        """Handle one finished item of a worker; False if there was none."""
        nonlocal remaining
        try:
            i, ok, payload = results.get(timeout=0.2) if block else results.get_nowait()
        except queue.Empty:
            return False
        if not ok:
            raise WorkerFailed(i, payload)
        remaining -= 1  # (reported by its thread)
        return True

    try:
        while True:
            with lock:
                i = next(counter)
            if i >= len(items):
                break
            try:
                result = fn(items[i])
            except Exception as e:
                raise WorkerFailed(i, one_line(e)) from e
            done(i, result)
            remaining -= 1
            while take(block=False):
                pass
        while remaining:
            take(block=True)
    finally:
        stop.set()
        if remaining:  # failed or interrupted: end the workers now
            with lock:
                _end(list(procs), kill=True)
        for t in threads:
            t.join(timeout=30)
        with lock:
            _end(list(procs), kill=bool(remaining))


def _end(procs: list[subprocess.Popen], kill: bool) -> None:
    """Wait for the workers (their stdin is closed when done); ``kill``: end them now."""
    for proc in procs:
        if kill and proc.poll() is None:
            proc.kill()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_WORKER_MAIN = f"from {__name__} import _worker; _worker()"


def _worker() -> None:
    """A worker: read ``sys.path``, then ``(fn, item)`` calls until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    inp = sys.stdin.buffer
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # prints from the simulation go to stderr, not into the results
    sys.stdout = sys.stderr
    sys.path[:] = _recv(inp)
    while True:
        try:
            fn, item = _recv(inp)
        except EOFError:  # done: skip the interpreter's slow teardown (results are sent)
            sys.stderr.flush()
            os._exit(0)
        try:
            reply = (True, fn(item))
        except Exception as e:  # noqa: BLE001 - sent back as one line
            reply = (False, one_line(e))
        _send(out, reply)
