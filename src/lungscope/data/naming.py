"""Output file names derived from input files: the one rule explain, segment and ``predict --html`` share."""

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
