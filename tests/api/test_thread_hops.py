"""A request to a synchronous view hops from the event loop to a thread once, and that
thread is reused (issue 16).

Django's ASGI handler adapted each synchronous middleware method and the view separately:
17 hops between the event loop and a thread for `GET /api/health/`, in a thread started
for the request. The project's handler (jobs.api.middleware.OneHopASGIHandler) runs the
request_started signal, the synchronous chain and the response's close in one hop, on a
thread kept from one request to the next, and keeps Django's asynchronous chain for
`async def` views such as /predict.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from asgiref import sync
from django.core.signals import request_started

from zypher.asgi import application


@pytest.fixture
def hops() -> Iterator[Counter[str]]:
    """What asgiref adapted during the test: each call is a hop to a thread and back."""
    seen: Counter[str] = Counter()
    original = sync.SyncToAsync.__call__

    async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen[getattr(self.func, "__qualname__", repr(self.func))] += 1
        return await original(self, *args, **kwargs)

    sync.SyncToAsync.__call__ = counted  # type: ignore[method-assign]
    yield seen
    sync.SyncToAsync.__call__ = original  # type: ignore[method-assign]


def asgi_get(path: str) -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    answer: dict[str, Any] = {"body": b""}
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
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    asyncio.run(application(scope, receive, send))
    return answer["status"], answer["body"]


def test_a_request_to_a_synchronous_view_runs_its_whole_chain_in_one_hop(
    hops: Counter[str],
) -> None:
    status, body = asgi_get("/api/health/")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    # The request_started signal, the middleware chain, the view and the response's close
    # (which hands the database connection back) in one hop.
    assert sum(hops.values()) == 1, dict(hops)


def test_requests_one_after_another_reuse_one_thread() -> None:
    threads: list[str] = []

    def note_thread(**kwargs: Any) -> None:
        threads.append(threading.current_thread().name)

    request_started.connect(note_thread)
    try:
        for _ in range(3):
            assert asgi_get("/api/health/")[0] == 200
    finally:
        request_started.disconnect(note_thread)
    assert len(threads) == 3
    assert len(set(threads)) == 1, threads
    assert threads[0] != threading.main_thread().name


def test_an_async_view_still_runs_on_the_event_loop(hops: Counter[str]) -> None:
    # GET /predict/<id> is `async def`: the hop-per-request path must not wrap it in a
    # thread (a waiting synchronous /predict would hold one).
    status, _ = asgi_get("/predict/not-a-uuid")
    assert status == 404
    assert hops["BaseHandler.get_response"] == 0
