"""Path bring-up times: the UDP relay, then the hole-punched path (issue 12)."""
