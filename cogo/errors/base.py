"""The root of the tree: every Cogo error is a ``CogoError``."""

from __future__ import annotations

from typing import Any


class CogoError(Exception):
    """Root of every Cogo error; ``code`` is stable, ``message`` is for humans."""

    code = "cogo.error"
    retryable = False

    def __init__(self, message: str, *, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def __str__(self) -> str:
        return self.message
