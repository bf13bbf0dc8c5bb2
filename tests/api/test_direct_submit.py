"""The common single submit is answered in front of Django (jobs.api.direct_submit).

Each request is sent twice, in process: once to the served application (`DirectSubmit`
in front of Django) and once to Django alone (`application.app`), and the two answers
are compared: status, every header, and the body (ids and times aside). Whether the
direct path answered is seen from Django's request_started signal, which only Django
sends. On SQLite the path is off and Django answers everything.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any, cast

import psycopg
import pytest
from django.db import connections
from rest_framework.authtoken.models import Token

from jobs.api.direct_submit import DirectSubmit
from jobs.api.middleware import RETRY_AFTER_SECONDS, UNAVAILABLE_MESSAGE, OneHopASGIHandler
from jobs.models import FairShareAccount, Job, User
from jobs.notifications import listener_conninfo
from tests.support.api_helpers import JOBS_URL
from tests.support.asgi import Answer, Headers, json_headers, send_request
from zypher.asgi import application

pytest_plugins = ["tests.support.api_fixtures"]


@pytest.fixture(autouse=True)
def close_direct_connections() -> Iterator[None]:
    """The connections these requests opened end with the test (the test database is
    dropped): the direct path's, and Django's in the handler's request threads."""
    yield
    close_connections(application)


def close_connections(app: DirectSubmit) -> None:
    app.connections.close_all()
    for executor in cast(OneHopASGIHandler, app.app)._idle_executors:
        executor.submit(connections.close_all).result()


