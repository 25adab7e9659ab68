"""Wire formats shared by all programs: pure, sans-I/O. See docs/protocol.md."""
