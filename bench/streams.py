"""Streams measured the same way for every engine: one row per mode, one table for all."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (nearest rank) of `values`; NaN for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Stream:
    """One streamed request: time to its first token, to its end, and its token count."""

    ttft_s: float
    total_s: float
    tokens: int


def row(engine: str, mode: str, streams: int, runs: list[Stream], wall_s: float) -> dict[str, Any]:
    """A mode's figures: tokens/s of wall time (all streams), per-stream decode rate, TTFT."""
    tokens = sum(r.tokens for r in runs)
    ttfts = sorted(r.ttft_s * 1000 for r in runs)
    decode = [(r.tokens - 1) / (r.total_s - r.ttft_s) for r in runs if r.total_s > r.ttft_s]
    return {
        "engine": engine,
        "mode": mode,
        "streams": streams,
        "requests": len(runs),
        "tokens": tokens,
        "wall_s": round(wall_s, 3),
        "tokens_per_s": round(tokens / wall_s, 1) if wall_s > 0 else 0.0,
        "stream_tokens_per_s_p50": round(statistics.median(decode), 1) if decode else 0.0,
        "ttft_p50_ms": round(statistics.median(ttfts), 1),
        "ttft_max_ms": round(ttfts[-1], 1),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown; a row's ratio column shows only where the row has one."""
    lines = [
        "| engine | mode | requests | tokens | tokens/s (all streams) | vs one at a time "
        "| tokens/s per stream p50 | TTFT p50 ms | TTFT max ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = f"{r['vs_one_at_a_time']:.2f}×" if "vs_one_at_a_time" in r else "—"
        lines.append(
            f"| {r['engine']} | {r['mode']} | {r['requests']} | {r['tokens']} "
            f"| {r['tokens_per_s']:.1f} | {ratio} | {r['stream_tokens_per_s_p50']:.1f} "
            f"| {r['ttft_p50_ms']:.0f} | {r['ttft_max_ms']:.0f} |"
        )
    return "\n".join(lines)
