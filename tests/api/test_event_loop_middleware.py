"""The event-loop middleware chain of `async def` views (jobs.api.middleware) answers as
Django's own middleware did: in every configuration an operator may run, and for every
Accept header a client may send to `GET /api/health/` (its answer on the loop must be
DRF's, 406 included)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from django.core.signals import request_finished, request_started
from django.dispatch import Signal
from django.test import Client

from jobs.api.middleware import OneHopASGIHandler
from jobs.models import Job, JobStatus, User
from jobs.predict.hub import close_db_connections, completion_hub, submit_prediction
from tests.support.asgi import asgi_request


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


@pytest.fixture
def closed_predict_threads(transactional_db: None) -> Iterator[None]:
    yield
    close_db_connections()  # the test database is dropped at the end


def test_a_client_that_goes_away_cancels_a_waiting_predict_and_frees_its_thread(
    closed_predict_threads: None, settings: Any
) -> None:
    # Django's cancel-on-disconnect, kept by the event-loop path: the waiting /predict is
    # cancelled (the hub forgets it), nothing is sent, the job stays queued, and the
    # request's thread goes back to the idle ones.
    settings.ZYPHER_OPEN_MODE = True
    application = OneHopASGIHandler()
    body = b'{"input": "x", "user_id": "walker"}'
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    sent: list[Mapping[str, Any]] = []

    async def run() -> int:
        hub = completion_hub()
        messages = 0

        async def receive() -> dict[str, Any]:
            nonlocal messages
            messages += 1
            if messages == 1:
                return {"type": "http.request", "body": body, "more_body": False}
            while hub.waiting == 0:  # the view waits for its job: now the client leaves
                await asyncio.sleep(0.01)
            return {"type": "http.disconnect"}

        async def send(message: Mapping[str, Any]) -> None:
            sent.append(message)

        await application(scope, receive, send)
        return hub.waiting

    assert asyncio.run(run()) == 0
    assert sent == []
    job = Job.objects.get(owner__username="walker")
    assert job.status == JobStatus.QUEUED
    assert len(application._idle_executors) == 1


def test_a_session_post_without_a_valid_csrf_token_is_refused_on_the_loop_path(
    closed_predict_threads: None, settings: Any
) -> None:
    # /predict and the job events are `async def`: CSRF for a session is checked as
    # before (DRF's session authentication for /predict, Django's middleware for events).
    settings.ZYPHER_OPEN_MODE = False
    application = OneHopASGIHandler()
    alice = User.objects.create_user("alice", password="x")
    job_id = submit_prediction(alice, "x")
    browser = Client()
    browser.force_login(alice)
    session = f"sessionid={browser.cookies['sessionid'].value}"
    secret = "a" * 32
    json_body = (b"content-type", b"application/json")

    def post(path: str, *headers: tuple[bytes, bytes]) -> tuple[int, bytes]:
        status, body, _ = asgi_request(application, path, "POST", headers, body=b'{"input": "x"}')
        return status, body

    assert post("/predict", (b"cookie", session.encode()), json_body) == (
        403,
        b'{"error": "CSRF Failed: CSRF cookie not set."}',
    )
    with_cookie = (b"cookie", f"{session}; csrftoken={secret}".encode())
    status, body = post("/predict", with_cookie, json_body, (b"x-csrftoken", b"b" * 32))
    assert status == 403 and b"incorrect" in body, body
    evil = (b"origin", b"https://evil.example")
    status, body = post("/predict", with_cookie, json_body, (b"x-csrftoken", secret.encode()), evil)
    assert status == 403 and b"Origin checking failed" in body, body
    assert post(f"/api/jobs/{job_id}/events", (b"cookie", session.encode()))[0] == 403
    # The same request with its token passes.
    status, body = post(
        "/predict", with_cookie, json_body, (b"x-csrftoken", secret.encode()), (b"async-mode", b"1")
    )
    assert status == 202, body


@pytest.mark.parametrize("signal", [request_started, request_finished])
def test_async_views_answer_with_an_async_receiver_on_the_request_signals(
    signal: Signal,
) -> None:
    # Django allows `async def` receivers; sent from the event loop's thread with `send`
    # they raise (async_to_sync refuses that thread), and every async view answered 500.
    received: list[str] = []

    async def note(**kwargs: Any) -> None:
        received.append("note")

    signal.connect(note)
    try:
        status, body, _ = asgi_request(OneHopASGIHandler(), "/api/health/")
    finally:
        signal.disconnect(note)
    assert (status, body) == (200, b'{"status":"ok"}')
    assert received == ["note"]
