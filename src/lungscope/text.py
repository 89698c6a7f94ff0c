"""Plain-text layout shared by every terminal view: aligned tables, one-line text."""

from __future__ import annotations

import unicodedata
from collections.abc import Collection, Sequence


def printable(text: str) -> str:
    """``text`` kept to one terminal line: control characters (a newline in a file name) written as escapes."""
    return "".join(c.encode("unicode_escape").decode() if unicodedata.category(c) == "Cc" else c for c in text)


def format_table(rows: Sequence[Sequence[str]], *, right: Collection[int] = (), indent: str = "") -> str:
    """``rows`` of cells as columns two spaces apart, each as wide as its widest cell: left-aligned, or right-aligned
    for the column indices in ``right``; each line starts with ``indent`` and ends without trailing spaces."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        (indent + "  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                            for i, (cell, w) in enumerate(zip(row, widths)))).rstrip()
        for row in rows
    )
