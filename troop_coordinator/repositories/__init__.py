"""Typed repositories: the SQL of one aggregate each, on the caller's session or connection.

The ledger's own is `troop_coordinator.ledger.repository`; transactions and their retry
are `troop_coordinator.db.transactions` (docs/adr/0040).
"""
