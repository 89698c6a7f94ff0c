"""Exceptions raised for a user's mistake or bad input.

The CLI turns every :class:`LungscopeError` into a one-line message (no traceback).
"""

from __future__ import annotations

from pathlib import Path


def one_line(text: str) -> str:
    """A message of several lines as one (pydicom lists each decoder's failure on a line of its own): the lines
    stripped and joined with "; ", or with a space after a line that ends with a colon."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    joined = lines[0] if lines else ""
    for line in lines[1:]:
        joined += (" " if joined.endswith(":") else "; ") + line
    return joined


class LungscopeError(Exception):
    """Base class of every error that is the input's fault, not lungscope's."""


class ImageReadError(LungscopeError):
    """An image file could not be read; the message names the file and what is wrong."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = one_line(reason)
        super().__init__(f"{self.path}: {self.reason}")


class DatasetError(LungscopeError):
    """A dataset folder or manifest is malformed (no images, unknown label, bad column...)."""


class ConfigError(LungscopeError):
    """An option or configuration value is invalid."""
