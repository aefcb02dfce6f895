"""Errors a user can act on; the CLI prints them as one line (exit status 2)."""
from __future__ import annotations

from rayseq.data.errors import DataError


class TrainingError(RuntimeError):
    """Training cannot go on (NaN/inf loss, …); the message names the step and the last good checkpoint."""


USER_ERRORS = (DataError, ValueError, TrainingError)
