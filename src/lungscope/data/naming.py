"""Where outputs go: file names derived from input files (the one rule explain, segment and ``predict --html``
share), and whether an output file or folder can be written at all, asked before any work."""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

MAX_STEM_BYTES = 100  # leaves room for "-<hash>_<method>.png" within the 255 bytes most file systems allow
_HASHED = re.compile(r".*-[0-9a-f]{8}")  # the shape of a hashed stem, which a kept stem must not have


def _hashed(path: str | os.PathLike[str], stem: str) -> str:
    digest = hashlib.blake2b(os.path.abspath(path).encode(errors="surrogateescape"), digest_size=4).hexdigest()
    short = stem.encode(errors="surrogateescape")[:MAX_STEM_BYTES].decode(errors="ignore")
    return f"{short}-{digest}"


def unique_stems(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """A stem per file for its outputs, unique among ``paths`` and short enough for any file system.

    A file keeps its own stem when no other file of ``paths`` has it (ignoring case, for case-insensitive file
    systems), it fits in :data:`MAX_STEM_BYTES` and it does not look hashed; otherwise it gets its stem cut to that
    length plus ``-`` and 8 hex digits of a hash of its absolute path. The same paths always give the same stems.
    """
    stems = [Path(path).stem for path in paths]
    counts = Counter(stem.casefold() for stem in stems)
    return [
        stem
        if counts[stem.casefold()] == 1 and len(stem.encode(errors="surrogateescape")) <= MAX_STEM_BYTES
        and not _HASHED.fullmatch(stem)
        else _hashed(path, stem)
        for path, stem in zip(paths, stems)
    ]


def output_problem(path: str | os.PathLike[str], *, folder: bool = False) -> str | None:
    """Why ``path`` cannot be written as an output file (or, with ``folder``, an output folder), or None. Asked before
    the work, so that no run ends unable to write what it made; nothing is created."""
    path = Path(path).absolute()
    if path.is_dir() != folder and os.path.lexists(path):
        return "is a folder; give a file name" if path.is_dir() else "is a file, not a folder"
    if path.exists() and not os.access(path, os.W_OK):
        return "is not writable"
    existing = path if folder and path.is_dir() else path.parent
    while not os.path.lexists(existing):  # the folders still to make are made under the nearest one that exists
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot be made: {existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot be written: {existing} is not writable"
    return None
