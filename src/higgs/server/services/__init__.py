"""The server's business logic: identity, registry, routing, sessions. No HTTP here."""
