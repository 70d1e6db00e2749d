"""How the CLI prints credits, nodes, models and ledger entries."""

from __future__ import annotations

from datetime import datetime


def credits(millicredits: int) -> str:
    return f"{millicredits / 1000:,.3f}"


def short_key(public_key: str) -> str:
    return f"{public_key[:12]}…" if len(public_key) > 12 else public_key


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def timestamp(when: datetime | None) -> str:
    """An SDK result's (UTC) datetime, to the second; "-" when there is none."""
    return when.strftime("%Y-%m-%d %H:%M:%S") if when is not None else "-"
