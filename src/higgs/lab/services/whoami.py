"""HTTP server answering every GET with the caller's source address as JSON.

``{"ip": "203.0.113.10", "port": 40312}`` -- the address the far end of the internet sees,
which is what the e2e tests assert on.
"""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["main"]


class _Handler(BaseHTTPRequestHandler):
    server_version = "higgs-lab-whoami"

    def do_GET(self) -> None:
        ip, port = self.client_address[:2]
        body = json.dumps({"ip": ip, "port": port}).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        sys.stdout.write(f"{self.client_address[0]}:{self.client_address[1]} {format % args}\n")
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=80)
    args = parser.parse_args(argv)
    httpd = ThreadingHTTPServer((args.host, args.port), _Handler)
    print(f"whoami listening on {args.host}:{args.port}", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
