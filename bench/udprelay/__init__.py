"""The UDP relay's microbenchmark (issue 11): kernel CPU per datagram, userspace packets/s,
many leased ports. ``python -m bench.udprelay [--smoke]``."""
