"""Run directories: written aside, moved into place only when the run has finished.

Scope: ``--out DIR`` handling.  A run writes into a hidden sibling ``.DIR.partial-<pid>``;
on success the directory is renamed into place (an existing finished run there is only
replaced with ``--force``), on failure the partial directory is removed.  So a failed or
interrupted run never corrupts what is already in ``DIR``.

``--out`` is checked before anything runs (:func:`check_out_dir` and creating the partial
directory): not the current directory or one of its ancestors (``.``, ``..``, ``/``), no
file where a directory must be, a writable parent.  Partial directories left by runs that
were killed outright (SIGKILL: no clean-up possible) are removed by the next run into the
same parent (:func:`remove_stale_partials`: only ``.NAME.partial-PID`` directories whose
PID is not a live process).  A write that fails (disk full, I/O error) becomes
:class:`OutputWriteError`, naming the file (:func:`writing`, from
:mod:`cluster.write_errors`).

Files: ``metrics.parquet`` (zstd; rounds gathered into row groups of at least
:data:`METRICS_ROW_GROUP_ROWS` rows, the last one smaller), ``summary.json``
(deterministic: no wall-clock values), ``config.json`` (the resolved config),
``timing.json`` (wall time, ticks/s: differs between runs by nature); the runner also
writes ``migrations.parquet`` (:mod:`cluster.migration_report`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from vmmsim.cluster.metrics import SCHEMA
from vmmsim.cluster.write_errors import (
    OutputWriteError,  # noqa: F401 - re-exported
    os_error_reason,
    writing,
)

#: Rows of ``metrics.parquet`` gathered before a row group is written (one row per VM per
#: tick): ~13 MB of rows held at most, a row group per ~65 rounds of a 1,000-VM run.
METRICS_ROW_GROUP_ROWS = 1 << 16


class RunDirError(ValueError):
    """``--out`` cannot be used (holds a finished run, or is not a directory)."""


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse an ``--out`` that cannot become a run directory, before anything runs."""
    here = Path.cwd().resolve()
    full = Path(os.path.abspath(out)).resolve()
    if full == here or full in here.parents:
        what = "the current directory" if full == here else "a parent of the current directory"
        raise RunDirError(f"--out {out}: is {what}; name a new directory for the run")
    for parent in full.parents:  # the nearest existing ancestor must be a directory
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise RunDirError(f"--out {out}: {parent} is not a directory")
            break
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        what = "a finished run" if (out / "summary.json").exists() else "files"
        raise RunDirError(f"--out {out}: already holds {what}; pass --force to replace it")


_PARTIAL = re.compile(r"^\..+\.partial-(\d+)$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(parent: Path) -> list[Path]:
    """Remove ``parent/.NAME.partial-PID`` directories whose PID is not a live process
    (left by a run killed with SIGKILL); return them.  Nothing else is touched."""
    removed = []
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _PARTIAL.match(p.name)
        if not m or p.is_symlink() or not p.is_dir():
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=_plain) + "\n"
    with writing(path):
        path.write_text(text)


def _plain(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGTERM and SIGINT back meanwhile; one that arrived is re-raised after.

    Python runs signal handlers in the main thread whichever thread the kernel delivered
    the signal to, so a thread's signal mask cannot hold them back (any library thread
    would take the signal): the handlers are swapped for a recorder instead.  Outside the
    main thread (where handlers cannot be set) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    sigs = (signal.SIGTERM, signal.SIGINT)
    prev = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in sigs}
    try:
        yield
    finally:
        for s, h in prev.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        for s in dict.fromkeys(pending):
            signal.raise_signal(s)


