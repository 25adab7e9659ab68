"""One DNS A query (UDP, or TCP with ``--tcp``) to an explicitly given server; prints
``{"answers": [...]}``.

The lab has no ``dig``; and the server is always given, so nothing ever asks a resolver from
the host's configuration (this machine must not send traffic outside the lab).
"""

from __future__ import annotations

import argparse
import json
import sys

import dns.exception
import dns.message
import dns.query
import dns.rdatatype

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", required=True)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--tcp", action="store_true", help="ask over TCP instead of UDP")
    parser.add_argument("name")
    args = parser.parse_args(argv)
    query = dns.message.make_query(args.name, dns.rdatatype.A)
    try:
        ask = dns.query.tcp if args.tcp else dns.query.udp
        response = ask(query, args.server, timeout=args.timeout)
    except (dns.exception.DNSException, OSError) as exc:
        print(f"dnsq: no answer from {args.server}: {exc}", file=sys.stderr)
        return 1
    answers = [rr.address for rrset in response.answer for rr in rrset if hasattr(rr, "address")]
    print(json.dumps({"rcode": response.rcode(), "answers": answers}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
