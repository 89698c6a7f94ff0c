"""Exceptions raised for a user's mistake or bad input.

The CLI turns every :class:`LungscopeError` into a one-line message (no traceback).
"""

from __future__ import annotations

from pathlib import Path


class LungscopeError(Exception):
    """Base class of every error that is the input's fault, not lungscope's."""


class ImageReadError(LungscopeError):
    """An image file could not be read; the message names the file and what is wrong."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class DatasetError(LungscopeError):
    """A dataset folder or manifest is malformed (no images, unknown label, bad column...)."""


class ConfigError(LungscopeError):
    """An option or configuration value is invalid."""
