"""The only code that changes the host (see docs/osnet.md).

Modules: ``runner`` (the command funnel), ``journal`` + ``undo`` (write-ahead journal),
``names`` (what we own), ``sysctl``, ``wireguard``, ``routes``, ``discovery`` (+
``discovery_parsers`` for macOS/Windows output), ``procs``, ``sweep``, ``cleanup``,
``hoststate`` (before/after snapshots), ``firewall/`` (nftables and iptables backends).
"""
