"""The protocol's error codes have one list, docs/protocol.md's *Errors* table, and edensplit.errors follows it:
every code the servers can answer with is documented with the HTTP status it is answered with, and the table
documents no code the servers do not have."""

from __future__ import annotations

import re
from pathlib import Path

from edensplit.errors import ErrorCode

PROTOCOL = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"


def documented_codes() -> list[tuple[str, int]]:
    """(code, HTTP status) of each row of docs/protocol.md's *Errors* table, in order."""
    section = PROTOCOL.read_text().split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if re.fullmatch(r"\| code \| HTTP \| when \|", line.strip()))
    assert set(lines[start + 1].replace("|", "").strip()) <= {"-", " "}, lines[start + 1]  # the |---| line
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"`([A-Z][A-Z0-9_]*)`", cells[0])
        assert match and cells[1].isdigit(), f"a row that is not `CODE` | status | ...: {line!r}"
        rows.append((match.group(1), int(cells[1])))
    return rows


def test_every_error_code_is_documented_with_its_status_and_nothing_else_is():
    rows = documented_codes()
    codes = [code for code, _ in rows]
    assert len(codes) == len(set(codes)), f"documented twice: {sorted({c for c in codes if codes.count(c) > 1})}"
    documented = dict(rows)
    undocumented = sorted(str(code) for code in set(ErrorCode) - set(documented))
    assert not undocumented, f"codes missing from docs/protocol.md's Errors table: {undocumented}"
    unknown = sorted(set(documented) - {str(code) for code in ErrorCode})
    assert not unknown, f"docs/protocol.md documents codes edensplit.errors does not have: {unknown}"
    wrong = {code: (documented[code], ErrorCode(code).status) for code in documented
             if documented[code] != ErrorCode(code).status}
    assert not wrong, f"code: (documented status, the status the servers answer with): {wrong}"

