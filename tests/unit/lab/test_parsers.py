from __future__ import annotations

import pytest

from higgs.lab.lab import DnsQuery, parse_dns_log
from higgs.lab.procs import parse_proc_net

# Captured from a lab run: /proc/<dnsmasq pid>/net/udp, /proc/<whoami pid>/net/tcp and the
# dnsmasq log (its last, AAAA line added by hand to cover another query type).
PROC_NET_UDP = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 3739: 0A0200C0:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 24179 2 000000000049f866 0
"""  # noqa: E501
PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0A0200C0:024B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 24696 1 00000000b1b50126 100 0 0 10 0
   1: 0A0200C0:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 24180 1 00000000be988ded 100 0 0 10 5
   2: 0A0200C0:0019 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 24695 1 000000007e28b19a 100 0 0 10 0
   3: 0A0200C0:0050 00000000:0000 0A 00000000:00000001 00:00000000 00000000     0        0 24186 2 00000000bb80c944 100 0 0 10 0
   4: 0A0200C0:1451 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 24691 1 0000000074e3b9d6 100 0 0 10 0
   5: 0A0200C0:0050 147100CB:B0A0 01 00000000:00000000 00:00000000 00000000     0        0 0 1 00000000c0012280 20 0 0 10 -1
   6: 0A0200C0:0050 147100CB:B094 06 00000000:00000000 03:0000176E 00000000     0        0 0 3 00000000042ad377
"""  # noqa: E501

DNSMASQ_LOG = """\
Nov 25 14:39:37 dnsmasq[15686]: started, version 2.90 cachesize 150
Nov 25 14:39:37 dnsmasq[15686]: warning: no upstream servers configured
Nov 25 14:39:37 dnsmasq[15686]: using only locally-known addresses for example.test
Nov 25 14:39:38 dnsmasq[15686]: query[A] example.test from 203.0.113.20
Nov 25 14:39:38 dnsmasq[15686]: config example.test is 192.0.2.10
Nov 25 14:39:39 dnsmasq[15686]: query[AAAA] www.example.test from 203.0.113.10
"""


def test_listening_tcp_ports_ignore_established_connections() -> None:
    assert parse_proc_net(PROC_NET_TCP, "tcp") == {25, 53, 80, 587, 5201}


def test_bound_udp_ports() -> None:
    assert parse_proc_net(PROC_NET_UDP, "udp") == {53}


def test_proc_net_refuses_unknown_protocol() -> None:
    with pytest.raises(ValueError, match="tcp or udp"):
        parse_proc_net(PROC_NET_TCP, "sctp")


def test_dns_log_yields_who_asked_what() -> None:
    assert parse_dns_log(DNSMASQ_LOG) == [
        DnsQuery(name="example.test", qtype="A", source="203.0.113.20"),
        DnsQuery(name="www.example.test", qtype="AAAA", source="203.0.113.10"),
    ]
