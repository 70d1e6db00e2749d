"""`python -m troop_worker`: run a worker configured from the environment."""

from __future__ import annotations

from troop_worker.app import main

main()
