"""Shared by the bench tests: a Markdown table line's cells."""

from __future__ import annotations


def cells(line: str) -> list[str]:
    """A Markdown table line's cells (the line starts and ends with a pipe; no cell holds one)."""
    assert line.startswith("|") and line.endswith("|"), line
    return [c.strip() for c in line[1:-1].split("|")]
