"""TCP listeners that greet with a banner line and echo what they receive.

Stands in for an SMTP server on the internet host (ports 25/587) and the owner's printer on
the home LAN: tests check whether a connection gets through and see the banner.
"""

from __future__ import annotations

import argparse
import asyncio

__all__ = ["main"]


async def _serve(host: str, ports: list[int], banner: str) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        local = writer.get_extra_info("sockname")
        print(f"connection to port {local[1]} from {peer[0]}:{peer[1]}", flush=True)
        try:
            writer.write(banner.encode() + b"\r\n")
            await writer.drain()
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    servers = [await asyncio.start_server(handle, host, port) for port in ports]
    print(f"listening on {host} ports {ports}", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, action="append", required=True)
    parser.add_argument("--banner", default="hello")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.host, args.port, args.banner))


if __name__ == "__main__":
    main()
