"""Control-plane benchmark: simulated nodes, route requests, SQLite and PostgreSQL."""
