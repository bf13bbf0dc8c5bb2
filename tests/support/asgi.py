"""One request through an ASGI application in process: no server, no socket.

The tests of the handler's thread hops and of the event-loop middleware drive
`zypher.asgi.application` (or a fresh `OneHopASGIHandler`) this way, so what they count
is the application's own work."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

AsgiApp = Callable[..., Coroutine[Any, Any, None]]


def asgi_request(
    application: AsgiApp,
    path: str,
    method: str = "GET",
    headers: tuple[tuple[bytes, bytes], ...] = (),
    body: bytes = b"",
    query: bytes = b"",
) -> tuple[int, bytes, dict[bytes, bytes]]:
    """Send one HTTP request and return its status, body and (lower-cased) headers."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": [(b"host", b"127.0.0.1"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    answer: dict[str, Any] = {"body": b"", "headers": {}}
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        # The client stays connected until the response is sent.
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: Mapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = {name.lower(): value for name, value in message["headers"]}
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    asyncio.run(application(scope, receive, send))
    return answer["status"], answer["body"], answer["headers"]


Headers = tuple[tuple[bytes, bytes], ...]


class Answer:
    """A response: status, headers (names lower-cased) in order, body."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = [(name.lower(), value) for name, value in headers]
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


async def send_request(
    app: Any,
    body: bytes,
    headers: Headers = (),
    *,
    path: str = "/api/jobs/",
    method: str = "POST",
    scheme: str = "http",
    root_path: str = "",
    host: bytes = b"127.0.0.1",
    chunks: int = 1,
    scope_changes: Mapping[str, Any] | None = None,
) -> Answer:
    """Send one request, its body in `chunks` messages; `scope_changes` replace parts of
    the scope (its headers, its server)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": scheme,
        "path": path,
        "raw_path": path.encode(),
        "root_path": root_path,
        "query_string": b"",
        "headers": [(b"host", host), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        **(scope_changes or {}),
    }
    size = -(-len(body) // chunks) if body else 0
    pieces = [body[i : i + size] for i in range(0, len(body), size)] if size else [b""]
    messages = [
        {"type": "http.request", "body": piece, "more_body": index < len(pieces) - 1}
        for index, piece in enumerate(pieces)
    ]
    started: dict[str, Any] = {}
    out: list[bytes] = []

    async def receive() -> Mapping[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: Mapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            started.update(message)
        else:
            out.append(message.get("body", b""))

    await app(scope, receive, send)
    return Answer(started["status"], list(started["headers"]), b"".join(out))


def json_headers(body: bytes, *extra: tuple[bytes, bytes]) -> Headers:
    return (
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    )
