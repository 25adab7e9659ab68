"""The WebSocket relay: node links, session links, forwarding by channel (docs/protocol.md §3)."""
