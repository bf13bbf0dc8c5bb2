"""A request to a synchronous view hops from the event loop to a thread once, and that
thread is reused; a request to an `async def` view does not hop at all (issue 16).

Django's ASGI handler adapted each synchronous middleware method and the view separately:
17 hops between the event loop and a thread for `GET /api/health/`, in a thread started
for the request. The project's handler (jobs.api.middleware.OneHopASGIHandler) runs the
request_started signal, the synchronous chain and the response's close in one hop, on a
thread kept from one request to the next. An `async def` view (/predict, `GET
/api/health/`) runs Django's asynchronous chain on the event loop: the middleware are
event-loop versions of Django's (their hops were 2 per middleware), and request_started
and the close stay on the loop when the request used no thread.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref import sync
from django.core.signals import request_started
from django.test import Client
from rest_framework.authtoken.models import Token

from jobs.models import User
from jobs.predict.hub import close_db_connections, submit_prediction
from tests.support.asgi import asgi_request as support_asgi_request
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


def asgi_get(
    path: str, query: bytes = b"", headers: tuple[tuple[bytes, bytes], ...] = ()
) -> tuple[int, bytes]:
    status, body, _ = asgi_request(path, query, headers)
    return status, body


def asgi_request(
    path: str, query: bytes = b"", headers: tuple[tuple[bytes, bytes], ...] = ()
) -> tuple[int, bytes, dict[bytes, bytes]]:
    return support_asgi_request(application, path, headers=headers, query=query)


def test_a_request_to_a_synchronous_view_runs_its_whole_chain_in_one_hop(
    hops: Counter[str],
) -> None:
    # DRF's token view, synchronous: GET is refused by the view itself (405).
    status, body = asgi_get("/api/token/")
    assert status == 405, body
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
            assert asgi_get("/api/token/")[0] == 405
    finally:
        request_started.disconnect(note_thread)
    assert len(threads) == 3
    assert len(set(threads)) == 1, threads
    assert threads[0] != threading.main_thread().name


def test_health_is_answered_on_the_event_loop_with_no_hop(hops: Counter[str]) -> None:
    status, body = asgi_get("/api/health/", headers=((b"accept", b"*/*"),))
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    # No middleware hook, no signal, no view, no close in a thread.
    assert sum(hops.values()) == 0, dict(hops)


def test_the_event_loop_answer_is_drfs_byte_for_byte(hops: Counter[str]) -> None:
    fast = asgi_request("/api/health/")
    assert sum(hops.values()) == 0, dict(hops)
    # `?format=json` makes the view hand the request to DRF: the same JSON renderer.
    through_drf = asgi_request("/api/health/", query=b"format=json")
    assert hops["View.as_view.<locals>.view"] == 1, dict(hops)
    assert fast[:2] == through_drf[:2] == (200, b'{"status":"ok"}')
    for header in (b"content-type", b"allow", b"vary", b"x-frame-options", b"content-length"):
        assert fast[2].get(header) == through_drf[2].get(header), header


def test_health_keeps_drfs_browsable_api() -> None:
    status, body, headers = asgi_request("/api/health/", headers=((b"accept", b"text/html"),))
    assert status == 200
    assert headers[b"content-type"].startswith(b"text/html")
    assert b"Health" in body and b"&quot;status&quot;" in body


def test_an_async_view_runs_its_chain_on_the_event_loop(hops: Counter[str]) -> None:
    # GET /predict/<id> is `async def`: the hop-per-request path must not wrap it in a
    # thread (a waiting synchronous /predict would hold one), and its middleware must not
    # hop either. Django still logs a 4xx answer from a thread of its own.
    status, _ = asgi_get("/predict/not-a-uuid")
    assert status == 404
    assert dict(hops) == {"log_response": 1}


@pytest.fixture
def closed_predict_threads(transactional_db: None) -> Iterator[None]:
    yield
    close_db_connections()  # the test database is dropped at the end


def test_async_views_authenticate_by_session_and_token_on_the_hop_free_chain(
    closed_predict_threads: None, settings: Any, hops: Counter[str]
) -> None:
    # /predict reads the session (the user behind a session cookie) and the token in its
    # database threads; the middleware around it stay on the event loop.
    settings.ZYPHER_OPEN_MODE = False
    alice = User.objects.create_user("alice", password="x")
    bob = User.objects.create_user("bob", password="x")
    prediction_id = submit_prediction(alice, "x")  # queued: no device runs it
    path = f"/predict/{prediction_id}"

    def session_of(user: User) -> tuple[bytes, bytes]:
        browser = Client()
        browser.force_login(user)
        return (b"cookie", f"sessionid={browser.cookies['sessionid'].value}".encode())

    token = (b"authorization", f"Token {Token.objects.create(user=alice).key}".encode())
    assert asgi_get(path)[0] == 401
    assert asgi_get(path, headers=(session_of(bob),))[0] == 404
    status, body = asgi_get(path, headers=(session_of(alice),))
    assert (status, json.loads(body)) == (400, {"error": "Prediction is still being processed."})
    assert asgi_get(path, headers=(token,))[0] == 400
    # Only the views' own database calls and Django's log of a 4xx left the loop.
    assert set(hops) <= {"_with_connection_hygiene", "log_response"}, dict(hops)
