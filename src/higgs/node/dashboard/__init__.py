"""higgsnode's owner page and Prometheus exporter on a loopback listener (docs/dashboard.md)."""
