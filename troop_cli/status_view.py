"""`troop status`'s frame: what the network and your account look like, as plain text.

    text = render(snapshot, now=datetime.now(UTC), width=120)

Pure: a `Snapshot` (SDK results, no protobuf) in, lines out; no terminal, no network.
The command (troop_cli/status.py) gathers snapshots and draws them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from troop_cli import format as fmt
from troop_client.chat import Usage
from troop_client.results import Balance, Job, ModelOffer, Node, Verification


@dataclass(frozen=True)
class Snapshot:
    """One look at the network (its live nodes, its models) and at your account."""

    coordinator: str
    taken_at: datetime
    nodes: tuple[Node, ...] = ()
    models: tuple[ModelOffer, ...] = ()
    balance: Balance | None = None
    jobs: tuple[Job, ...] = ()  # newest first
    # What the last refresh could not read (the frame keeps the data it had).
    error: str = ""


def ago(when: datetime | None, now: datetime) -> str:
    """'3 s ago', '5 min ago', '2 h ago'; '-' for no time."""
    if when is None:
        return "-"
    seconds = max(0, int((now - when).total_seconds()))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def checks(record: Verification | None, now: datetime) -> str:
    """A node's verification record in a cell: '3 ok / 1 failed', held, barred."""
    if record is None:
        return "-"
    text = f"{record.checks_passed} ok / {record.checks_failed} failed"
    if record.barred:
        return f"{text}, BARRED"
    if record.held_until is not None and record.held_until > now:
        return f"{text}, held"
    return text


def _nodes(snapshot: Snapshot, now: datetime) -> list[str]:
    title = f"NODES ({len(snapshot.nodes)} live)"
    if not snapshot.nodes:
        return [title, "no live nodes"]
    verified = any(n.verification is not None for n in snapshot.nodes)
    headers = ["NODE", "MODELS", "JOBS", "QUEUE", "MULT", "DEVICE", "LAST SEEN"]
    if verified:
        headers.insert(5, "CHECKS")
    rows = []
    for n in snapshot.nodes:
        row = [
            fmt.short_key(n.node_id),
            ",".join(n.models),
            f"{n.active_jobs}/{n.max_concurrent_jobs}",
            str(n.queue_depth),
            f"{n.multiplier:.2f}",
            n.device or "-",
            ago(n.last_seen, now),
        ]
        if verified:
            row.insert(5, checks(n.verification, now))
        rows.append(row)
    return [title, fmt.table(headers, rows)]


def _models(snapshot: Snapshot) -> list[str]:
    if not snapshot.models:
        return ["MODELS", "no models served right now"]
    rows = [
        [
            m.id,
            str(m.node_count),
            fmt.credits(m.prompt_millicredits_per_1k),
            fmt.credits(m.completion_millicredits_per_1k),
        ]
        for m in snapshot.models
    ]
    headers = ["MODEL", "NODES", "PROMPT /1K TOKENS", "COMPLETION /1K TOKENS"]
    return ["MODELS", fmt.table(headers, rows)]


def _account(snapshot: Snapshot) -> list[str]:
    b = snapshot.balance
    if b is None:
        return ["ACCOUNT", "-"]
    return [
        "ACCOUNT",
        f"balance {fmt.credits(b.balance_millicredits)} credits"
        f"  reserved {fmt.credits(b.reserved_millicredits)}"
        f"  key {fmt.short_key(b.public_key)}",
    ]


def _tokens(usage: Usage | None) -> str:
    """A charged job's tokens: prompt + completion."""
    return "-" if usage is None else f"{usage.prompt_tokens}+{usage.completion_tokens}"


def _jobs(snapshot: Snapshot) -> list[str]:
    title = f"YOUR RECENT JOBS ({len(snapshot.jobs)})"
    if not snapshot.jobs:
        return [title, "no jobs yet"]
    rows = [
        [
            fmt.timestamp(j.created_at),
            fmt.short_key(j.job_id),
            j.model,
            j.state + (" (disputed)" if j.disputed else ""),
            fmt.credits(j.reserved_millicredits),
            fmt.credits(j.charged_millicredits) if j.settled else "-",
            _tokens(j.charged_tokens),
            fmt.short_key(j.node_id),
        ]
        for j in snapshot.jobs
    ]
    headers = ["WHEN (UTC)", "JOB", "MODEL", "STATUS", "RESERVED", "CHARGED", "TOKENS", "NODE"]
    return [title, fmt.table(headers, rows)]


def render(snapshot: Snapshot, *, now: datetime, width: int | None = None, footer: str = "") -> str:
    """The whole frame; each line cut at `width` columns when one is given (a terminal)."""
    read_at = fmt.timestamp(snapshot.taken_at)
    lines = [f"troop status  coordinator {snapshot.coordinator}  read at {read_at} UTC"]
    if snapshot.error:
        lines.append(f"! {snapshot.error}")
    for section in (
        _nodes(snapshot, now),
        _models(snapshot),
        _account(snapshot),
        _jobs(snapshot),
    ):
        lines += ["", *section]
    if footer:
        lines += ["", footer]
    text = "\n".join(lines)
    if width is None:
        return text
    return "\n".join(line[:width] for line in text.splitlines())


__all__ = ["Snapshot", "ago", "checks", "render"]
