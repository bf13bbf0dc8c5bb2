"""The event-loop middleware chain of `async def` views (jobs.api.middleware) answers as
Django's own middleware did: in every configuration an operator may run, and for every
Accept header a client may send to `GET /api/health/` (its answer on the loop must be
DRF's, 406 included)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from jobs.api.middleware import OneHopASGIHandler


def asgi_request(
    application: OneHopASGIHandler,
    path: str,
    method: str = "GET",
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> tuple[int, bytes, dict[bytes, bytes]]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
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
            return {"type": "http.request", "body": b"", "more_body": False}
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


def test_async_views_answer_with_whitenoise_autorefresh_on(settings: Any) -> None:
    # DJANGO_DEBUG=1 turns WhiteNoise's autorefresh on: it looks for each path on disk.
    # Health (gunicorn's readiness probe) and /predict must still reach their views.
    settings.WHITENOISE_AUTOREFRESH = True
    settings.WHITENOISE_USE_FINDERS = True  # as DEBUG has it
    application = OneHopASGIHandler()
    status, body, _ = asgi_request(application, "/api/health/")
    assert (status, body) == (200, b'{"status":"ok"}')
    status, body, _ = asgi_request(application, "/predict/not-a-uuid")
    assert status == 404, body
    # And a static file is still served, from the disk.
    status, _, headers = asgi_request(application, "/static/admin/css/base.css")
    assert status == 200
    assert headers[b"content-type"].startswith(b"text/css")


@pytest.mark.parametrize("accept", ["", " ", ",", " , "])
def test_health_refuses_an_accept_header_drf_refuses(accept: str) -> None:
    application = OneHopASGIHandler()
    headers = ((b"accept", accept.encode()),)
    status, body, _ = asgi_request(application, "/api/health/", headers=headers)
    # What DRF's content negotiation answers (and the health view did before issue 16).
    assert status == 406, body
    assert body == b'{"error":"Could not satisfy the request Accept header."}'


@pytest.mark.parametrize(
    "accept",
    [
        None,
        "*/*",
        "application/json",
        "application/*",
        " application/json ,*/*",
        "application/json, ",
        "*/*,,",
    ],
)
def test_health_answers_plain_json_accept_headers_on_the_loop(accept: str | None) -> None:
    application = OneHopASGIHandler()
    headers = () if accept is None else ((b"accept", accept.encode()),)
    assert asgi_request(application, "/api/health/", headers=headers)[:2] == (
        200,
        b'{"status":"ok"}',
    )
