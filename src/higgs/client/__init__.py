"""higgsvpn: the user's VPN client."""
