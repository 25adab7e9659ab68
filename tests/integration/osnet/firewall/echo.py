"""A tiny TCP/UDP echo that reports who called, run inside a test namespace.

    python echo.py serve TAG PROTO:ADDR:PORT ...   # prints "ready", answers "TAG PEER MSS"
    python echo.py ask PROTO ADDR PORT [COUNT]     # prints one answer (or "ERR name") per
                                                   # connection, holding all of them open
    python echo.py session ADDR PORT               # one TCP connection, echoes stdin lines
    python echo.py probe PROTO:ADDR:PORT ...       # one answer per target, asked in parallel
    python echo.py dgram [SRC:]SPORT MARK ADDR PORT  # one UDP datagram from that source port
                                                   # (with that SO_MARK unless 0), one answer

Standalone on purpose (only the standard library): it runs under `ip netns exec` as its own
process, which the test stops by PID.
"""

from __future__ import annotations

import errno
import socket
import sys
import threading

TIMEOUT = 2.0


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


def probe(specs: list[str]) -> None:
    """One answer line per PROTO:ADDR:PORT spec, in order; all asked at once (in threads),
    so unreachable targets cost one timeout, not one each."""
    answers: list[str] = [""] * len(specs)

    def one(i: int, spec: str) -> None:
        proto, rest = spec.split(":", 1)
        addr, port = rest.rsplit(":", 1)
        answers[i] = _one(proto, addr.strip("[]"), int(port))[0]

    threads = [threading.Thread(target=one, args=(i, s)) for i, s in enumerate(specs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("\n".join(answers), flush=True)


def _one(proto: str, addr: str, port: int) -> tuple[str, socket.socket]:
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
        return line or "ERR closed", sock
    except OSError as exc:
        return _err(exc), sock


def dgram(source: str, mark: int, addr: str, port: int) -> None:
    """As WireGuard sends: from a fixed port (and address), with its fwmark."""
    src, _, sport = source.rpartition(":")
    sock = socket.socket(_family(addr), socket.SOCK_DGRAM)
    sock.settimeout(TIMEOUT)
    if mark:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    try:
        sock.bind((src, int(sport)))
        sock.sendto(b"hello", (addr, port))
        print(sock.recv(2048).decode().strip() or "ERR closed", flush=True)
    except OSError as exc:
        print(_err(exc), flush=True)
    finally:
        sock.close()


def ask(proto: str, addr: str, port: int, count: int) -> None:
    held = []  # all kept open until the end: the connection-limit test counts them
    for _ in range(count):
        line, sock = _one(proto, addr, port)
        print(line, flush=True)
        held.append(sock)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3:])
    elif sys.argv[1] == "probe":
        probe(sys.argv[2:])
    elif sys.argv[1] == "dgram":
        dgram(sys.argv[2], int(sys.argv[3], 0), sys.argv[4], int(sys.argv[5]))
    elif sys.argv[1] == "session":
        session(sys.argv[2], int(sys.argv[3]))
    else:
        ask(
            sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]) if len(sys.argv) > 5 else 1
        )
