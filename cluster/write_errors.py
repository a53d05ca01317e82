"""A failed write, named: :class:`OutputWriteError` and :func:`writing`.

Scope: turning an ``OSError`` raised while a run's file is written (disk full, quota, I/O
error) into one error that names the file.  Standard library only, so a host actor can
write its own checkpoint file (``cluster.host_pool``) without importing the run
directory's Parquet machinery (:mod:`cluster.outputs` re-exports both names).
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class OutputWriteError(RuntimeError):
    """Writing a run's file failed (disk full, I/O error); names the file.  The run is
    abandoned and its partial directory removed."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"cannot write {path}: {reason}; the run was abandoned")
        self.path, self.reason = str(path), reason

    def __reduce__(self):  # survives Ray's exception transport intact
        return (OutputWriteError, (self.path, self.reason))


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn an ``OSError`` while writing ``path`` into :class:`OutputWriteError`."""
    try:
        yield
    except OutputWriteError:
        raise
    except OSError as e:
        raise OutputWriteError(path, os_error_reason(e)) from e


def os_error_reason(e: OSError) -> str:
    """What went wrong, in words (the errno's; pyarrow puts it in its message)."""
    code = e.errno
    if code is None:  # pyarrow: "[errno 28] No space left on device" in the text
        m = re.search(r"\[errno (\d+)\]", str(e), re.IGNORECASE)
        code = int(m.group(1)) if m else None
    if code == errno.ENOSPC:
        return "no space left on device (disk full)"
    if code == errno.EDQUOT:
        return "disk quota exceeded"
    if code is not None:
        return os.strerror(code)
    return str(e).splitlines()[0] if str(e) else type(e).__name__
