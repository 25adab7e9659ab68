"""Time to connect and to be served again after a node crash (issue 13, item 5)."""
