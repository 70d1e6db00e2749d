"""The credit ledger: append-only entries, cached balances, reservations settled once."""

from troop_coordinator.ledger.service import Ledger
from troop_coordinator.ledger.types import (
    AuditReport,
    ClientClaim,
    Entry,
    JobBounds,
    JobView,
    NewJob,
    NodeClaim,
    NotJoined,
    Outcome,
    Page,
    Settlement,
    TooManyOpenJobs,
)

__all__ = [
    "AuditReport",
    "ClientClaim",
    "Entry",
    "JobBounds",
    "JobView",
    "Ledger",
    "NewJob",
    "NodeClaim",
    "NotJoined",
    "Outcome",
    "Page",
    "Settlement",
    "TooManyOpenJobs",
]
