"""`python -m troop_coordinator` runs the coordinator configured from the environment."""

from troop_coordinator.app import main

main()
