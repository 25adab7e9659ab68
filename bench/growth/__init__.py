"""Growth: 1, 10 and 50 clients at once through one node (issue 13 item 4)."""
