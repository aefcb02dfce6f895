"""The one exception type the data layer raises for bad input.

Every message says *where* (file and 1-based line, or the offending key/value)
and *what to do*, so a user can fix the input without reading the code.
"""

from __future__ import annotations

import os


class DataError(ValueError):
    """Bad or missing data: a corpus, vocabulary file, task name or argument."""


def where(path: str | os.PathLike[str], line: int | None = None) -> str:
    """``path`` or ``path:line`` (1-based), the prefix of a located error message."""
    return f"{os.fspath(path)}:{line}" if line is not None else os.fspath(path)
