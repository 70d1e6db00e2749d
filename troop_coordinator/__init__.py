"""The Troop coordinator: ledger, node discovery and ticket signing behind one gRPC service."""
