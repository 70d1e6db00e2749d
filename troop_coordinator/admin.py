"""Operator commands that read the coordinator's database directly.

`troop admin audit-ledger` calls `audit_ledger(settings)`: it checks, in one
snapshot, that credits minted = balances + open reservations, that every
cached balance equals the sum of its account's entries, that no balance is
negative, that every job's entries add up, that no job settled twice, and
fairness: no job charged more than its counted work, or with neither a receipt nor
its user's countersignature; it also names the nodes and users that lead the
disputes. Read-only; safe against a running network.

`troop admin invite` calls `create_invite(settings)`: it prints a one-time
admission code and stores only its SHA-256 (for TROOP_ADMISSION=invite).
`troop admin rotate-ticket-key` calls `rotate_ticket_key(settings)`: a new
ticket-signing key in data_dir/ticket-keys, picked up by a running
coordinator within TROOP_TICKET_KEY_RELOAD_SECONDS (docs/adr/0016).
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from typing import TextIO

from troop_common.admission import hash_invite, new_invite_code
from troop_coordinator.db import migrate
from troop_coordinator.db.engine import create_engine, session_factory
from troop_coordinator.ledger import AuditReport, Ledger
from troop_coordinator.settings import MILLICREDITS_PER_CREDIT, CoordinatorSettings
from troop_coordinator.ticket_keys import ensure_key_dir, rotate

MAX_LISTED = 20


def _credits(millicredits: int) -> str:
    return f"{millicredits / MILLICREDITS_PER_CREDIT:,.3f}"


def format_report(report: AuditReport) -> str:
    """The audit as lines a person reads; the verdict last."""
    total = (
        report.balances_millicredits
        + report.open_reservations_millicredits
        + report.held_millicredits
    )
    lines = [
        f"minted (starter grants)   {_credits(report.minted_millicredits):>20} credits",
        f"balances                  {_credits(report.balances_millicredits):>20} credits",
        f"open reservations         {_credits(report.open_reservations_millicredits):>20} credits",
        f"held earnings             {_credits(report.held_millicredits):>20} credits",
        f"balances + reserved, held {_credits(total):>20} credits"
        f"  ({'conserved' if report.conserved else 'NOT CONSERVED'})",
    ]
    problems = [
        (
            "balances that differ from their entries (cached, entries)",
            [f"{k}: {v}" for k, v in report.mismatched_accounts.items()],
        ),
        ("negative balances", report.negative_accounts),
        ("jobs whose entries do not add up", report.unbalanced_jobs),
        ("jobs settled more than once", report.settled_twice_jobs),
        ("jobs charged more than their counted work", report.overcharged_jobs),
        ("jobs charged with neither a receipt nor a countersignature", report.unreceipted_charges),
    ]
    for title, items in problems:
        if items:
            lines.append(f"{title}: {len(items)}")
            lines.extend(f"  {item}" for item in items[:MAX_LISTED])
            if len(items) > MAX_LISTED:
                lines.append(f"  … and {len(items) - MAX_LISTED} more")
    for title, leaders in (
        ("nodes with the most disputes", report.node_dispute_leaders),
        ("users with the most disputes", report.user_dispute_leaders),
    ):
        if leaders:
            lines.append(f"{title}:")
            lines.extend(f"  {party}  {count}" for party, count in leaders)
    lines.append("ledger OK" if report.ok else "ledger INVARIANT VIOLATED")
    return "\n".join(lines)


async def read_audit(settings: CoordinatorSettings) -> AuditReport:
    """The audit of the configured database, as `audit-ledger` prints it."""
    engine = create_engine(settings.effective_database_url)
    try:
        ledger = Ledger(
            session_factory(engine),
            starter_millicredits=settings.starter_millicredits,
            token_slack=settings.usage_token_slack,
        )
        return await ledger.audit()
    finally:
        await engine.dispose()


async def audit_ledger(settings: CoordinatorSettings, out: TextIO | None = None) -> int:
    """Print the audit of the configured database; 0 if the invariant holds, 1 if not."""
    report = await read_audit(settings)
    print(format_report(report), file=out or sys.stdout)
    return 0 if report.ok else 1


async def create_invite(settings: CoordinatorSettings, out: TextIO | None = None) -> str:
    """Make a one-time invite code, store its hash, print the code; the code."""
    code = new_invite_code()
    engine = create_engine(settings.effective_database_url)
    try:
        await migrate.upgrade(engine)  # a fresh data dir has no schema yet
        ledger = Ledger(
            session_factory(engine),
            starter_millicredits=settings.starter_millicredits,
            token_slack=settings.usage_token_slack,
        )
        await ledger.create_invite(hash_invite(code), datetime.now(UTC))
    finally:
        await engine.dispose()
    print(code, file=out or sys.stdout)
    return code


async def rotate_ticket_key(settings: CoordinatorSettings, out: TextIO | None = None) -> str:
    """Make a new ticket-signing key (retiring the current one); print and return its kid."""

    def work() -> str:
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        ensure_key_dir(settings.ticket_keys_dir, settings.ticket_key_path)
        return rotate(settings.ticket_keys_dir, grace_s=settings.effective_ticket_key_grace_s)

    kid = await asyncio.to_thread(work)
    print(
        f"new ticket key {kid}; the previous key stays in the key set for "
        f"{settings.effective_ticket_key_grace_s:.0f} s",
        file=out or sys.stdout,
    )
    return kid


async def verify_audit(settings: CoordinatorSettings, out: TextIO | None = None) -> int:
    """Walk the audit table's hash chain; 0 if intact, 1 naming the first broken event."""
    from troop_coordinator.audit_store import AuditStore

    engine = create_engine(settings.effective_database_url)
    try:
        report = await AuditStore(session_factory(engine)).verify()
    finally:
        await engine.dispose()
    if report.ok:
        print(f"audit chain OK: {report.events} events", file=out or sys.stdout)
        return 0
    print(
        f"audit chain BROKEN at event {report.broken_at}: {report.reason}",
        file=out or sys.stdout,
    )
    return 1
