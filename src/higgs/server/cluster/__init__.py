"""Scale-out: several API instances on one PostgreSQL, linked by a message bus."""
