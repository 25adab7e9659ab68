"""HTTP server answering every GET with the caller's source address as JSON.

``{"ip": "203.0.113.10", "port": 40312}`` -- the address the far end of the internet sees,
which is what the e2e tests assert on.

``GET /bytes/N`` answers N bytes (at most 1 GiB) of deterministic pseudo-random data instead,
for download tests: :func:`payload_sha256` gives the digest the receiver must end up with.
Random rather than zeros so nothing on the way could compress it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import socket
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["MAX_PAYLOAD", "main", "payload_chunks", "payload_sha256"]

MAX_PAYLOAD = 1 << 30
_CHUNK = 1 << 16
_BYTES_RE = re.compile(r"^/bytes/(\d{1,10})$")


def payload_chunks(size: int) -> Iterator[bytes]:
    """The ``size`` bytes served at ``/bytes/<size>``, in chunks (seeded by the size)."""
    rng = random.Random(size)  # noqa: S311 -- reproducible test data, not a secret
    left = size
    while left > 0:
        n = min(_CHUNK, left)
        yield rng.randbytes(n)
        left -= n


def payload_sha256(size: int) -> str:
    digest = hashlib.sha256()
    for chunk in payload_chunks(size):
        digest.update(chunk)
    return digest.hexdigest()


class _Handler(BaseHTTPRequestHandler):
    server_version = "higgs-lab-whoami"

    def do_GET(self) -> None:
        found = _BYTES_RE.match(self.path)
        if found:
            self._send_bytes(int(found.group(1)))
            return
        ip, port = self.client_address[:2]
        body = json.dumps({"ip": ip, "port": port}).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_bytes(self, size: int) -> None:
        if size > MAX_PAYLOAD:
            self.send_error(413, f"at most {MAX_PAYLOAD} bytes")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        try:
            for chunk in payload_chunks(size):
                self.wfile.write(chunk)
        except ConnectionError:
            pass  # the client gave up; nothing to tell it

    def log_message(self, format: str, *args: object) -> None:
        sys.stdout.write(f"{self.client_address[0]}:{self.client_address[1]} {format % args}\n")
        sys.stdout.flush()


class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=80)
    args = parser.parse_args(argv)
    server_class = _Server6 if ":" in args.host else ThreadingHTTPServer
    httpd = server_class((args.host, args.port), _Handler)
    print(f"whoami listening on {args.host}:{args.port}", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
