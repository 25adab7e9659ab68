"""Firewall backends (nftables, iptables) applying one policy: node NAT/protection, kill switch."""
