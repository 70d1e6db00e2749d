"""Operator commands that read the coordinator's database directly.

`troop admin audit-ledger` calls `audit_ledger(settings)`: it checks, in one
snapshot, that credits minted = balances + open reservations, that every
cached balance equals the sum of its account's entries, that no balance is
negative, that every job's entries add up, and that no job settled twice.
Read-only; safe against a running network.
"""

from __future__ import annotations

import sys
from typing import TextIO

from troop_coordinator.db.engine import create_engine, session_factory
from troop_coordinator.ledger import AuditReport, Ledger
from troop_coordinator.settings import MILLICREDITS_PER_CREDIT, CoordinatorSettings

MAX_LISTED = 20


def _credits(millicredits: int) -> str:
    return f"{millicredits / MILLICREDITS_PER_CREDIT:,.3f}"


def format_report(report: AuditReport) -> str:
    """The audit as lines a person reads; the verdict last."""
    held = report.balances_millicredits + report.open_reservations_millicredits
    lines = [
        f"minted (starter grants)   {_credits(report.minted_millicredits):>20} credits",
        f"balances                  {_credits(report.balances_millicredits):>20} credits",
        f"open reservations         {_credits(report.open_reservations_millicredits):>20} credits",
        f"balances + reservations   {_credits(held):>20} credits"
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
    ]
    for title, items in problems:
        if items:
            lines.append(f"{title}: {len(items)}")
            lines.extend(f"  {item}" for item in items[:MAX_LISTED])
            if len(items) > MAX_LISTED:
                lines.append(f"  … and {len(items) - MAX_LISTED} more")
    lines.append("ledger OK" if report.ok else "ledger INVARIANT VIOLATED")
    return "\n".join(lines)


async def audit_ledger(settings: CoordinatorSettings, out: TextIO | None = None) -> int:
    """Print the audit of the configured database; 0 if the invariant holds, 1 if not."""
    engine = create_engine(settings.effective_database_url)
    try:
        ledger = Ledger(session_factory(engine), starter_millicredits=settings.starter_millicredits)
        report = await ledger.audit()
    finally:
        await engine.dispose()
    print(format_report(report), file=out or sys.stdout)
    return 0 if report.ok else 1
