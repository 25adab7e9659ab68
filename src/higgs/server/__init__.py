"""bosonserver: node registry, accounts, routing, sessions, relay."""
