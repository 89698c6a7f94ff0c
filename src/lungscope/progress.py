"""Progress bars for long work: shown on a terminal, silent in logs and tests unless asked for."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_bar(iterable: Iterable[T] | None = None, *, show: bool | None = None, **options: object) -> tqdm:
    """A tqdm bar on stderr; ``show=None`` shows it only when stderr is a terminal."""
    return tqdm(iterable, disable=None if show is None else not show, dynamic_ncols=True, **options)
