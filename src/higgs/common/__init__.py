"""Config loading, logging, keys, backoff: no policy, no host changes."""
