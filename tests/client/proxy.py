"""A real TCP proxy in front of the gateway that loses answers: it forwards a request,
waits until the server has answered (so the server has done its work) and closes the
connection instead of passing the answer on. The client sees what a network failure
after the request looks like, and must retry without doing the work twice. Once the
first `lose` connections are spent it passes everything, and `request_lines` tells which
requests went through it.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Callable, Iterator


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
        self._request_lines: list[str] = []  # `METHOD /path`, in the order they passed
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request_lines(self) -> list[str]:
        """`METHOD /path` of each request that passed, in the order they were sent."""
        return list(self._request_lines)

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
        requests = _RequestLines(self._request_lines)
        with client, upstream:
            threading.Thread(target=_pump, args=(client, upstream, requests), daemon=True).start()
            if losing:
                upstream.recv(1)  # the server has answered: its work is done
                # The answer is lost. shutdown, not only close: it also wakes the pump
                # blocked reading the client, and the client sees the connection end.
                for sock in (client, upstream):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                return
            _pump(upstream, client)


class _RequestLines:
    """Finds the request lines in what one connection's client sends, as it passes."""

    # Not anchored to a line start: a request line follows the previous request's body.
    PATTERN = re.compile(rb"((?:GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) /\S*) HTTP/1\.[01]\r\n")

    def __init__(self, found: list[str]) -> None:
        self.found = found
        self.sent = bytearray()
        self.scanned = 0

    def __call__(self, chunk: bytes) -> None:
        self.sent += chunk
        # Rescan a little before the new bytes: a line may have been cut between chunks.
        start = max(0, self.scanned - 2048)
        for match in self.PATTERN.finditer(self.sent, start):
            if match.end() > self.scanned:
                self.found.append(match.group(1).decode("latin-1"))
        self.scanned = len(self.sent)


def _pump(
    source: socket.socket, target: socket.socket, record: Callable[[bytes], None] | None = None
) -> None:
    with contextlib.suppress(OSError):
        for chunk in _chunks(source):
            if record is not None:
                record(chunk)
            target.sendall(chunk)
        target.shutdown(socket.SHUT_WR)


def _chunks(sock: socket.socket) -> Iterator[bytes]:
    while chunk := sock.recv(65536):
        yield chunk
