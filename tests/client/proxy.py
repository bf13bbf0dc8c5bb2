"""A real TCP proxy in front of the gateway that loses answers: it forwards a request,
waits until the server has answered (so the server has done its work) and closes the
connection instead of passing the answer on. The client sees what a network failure
after the request looks like, and must retry without doing the work twice.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator


class AnswerLosingProxy:
    """Listens on a free loopback port; the first `lose` connections lose their answer,
    later ones pass everything both ways."""

    def __init__(self, upstream_port: int, lose: int) -> None:
        self.upstream_port = upstream_port
        self.lose = lose
        self.lost = 0
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            losing = self.lost < self.lose
            if losing:
                self.lost += 1
            threading.Thread(target=self._serve, args=(client, losing), daemon=True).start()

    def _serve(self, client: socket.socket, losing: bool) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        with client, upstream:
            threading.Thread(target=_pump, args=(client, upstream), daemon=True).start()
            if losing:
                upstream.recv(1)  # the server has answered: its work is done
                # The answer is lost. shutdown, not only close: it also wakes the pump
                # blocked reading the client, and the client sees the connection end.
                for sock in (client, upstream):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                return
            _pump(upstream, client)


def _pump(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        for chunk in _chunks(source):
            target.sendall(chunk)
        target.shutdown(socket.SHUT_WR)


def _chunks(sock: socket.socket) -> Iterator[bytes]:
    while chunk := sock.recv(65536):
        yield chunk
