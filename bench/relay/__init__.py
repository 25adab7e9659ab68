"""Relay benchmark: the hub against a Node ``ws`` reference relay."""
