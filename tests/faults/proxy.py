"""A loopback TCP proxy that can black-hole traffic: a network partition without a reset.

While blocked, nothing is forwarded in either direction and no socket is closed (what a
pulled cable or a dropping firewall does); on unblock, what was held flows again, as TCP would
deliver its retransmissions after a short partition.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class Proxy:
    """127.0.0.1:<port> -> 127.0.0.1:<target>; `block()` / `unblock()` partition it."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def block(self) -> None:
        """Start the partition: hold every byte, close nothing."""
        self._open.clear()

    def unblock(self) -> None:
        """End the partition."""
        self._open.set()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        self._open.wait()  # a connection attempt during a partition goes nowhere until it ends
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target))
        except OSError:
            client.close()
            return
        with self._lock:
            self._sockets += [client, upstream]
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self._open.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop accepting and drop every connection."""
        self._closed = True
        self._open.set()
        self._server.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()
