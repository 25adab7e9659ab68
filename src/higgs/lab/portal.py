"""A TCP portal from the test host's loopback into a lab namespace (for the browser tests).

Chromium runs in the host's namespace; the dashboards listen inside lab namespaces (the
node's on *its* 127.0.0.1). The portal listens on the host's 127.0.0.1 (ephemeral port) and
joins each connection to a socket created inside the namespace (netns_socket), copying bytes
both ways. Threads, bounded by the connections the test makes; :meth:`close` ends them all.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from .netns import netns_socket

__all__ = ["Portal"]


class Portal:
    def __init__(self, ns: str, addr: str, port: int) -> None:
        self._ns, self._target = ns, (addr, port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(32)
        self.port: int = self._listener.getsockname()[1]
        self._socks: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="portal", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.add(sock)

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._track(conn)
            try:
                far = netns_socket(self._ns)
                self._track(far)
                far.settimeout(5)
                far.connect(self._target)
                far.settimeout(None)
            except Exception:
                conn.close()
                continue
            for a, b in ((conn, far), (far, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            socks, self._socks = list(self._socks), set()
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Portal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
