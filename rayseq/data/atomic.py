"""Atomic file writes: readers see the old file or the complete new one, never a partial one.

The data go to ``.NAME.<random>.tmp`` in the target's folder, are fsynced and renamed over the
target; on any error (or a kill) the temp file is removed or left aside and the old file stays.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from rayseq.data.errors import DataError


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[IO[bytes]], object], error: type[Exception] = DataError
) -> Path:
    """Create or replace ``path`` with what ``write(f)`` writes to a binary file object.

    ``error``: the exception raised (with the path and what to do) when the folder is missing or
    the OS refuses the write.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise error(f"cannot write {path}: folder {path.parent} does not exist; create it first.")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        # 0o666 & ~umask, like a plain open() (mkstemp would make it 0600).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise error(f"{path}: could not write ({e.strerror or e}); the old file is unchanged.") from e
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, error: type[Exception] = DataError) -> Path:
    """Create or replace ``path`` with ``data`` atomically."""
    return atomic_write(path, lambda f: f.write(data), error)


def atomic_write_lines(path: str | os.PathLike[str], lines: Sequence[str]) -> Path:
    """Write ``lines`` (UTF-8, ``\\n`` after each) to ``path`` atomically."""
    return atomic_write_bytes(path, "".join(f"{ln}\n" for ln in lines).encode("utf-8"))


def _fsync_dir(folder: Path) -> None:
    """Persist a rename (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
