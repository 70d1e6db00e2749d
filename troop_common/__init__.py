"""What the Troop coordinator, worker and client share: contracts, keys, tickets, errors."""
