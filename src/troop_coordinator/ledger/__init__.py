"""The credit ledger: append-only entries, cached balances, reservations settled once."""

from troop_coordinator.ledger.service import Ledger
from troop_coordinator.ledger.types import (
    AuditReport,
    Entry,
    NewJob,
    Outcome,
    Page,
    Settlement,
)

__all__ = ["AuditReport", "Entry", "Ledger", "NewJob", "Outcome", "Page", "Settlement"]
