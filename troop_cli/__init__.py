"""The `troop` command: runs each component and talks to the network as a user."""
