"""One request through an ASGI application in process: no server, no socket.

The tests of the handler's thread hops and of the event-loop middleware drive
`zypher.asgi.application` (or a fresh `OneHopASGIHandler`) this way, so what they count
is the application's own work."""

from __future__ import annotations

import asyncio
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