class AsideDir:
    """``out`` written aside as ``.out.partial-<pid>``; :meth:`commit` moves it into place
    (replacing what was there only if ``force`` allowed it), :meth:`abort` removes it."""

    def __init__(self, out: Path, force: bool) -> None:
        self.out = Path(out)
        check_out_dir(self.out, force)
        parent = self.out.parent
        # The topmost directory this run creates (removed again if the run fails).
        self._made: Path | None = None
        for p in [parent, *parent.parents]:
            if p.exists():
                break
            self._made = p
        self.tmp = parent / f".{self.out.name}.partial-{os.getpid()}"
        try:
            parent.mkdir(parents=True, exist_ok=True)
            remove_stale_partials(parent)
            if self.tmp.exists():
                shutil.rmtree(self.tmp)
            self.tmp.mkdir()
        except OSError as e:
            self._remove_made()
            where = e.filename or self.tmp
            why = os_error_reason(e)
            raise RunDirError(f"--out {self.out}: cannot create {where}: {why}") from None

    def commit(self) -> Path:
        """Move the finished directory into place.  SIGTERM/SIGINT are held back meanwhile
        (delivered right after), so an interrupted commit never leaves ``out`` missing or
        the previous run stranded under ``.out.old-<pid>``."""
        old = None
        with _signals_held(), writing(self.out):
            if self.out.exists():
                old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
                self.out.rename(old)
            try:
                self.tmp.rename(self.out)
            except BaseException:
                if old is not None and not self.out.exists():
                    old.rename(self.out)
                raise
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        return self.out

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._remove_made()

    def _remove_made(self) -> None:
        """Remove the (empty) parent directories this run created for ``--out``."""
        if self._made is None:
            return
        p = self.tmp.parent
        while True:
            try:
                p.rmdir()
            except OSError:
                return
            if p == self._made:
                return
            p = p.parent


class RunDir(AsideDir):
    """A run directory being written; :meth:`commit` or :meth:`abort` exactly once."""

    def __init__(self, out: Path, force: bool) -> None:
        super().__init__(out, force)
        self._metrics: pq.ParquetWriter | None = None
        self._pending: list[pa.Table] = []  # rounds not yet in a row group
        self._pending_rows = 0
        self._closed = False  # metrics.parquet complete

    @property
    def path(self) -> Path:
        return self.tmp

    def write_metrics(self, table: pa.Table) -> None:
        """Add one round's metrics.  Rounds are gathered into row groups of at least
        :data:`METRICS_ROW_GROUP_ROWS` rows: a Parquet writer keeps every row group's
        metadata (~27 KB for these 33 columns) until it closes, so a row group per round
        grew the driver by ~3 MB per simulated hour of a 1,000-VM run.  Where a row group
        ends depends only on the rounds' sizes, so the file's bytes stay deterministic (a
        recovered run delivers the same rounds)."""
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._pending_rows >= METRICS_ROW_GROUP_ROWS:
            self.flush_metrics()

    def flush_metrics(self) -> None:
        """Write the rounds gathered so far as a row group."""
        if not self._pending:
            return
        table = pa.concat_tables(self._pending)
        self._pending, self._pending_rows = [], 0
        path = self.tmp / "metrics.parquet"
        with writing(path):
            if self._metrics is None:
                self._metrics = pq.ParquetWriter(path, table.schema, compression="zstd")
            self._metrics.write_table(table, row_group_size=max(1, table.num_rows))

    def close_metrics(self) -> None:
        """Write the last rounds and close ``metrics.parquet`` (at the end of the run,
        before the other files; an empty table if no round came)."""
        self.flush_metrics()
        with writing(self.tmp / "metrics.parquet"):
            if self._metrics is not None:
                m, self._metrics = self._metrics, None
                m.close()
            elif not self._closed:
                pq.write_table(SCHEMA.empty_table(), self.tmp / "metrics.parquet")
        self._closed = True

    def write_json(self, name: str, obj: Any) -> None:
        write_json(self.tmp / name, obj)

    def commit(self) -> Path:
        self.close_metrics()
        return super().commit()

    def abort(self) -> None:
        if self._metrics is not None:
            try:
                self._metrics.close()
            except Exception:  # noqa: BLE001 - best effort while failing anyway
                pass
        super().abort()
