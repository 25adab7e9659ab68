"""The UDP relay: per-session ports, handshake-confirmed binding, kernel forwarding of bound
flows through :mod:`higgs.osnet.relaynat`, a userspace forwarder where that is unavailable.
Its own package: the API server never changes its host (docs/protocol.md §5)."""
