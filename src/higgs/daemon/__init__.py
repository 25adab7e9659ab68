"""The skeleton both long-running programs share (higgsnode's agent, higgsvpn's daemon):
the pidfile that says which process runs and survives its crash, and the status file the
CLI reads. No policy and no host networking: node and client each bring their own."""