def both_ways(
    body: Any, *extra: tuple[bytes, bytes], app: DirectSubmit = application, **options: Any
) -> tuple[Answer, Answer]:
    """The same request to the served application, then to Django alone."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = json_headers(raw, *extra)

    async def run() -> tuple[Answer, Answer]:
        served = await send_request(app, raw, headers, **options)
        alone = await send_request(app.app, raw, headers, **options)
        return served, alone

    return asyncio.run(run())


_VARIES = {"id", "url", "created_at"}


def assert_same_answer(served: Answer, alone: Answer) -> None:
    assert served.status == alone.status, (served.body, alone.body)
    lengths = [h for h in served.headers if h[0] == b"content-length"]
    assert lengths == [(b"content-length", str(len(served.body)).encode())]
    # Every header, in Django's order; the length only differs with the body's ids and times.
    assert [h for h in served.headers if h[0] != b"content-length"] == [
        h for h in alone.headers if h[0] != b"content-length"
    ]
    if served.status in (200, 201):
        mine, theirs = served.json(), alone.json()
        assert {k: v for k, v in mine.items() if k not in _VARIES} == {
            k: v for k, v in theirs.items() if k not in _VARIES
        }
        assert mine["url"].endswith(f"{JOBS_URL}{mine['id']}/")
        assert mine["url"].replace(mine["id"], "ID") == theirs["url"].replace(theirs["id"], "ID")
    else:
        assert served.body == alone.body


def served_directly(seen: list[object], before: int) -> bool:
    # Each both_ways sends Django one request (the "alone" one); the served one adds a
    # second only when the direct path handed it on.
    return len(seen) - before == 1


postgres_only = pytest.mark.postgres


@pytest.mark.django_db(transaction=True)
@postgres_only
@pytest.mark.usefixtures("open_mode")
@pytest.mark.parametrize(
    "body, extra",
    [
        ({"user_id": "alice", "input": 5}, ()),
        ({"user_id": "alice", "kind": "noop", "input": {"a": [1, 2.5, None, "é"]}}, ()),
        ({"user_id": "bob", "input": "wait 5", "priority": -7, "device_type": "cpu"}, ()),
        ({"input": 1}, ((b"x-user-id", b"carol"),)),
        ({"input": 1}, ()),  # anonymous
        ({"user_id": "alice", "input": 1}, ((b"accept", b"application/json"),)),
    ],
)
def test_a_plain_submit_is_answered_directly_as_django_answers_it(
    body: dict[str, Any], extra: Headers, django_answers: list[object]
) -> None:
    served, alone = both_ways(body, *extra)

    assert served_directly(django_answers, 0)
    assert served.status == 201
    assert_same_answer(served, alone)
    job = Job.objects.get(public_id=served.json()["id"])
    assert (job.owner.username, job.input, job.kind) == (
        served.json()["user_id"],
        body["input"],
        body.get("kind", "limited_f"),
    )
    account = FairShareAccount.objects.get(user=job.owner, pool__device_type=job.device_type)
    assert account.queued_count == 2  # both answers queued a job, each counted once


@pytest.mark.django_db(transaction=True)
@postgres_only
@pytest.mark.usefixtures("open_mode")
@pytest.mark.parametrize(
    "body, extra",
    [
        (b"{not json", ()),
        (b'{"user_id": "alice", "input": NaN}', ()),
        ([{"user_id": "alice", "input": 1}], ()),  # a list: Django's bulk path
        ("just a string", ()),
        ({"user_id": "alice"}, ()),  # no input
        ({"user_id": "alice", "input": 1, "kind": "nope"}, ()),
        ({"user_id": "alice", "input": 1, "priority": 1000}, ()),
        ({"user_id": "alice", "input": 1, "priority": True}, ()),
        ({"user_id": " alice", "input": 1}, ()),
        ({"user_id": "a" * 151, "input": 1}, ()),
        ({"user_id": "alice", "input": 1, "extra": 2}, ()),
        ({"user_id": "alice", "input": "\u0000"}, ()),
        ({"user_id": "alice", "input": 1, "callback_url": "http://10.0.0.1/"}, ()),
        ({"input": 1}, ((b"x-user-id", b"bad name!"),)),
        ({"user_id": "alice", "input": 1}, ((b"cookie", b"sessionid=nothing"),)),
        ({"user_id": "alice", "input": 1}, ((b"accept", b"text/html"),)),
        ({"user_id": "alice", "input": 1}, ((b"x-user-id", b"a"), (b"x-user-id", b"b"))),
    ],
)
def test_what_the_direct_path_does_not_take_django_answers(
    body: Any, extra: Headers, django_answers: list[object]
) -> None:
    served, alone = both_ways(body, *extra)

    assert not served_directly(django_answers, 0)
    assert served.status == alone.status
    if served.status >= 400:
        assert served.body == alone.body
    if served.status >= 400:
        assert Job.objects.count() == 0


@pytest.mark.django_db(transaction=True)
@postgres_only
@pytest.mark.usefixtures("open_mode")
def test_a_body_sent_in_pieces_and_other_requests_reach_django_intact(
    django_answers: list[object],
) -> None:
    body = json.dumps({"user_id": "alice", "input": list(range(200))}).encode()
    served, alone = both_ways(body, chunks=7)
    assert served_directly(django_answers, 0) and served.status == 201
    assert served.json()["input"] == list(range(200))

    # A host Django refuses, a type it does not parse, a prefix, the wrong length.
    cases: list[tuple[dict[str, Any], Headers]] = [
        ({"host": b"evil.example"}, ()),
        ({"root_path": "/gateway"}, ()),
        ({}, ((b"content-type", b"text/plain"),)),
    ]
    for options, extra in cases:
        before = len(django_answers)
        raw = json.dumps({"user_id": "alice", "input": 1}).encode()
        headers = (
            extra + ((b"content-length", str(len(raw)).encode()),) if extra else json_headers(raw)
        )

        async def run(
            r: bytes = raw, h: Headers = headers, o: dict[str, Any] = options
        ) -> tuple[Answer, Answer]:
            return (
                await send_request(application, r, h, **o),
                await send_request(application.app, r, h, **o),
            )

        served, alone = asyncio.run(run())
        assert len(django_answers) - before == 2, options
        assert served.status == alone.status
        if served.status >= 400:
            assert served.body == alone.body


@pytest.mark.django_db(transaction=True)
@postgres_only
@pytest.mark.usefixtures("open_mode")
def test_a_submit_with_an_idempotency_key_is_django_s(django_answers: list[object]) -> None:
    key = (b"idempotency-key", b"k1")
    served, alone = both_ways({"user_id": "alice", "input": 1}, key)
    assert len(django_answers) == 2  # both went to Django
    assert (served.status, alone.status) == (201, 200)
    assert served.json()["id"] == alone.json()["id"]
    assert Job.objects.count() == 1


@pytest.mark.django_db(transaction=True)
@postgres_only
@pytest.mark.usefixtures("token_mode")
def test_with_a_token_the_direct_path_acts_for_its_user_only(
    make_user: Any, django_answers: list[object]
) -> None:
    alice = make_user("alice")
    make_user("bob")
    auth = (b"authorization", f"Token {Token.objects.get(user=alice).key}".encode())

    served, alone = both_ways({"input": 1}, auth)
    assert served_directly(django_answers, 0)
    assert_same_answer(served, alone)
    assert served.json()["user_id"] == "alice"

    seen = len(django_answers)
    served, alone = both_ways({"user_id": "alice", "input": 2}, auth)
    assert served_directly(django_answers, seen) and served.status == 201

    # Acting for another user needs a permission: Django checks it (403).
    seen = len(django_answers)
    served, alone = both_ways({"user_id": "bob", "input": 3}, auth)
    assert not served_directly(django_answers, seen)
    assert (served.status, served.body) == (alone.status, alone.body) and served.status == 403

    # Without a token, with an unknown one, or a malformed header: DRF's 401s.
    for header in [(), ((b"authorization", b"Token nope"),), ((b"authorization", b"Token"),)]:
        seen = len(django_answers)
        served, alone = both_ways({"input": 4}, *header)
        assert not served_directly(django_answers, seen)
        assert (served.status, served.body) == (alone.status, alone.body) == (401, alone.body)

    # A deactivated user's token: refused as DRF refuses it.
    User.objects.filter(username="alice").update(is_active=False)
    seen = len(django_answers)
    served, alone = both_ways({"input": 5}, auth)
    assert not served_directly(django_answers, seen)
    assert (served.status, served.body) == (alone.status, alone.body) and served.status == 401
    assert Job.objects.filter(owner=alice).count() == 4


@pytest.mark.django_db(transaction=True)
@postgres_only
@pytest.mark.usefixtures("open_mode")
def test_refusals_by_the_submit_call_are_phrased_by_django_and_queue_nothing(
    settings: Any, make_user: Any, django_answers: list[object]
) -> None:
    make_user("gone-quiet", is_active=False)
    served, alone = both_ways({"user_id": "gone-quiet", "input": 1})
    assert not served_directly(django_answers, 0)
    assert (served.status, served.body) == (alone.status, alone.body) and served.status == 403

    settings.ZYPHER_MAX_QUEUED_PER_USER = 1
    seen = len(django_answers)
    served, alone = both_ways({"user_id": "capped", "input": 1})
    assert served_directly(django_answers, seen) and served.status == 201
    assert alone.status == 429  # the direct answer's job took the one place
    seen = len(django_answers)
    served, alone = both_ways({"user_id": "capped", "input": 2})
    assert not served_directly(django_answers, seen)
    assert (served.status, served.body) == (alone.status, alone.body) and served.status == 429
    assert Job.objects.filter(owner__username="capped").count() == 1


@pytest.mark.django_db(transaction=True)
@postgres_only
@pytest.mark.usefixtures("open_mode")
def test_production_headers_and_the_https_redirect_are_django_s(
    settings: Any, django_answers: list[object]
) -> None:
    settings.SECURE_HSTS_SECONDS = 3600
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_SSL_REDIRECT = True
    proxied = (b"x-forwarded-proto", b"https")
    # Django's middleware reads these settings when its chain is built: a new one.
    app = DirectSubmit(OneHopASGIHandler())

    served, alone = both_ways({"user_id": "alice", "input": 1}, proxied, app=app)
    assert served_directly(django_answers, 0)
    assert_same_answer(served, alone)
    assert (b"strict-transport-security", b"max-age=3600; includeSubDomains") in served.headers
    assert served.json()["url"].startswith("https://127.0.0.1/")

    seen = len(django_answers)
    served, alone = both_ways({"user_id": "alice", "input": 1}, app=app)  # http: redirected
    assert not served_directly(django_answers, seen)
    assert served.status == alone.status == 301
    close_connections(app)


@pytest.mark.django_db(transaction=True)
@postgres_only
@pytest.mark.usefixtures("open_mode")
def test_submits_at_once_through_the_direct_path_keep_the_cap_and_the_counts_exact(
    settings: Any, django_answers: list[object]
) -> None:
    settings.ZYPHER_MAX_QUEUED_PER_USER = 20

    async def many() -> list[Answer]:
        bodies = [json.dumps({"user_id": "crowd", "input": n}).encode() for n in range(60)]
        return await asyncio.gather(
            *(send_request(application, body, json_headers(body)) for body in bodies)
        )

    answers = asyncio.run(many())

    statuses = sorted(answer.status for answer in answers)
    assert statuses == [201] * 20 + [429] * 40
    jobs = Job.objects.filter(owner__username="crowd")
    assert jobs.count() == 20
    assert sorted(jobs.values_list("input", flat=True)) == sorted(
        answer.json()["input"] for answer in answers if answer.status == 201
    )
    account = FairShareAccount.objects.get(user__username="crowd")
    assert account.queued_count == 20


_WEB_BACKENDS = "FROM pg_stat_activity WHERE application_name = 'zypher-web'"


async def _cut_the_waiting_call(watcher: psycopg.Connection[Any]) -> int:
    """Terminate the direct path's backend once it waits on a row lock (polled without
    blocking the event loop, which runs the call)."""
    for _ in range(400):
        waiting = watcher.execute(f"SELECT count(*) {_WEB_BACKENDS} AND wait_event_type = 'Lock'")
        if waiting.fetchone()[0]:  # type: ignore[index]
            cut = watcher.execute(
                f"SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) {_WEB_BACKENDS}"
            )
            return int(cut.fetchone()[0])  # type: ignore[index]
        await asyncio.sleep(0.025)
    raise AssertionError("the submit's call never waited on the lock")


@pytest.mark.django_db(transaction=True)
@postgres_only
@pytest.mark.usefixtures("open_mode")
def test_a_connection_lost_under_the_call_is_a_503_and_never_a_second_job() -> None:
    def body(n: int) -> bytes:
        return json.dumps({"user_id": "alice", "input": n}).encode()

    async def run() -> list[Answer]:
        first = await send_request(application, body(1), json_headers(body(1)))
        # Another session holds alice's row: the next submit's call waits inside it,
        # and its connection is cut there.
        with (
            psycopg.connect(**listener_conninfo()) as blocker,
            psycopg.connect(**listener_conninfo(), autocommit=True) as watcher,
        ):
            blocker.execute("SELECT 1 FROM jobs_user WHERE username = 'alice' FOR UPDATE")
            call = asyncio.ensure_future(send_request(application, body(2), json_headers(body(2))))
            assert await _cut_the_waiting_call(watcher) >= 1
            lost = await call
            blocker.rollback()
        again = await send_request(application, body(3), json_headers(body(3)))
        return [first, lost, again]

    first, lost, again = asyncio.run(run())

    assert first.status == 201 and again.status == 201
    # As Django answers an outage: 503, Retry-After, the API's JSON error.
    assert (lost.status, lost.json()) == (503, {"error": UNAVAILABLE_MESSAGE})
    assert (b"retry-after", RETRY_AFTER_SECONDS.encode()) in lost.headers
    assert sorted(cast(list[int], list(Job.objects.values_list("input", flat=True)))) == [1, 3]
    assert FairShareAccount.objects.get(user__username="alice").queued_count == 2


@pytest.mark.django_db(transaction=True)  # Django answers in a thread of its own
@pytest.mark.usefixtures("open_mode")
def test_on_sqlite_or_when_turned_off_django_answers_every_submit(
    settings: Any, django_answers: list[object]
) -> None:
    settings.ZYPHER_DIRECT_SUBMIT = False
    raw = json.dumps({"user_id": "alice", "input": 1}).encode()
    answer = asyncio.run(send_request(application, raw, json_headers(raw)))
    assert answer.status == 201
    assert len(django_answers) == 1
