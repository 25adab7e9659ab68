"""A tiny TCP/UDP echo that reports who called, run inside a test namespace.

    python echo.py serve TAG PROTO:ADDR:PORT ...   # prints "ready", answers "TAG PEER MSS"
    python echo.py ask PROTO ADDR PORT [COUNT]     # prints one answer (or "ERR name") per
                                                   # connection, holding all of them open
    python echo.py session ADDR PORT               # one TCP connection, echoes stdin lines

Standalone on purpose (only the standard library): it runs under `ip netns exec` as its own
process, which the test stops by PID.
"""

from __future__ import annotations

import errno
import socket
import sys
import threading

TIMEOUT = 3.0


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def _echo(conn: socket.socket) -> None:
    # Held open and echoing: the connection-limit test counts open connections, the
    # re-apply test keeps talking over one.
    with conn:
        while data := conn.recv(2048):
            conn.sendall(data)


def _serve_tcp(tag: str, sock: socket.socket) -> None:
    while True:
        conn, peer = sock.accept()
        mss = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
        conn.sendall(f"{tag} {peer[0]} {mss}\n".encode())
        threading.Thread(target=_echo, args=(conn,), daemon=True).start()


def _serve_udp(tag: str, sock: socket.socket) -> None:
    while True:
        _data, peer = sock.recvfrom(2048)
        sock.sendto(f"{tag} {peer[0]} 0\n".encode(), peer)


def serve(tag: str, specs: list[str]) -> None:
    threads = []
    for spec in specs:
        proto, rest = spec.split(":", 1)
        addr, port = rest.rsplit(":", 1)
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(_family(addr), kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((addr.strip("[]"), int(port)))
        if proto == "tcp":
            sock.listen(64)
            target = _serve_tcp
        else:
            target = _serve_udp
        threads.append(threading.Thread(target=target, args=(tag, sock), daemon=True))
    for t in threads:
        t.start()
    print("ready", flush=True)
    threading.Event().wait()


def _err(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "timeout" if isinstance(exc, TimeoutError) else "?")
    return f"ERR {name}"


def session(addr: str, port: int) -> None:
    """Connects once, prints the greeting, then echoes each stdin line through the server."""
    sock = socket.create_connection((addr, port), timeout=TIMEOUT)
    reader = sock.makefile()
    print(reader.readline().strip(), flush=True)
    for line in sys.stdin:
        try:
            sock.sendall(line.encode())
            print(reader.readline().strip() or "ERR closed", flush=True)
        except OSError as exc:
            print(_err(exc), flush=True)


def ask(proto: str, addr: str, port: int, count: int) -> None:
    held = []
    for _ in range(count):
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(_family(addr), kind)
        sock.settimeout(TIMEOUT)
        try:
            if proto == "tcp":
                sock.connect((addr, port))
                line = sock.makefile().readline().strip()
            else:
                sock.sendto(b"hello", (addr, port))
                line = sock.recv(2048).decode().strip()
            print(line or "ERR closed", flush=True)
        except OSError as exc:
            print(_err(exc), flush=True)
        held.append(sock)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3:])
    elif sys.argv[1] == "session":
        session(sys.argv[2], int(sys.argv[3]))
    else:
        ask(
            sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]) if len(sys.argv) > 5 else 1
        )
