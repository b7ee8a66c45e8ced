"""What every benchmark prints: the command line that produced the figures and a markdown table."""

from __future__ import annotations

import shlex
import sys


def command_line() -> str:
    """The running script's command, quoted as it would be typed."""
    return f"`python {shlex.join(sys.argv)}`"


def markdown_table(rows: list[dict[str, str]]) -> str:
    """Rows of equal keys as a markdown table, columns in the first row's key order."""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(row[k] for k in keys) + " |" for row in rows]
    return "\n".join(lines)
