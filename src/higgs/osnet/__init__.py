"""The only code that changes the host: command funnel, journal, firewall, routes, WireGuard."""
