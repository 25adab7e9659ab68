"""higgsnode: the exit-node agent."""
