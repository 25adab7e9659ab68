"""End-to-end benchmark in the lab: iperf3 TCP/UDP and ping through each kind of tunnel."""
