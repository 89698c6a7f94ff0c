"""The one table layout of the terminal views (lungscope.text)."""

from __future__ import annotations

from lungscope.text import format_table


def test_columns_are_aligned_two_spaces_apart_without_trailing_spaces() -> None:
    rows = [["name", "n", "note"], ["a", "1,234", ""], ["longer", "5", "x"]]
    assert format_table(rows).splitlines() == ["name    n      note", "a       1,234", "longer  5      x"]
    assert format_table(rows, right={1}, indent="  ").splitlines() == [
        "  name        n  note", "  a       1,234", "  longer      5  x"]
