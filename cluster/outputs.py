"""Run directories: written aside, moved into place only when the run has finished.

Scope: ``--out DIR`` handling.  A run writes into a hidden sibling ``.DIR.partial-<pid>``;
on success the directory is renamed into place (an existing finished run there is only
replaced with ``--force``), on failure the partial directory is removed.  So a failed or
interrupted run never corrupts what is already in ``DIR``.

Files: ``metrics.parquet`` (zstd, one row group per coordinator round), ``summary.json``
(deterministic: no wall-clock values), ``config.json`` (the resolved config),
``timing.json`` (wall time, ticks/s: differs between runs by nature); the runner also
writes ``migrations.parquet`` (:mod:`cluster.migration_report`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cluster.metrics import SCHEMA


class RunDirError(ValueError):
    """``--out`` cannot be used (holds a finished run, or is not a directory)."""


def check_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        what = "a finished run" if (out / "summary.json").exists() else "files"
        raise RunDirError(f"--out {out}: already holds {what}; pass --force to replace it")


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_plain) + "\n")


def _plain(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")


class AsideDir:
    """``out`` written aside as ``.out.partial-<pid>``; :meth:`commit` moves it into place
    (replacing what was there only if ``force`` allowed it), :meth:`abort` removes it."""

    def __init__(self, out: Path, force: bool) -> None:
        self.out = Path(out)
        check_out_dir(self.out, force)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.out.parent / f".{self.out.name}.partial-{os.getpid()}"
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()

    def commit(self) -> Path:
        old = None
        if self.out.exists():
            old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
            self.out.rename(old)
        self.tmp.rename(self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.out

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class RunDir(AsideDir):
    """A run directory being written; :meth:`commit` or :meth:`abort` exactly once."""

    def __init__(self, out: Path, force: bool) -> None:
        super().__init__(out, force)
        self._metrics: pq.ParquetWriter | None = None

    @property
    def path(self) -> Path:
        return self.tmp

    def write_metrics(self, table: pa.Table) -> None:
        if self._metrics is None:
            self._metrics = pq.ParquetWriter(
                self.tmp / "metrics.parquet", SCHEMA, compression="zstd"
            )
        self._metrics.write_table(table, row_group_size=max(1, table.num_rows))

    def write_json(self, name: str, obj: Any) -> None:
        write_json(self.tmp / name, obj)

    def commit(self) -> Path:
        if self._metrics is not None:
            self._metrics.close()
        else:
            pq.write_table(SCHEMA.empty_table(), self.tmp / "metrics.parquet")
        return super().commit()

    def abort(self) -> None:
        if self._metrics is not None:
            try:
                self._metrics.close()
            except Exception:  # noqa: BLE001 - best effort while failing anyway
                pass
        super().abort()
