"""Requests on which the direct submit path once answered otherwise than Django
(jobs.api.direct_submit), each sent both ways and compared, as in test_direct_submit."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Mapping
from typing import Any, cast

import psycopg
import pytest
from rest_framework.authtoken.models import Token

from jobs.api.direct_submit import CONNECTIONS, DIRECT_MAX_BODY_BYTES, DirectSubmit
from jobs.api.middleware import OneHopASGIHandler
from jobs.models import FairShareAccount, Job
from jobs.notifications import listener_conninfo
from tests.api.test_direct_submit import (  # noqa: F401 (fixtures)
    both_ways,
    close_connections,
    close_direct_connections,
)
from tests.support.asgi import Answer, json_headers, send_request
from zypher.asgi import application

pytest_plugins = ["tests.support.api_fixtures"]


PLAIN = {"user_id": "alice", "input": "é"}
RAW = json.dumps(PLAIN).encode()


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
@pytest.mark.usefixtures("open_mode")
@pytest.mark.parametrize(
    "body",
    [
        b"\xef\xbb\xbf" + RAW,  # a UTF-8 BOM
        json.dumps(PLAIN).encode("utf-16"),
        json.dumps(PLAIN).encode("utf-32"),
        # U+1F600 as two encoded surrogates (CESU-8): not UTF-8.
        b'{"user_id": "alice", "input": "\xed\xa0\xbd\xed\xb8\x80"}',
    ],
)
def test_a_body_that_is_not_utf_8_is_refused_as_django_refuses_it(body: bytes) -> None:
    served, alone = both_ways(body)

    assert (served.status, served.body) == (alone.status, alone.body)
    assert served.status == 400
    assert Job.objects.count() == 0


async def request_with(scope_changes: Mapping[str, Any], body: bytes, app: Any) -> Answer:
    """A submit whose scope differs from an ordinary one by `scope_changes`."""
    return await send_request(
        app, body, json_headers(body), host=b"localhost", scope_changes=scope_changes
    )


def scope_both_ways(changes: Mapping[str, Any], body: bytes = RAW) -> tuple[Answer, Answer]:
    async def run() -> tuple[Answer, Answer]:
        return (
            await request_with(changes, body, application),
            await request_with(changes, body, application.app),
        )

    return asyncio.run(run())


def _headers(host: bytes | None, length: bytes) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", b"application/json"), (b"content-length", length)]
    return headers + ([(b"host", host)] if host else [])


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
@pytest.mark.usefixtures("open_mode")
def test_without_a_host_header_on_a_unix_socket_the_host_is_refused_as_django_refuses_it() -> None:
    # A server on a Unix socket gives no "server"; an HTTP/1.0 request may send no Host.
    served, alone = scope_both_ways({"server": None, "headers": _headers(None, b"%d" % len(RAW))})

    assert (served.status, served.body) == (alone.status, alone.body)
    assert served.status == 400
    assert Job.objects.count() == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
@pytest.mark.usefixtures("open_mode")
@pytest.mark.parametrize("length", [b"9" * 5000, b"0" * 5000 + b"%d" % len(RAW)])
def test_a_content_length_of_thousands_of_digits_is_answered_as_django_answers_it(
    length: bytes,
) -> None:
    served, alone = scope_both_ways({"headers": _headers(b"localhost", length)})

    assert (served.status, served.body) == (alone.status, alone.body)


def _submit(user: str, n: int) -> Any:
    body = json.dumps({"user_id": user, "input": n}).encode()
    return request_with({}, body, application)


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
@pytest.mark.usefixtures("open_mode")
def test_submits_stuck_on_one_user_s_lock_do_not_hold_up_other_users(
    make_user: Any, django_answers: list[object]
) -> None:
    make_user("alice")
    stuck = CONNECTIONS + 1  # more than the direct path's connections

    async def run() -> tuple[Answer, list[Answer]]:
        # Another session holds alice's row (an operator's transaction, a long delete):
        # her submits wait inside their calls, on every connection the path has.
        with psycopg.connect(**listener_conninfo()) as blocker:
            blocker.execute("SELECT 1 FROM jobs_user WHERE username = 'alice' FOR UPDATE")
            waiting = [asyncio.ensure_future(_submit("alice", n)) for n in range(stuck)]
            await asyncio.sleep(0)
            # Bob's submit is answered meanwhile (by Django, through its own pool, when
            # the path has no connection free); a hang here is the defect.
            bob = await asyncio.wait_for(_submit("bob", 99), 60)
            blocker.rollback()
        alice = list(await asyncio.gather(*waiting))
        # Every slot is free again, a wait that timed out included: answered directly.
        for n in range(CONNECTIONS + 1):
            seen = len(django_answers)
            assert (await _submit("carol", n)).status == 201
            assert len(django_answers) == seen
        return bob, alice

    bob, alice = asyncio.run(run())

    assert bob.status == 201 and bob.json()["user_id"] == "bob"
    assert [answer.status for answer in alice] == [201] * stuck
    assert sorted(Job.objects.filter(owner__username="alice").values_list("input", flat=True)) == (
        list(range(stuck))
    )
    assert FairShareAccount.objects.get(user__username="alice").queued_count == stuck


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
@pytest.mark.usefixtures("token_mode")
@pytest.mark.parametrize(
    "change",
    [
        # Tokens no longer accepted (sessions only): a token must not submit.
        {"DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"]},
        # The browsable API first: Django answers a client's */* with HTML.
        {
            "DEFAULT_RENDERER_CLASSES": [
                "rest_framework.renderers.BrowsableAPIRenderer",
                "rest_framework.renderers.JSONRenderer",
            ]
        },
    ],
)
def test_with_other_rest_framework_classes_django_answers_every_submit(
    settings: Any, make_user: Any, change: dict[str, Any], django_answers: list[object]
) -> None:
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, **change}
    alice = make_user("alice")
    auth = (b"authorization", f"Token {Token.objects.get(user=alice).key}".encode())

    served, alone = both_ways({"input": 1}, auth)

    assert len(django_answers) == 2  # both answered by Django
    assert served.status == alone.status
    assert dict(served.headers)[b"content-type"] == dict(alone.headers)[b"content-type"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
@pytest.mark.usefixtures("open_mode")
def test_behind_a_proxy_each_submit_s_url_has_its_own_scheme(settings: Any) -> None:
    # HSTS without the redirect: a proxy sends https and http requests alike.
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    answers = []
    for proto in (b"https", b"http", b"https"):
        served, alone = both_ways(PLAIN, (b"x-forwarded-proto", proto))
        answers.append((served.json()["url"].split(":")[0], alone.json()["url"].split(":")[0]))

    assert answers == [("https", "https"), ("http", "http"), ("https", "https")]


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
@pytest.mark.usefixtures("open_mode")
def test_a_read_only_connection_is_dropped_and_the_next_submit_answered_directly(
    django_answers: list[object],
) -> None:
    async def run() -> list[Answer]:
        first = await _submit("alice", 1)
        # After a failover a kept session may be read-only for its whole life.
        for conn in application.connections.idle:
            await conn.execute("SET default_transaction_read_only = on")
        refused = await _submit("alice", 2)  # Django answers it, on a connection of its own
        seen = len(django_answers)
        again = await _submit("alice", 3)
        assert len(django_answers) == seen, "answered by Django: the read-only session was kept"
        return [first, refused, again]

    answers = asyncio.run(run())

    assert [answer.status for answer in answers] == [201, 201, 201]
    assert sorted(cast(list[int], list(Job.objects.values_list("input", flat=True)))) == [1, 2, 3]


async def _cut_when_waiting(watcher: psycopg.Connection[Any]) -> None:
    """Terminate the one backend waiting on a row lock, once it waits (polled without
    blocking the event loop, on which the served app runs its call)."""
    waiting = "FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
    for _ in range(400):
        found = watcher.execute(
            f"SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) {waiting}"
        )
        if cast(tuple[int], found.fetchone())[0]:
            return
        await asyncio.sleep(0.025)
    raise AssertionError("the submit's call never waited on the lock")


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
@pytest.mark.usefixtures("open_mode")
def test_a_connection_lost_under_the_call_is_answered_as_django_answers_it(
    make_user: Any,
) -> None:
    make_user("alice")

    async def lost(app: Any) -> Answer:
        with (
            psycopg.connect(**listener_conninfo()) as blocker,
            psycopg.connect(**listener_conninfo(), autocommit=True) as watcher,
        ):
            blocker.execute("SELECT 1 FROM jobs_user WHERE username = 'alice' FOR UPDATE")
            call = asyncio.ensure_future(request_with({}, RAW, app))
            await _cut_when_waiting(watcher)
            answer = await call
            blocker.rollback()
        return answer

    async def run() -> tuple[Answer, Answer]:
        await request_with({}, RAW, application)  # the path's connection, opened
        return await lost(application), await lost(application.app)

    served, alone = asyncio.run(run())

    assert served.status == alone.status == 503
    assert served.headers == alone.headers
    assert served.body == alone.body
    assert Job.objects.count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
@pytest.mark.usefixtures("open_mode")
def test_a_header_spelled_with_underscores_is_ignored_as_django_ignores_it(
    settings: Any,
) -> None:
    # Django drops `x_forwarded_proto` (no spoofing X-Forwarded-Proto past a proxy that
    # sets the dashed one): the http request is redirected, not answered as https.
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_SSL_REDIRECT = True
    app = DirectSubmit(OneHopASGIHandler())  # Django's middleware reads them when built
    try:
        served, alone = both_ways(PLAIN, (b"x_forwarded_proto", b"https"), app=app)
    finally:
        close_connections(app)
    assert served.status == alone.status == 301

    settings.SECURE_SSL_REDIRECT = False
    served, alone = both_ways({"input": 1}, (b"x_user_id", b"bob"))
    assert served.status == alone.status == 201
    assert served.json()["url"].startswith("http://")
    assert served.json()["user_id"] == alone.json()["user_id"] == "anonymous"


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
@pytest.mark.usefixtures("open_mode")
def test_the_path_prepares_no_statements_on_the_server_as_django_s_connections_do() -> None:
    # Django's connections prepare none unless OPTIONS say so (PgBouncer in transaction
    # mode loses them between calls); psycopg's own default prepares a query run 5 times.
    async def run() -> int:
        for n in range(8):
            assert (await _submit("alice", n)).status == 201
        counts = []
        for conn in application.connections.idle:
            cursor = await conn.execute("SELECT count(*) FROM pg_prepared_statements")
            counts.append(cast(tuple[int], await cursor.fetchone())[0])
        return sum(counts)

    assert asyncio.run(run()) == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
@pytest.mark.usefixtures("open_mode")
def test_a_large_body_is_answered_by_django_off_the_event_loop(
    django_answers: list[object],
) -> None:
    # Parsing, checking, adapting and rendering a body near ZYPHER_MAX_BODY_BYTES took
    # over a second of Python: on the event loop, every other request of the worker
    # (health checks, waiting /predict calls) stood still meanwhile. Django does it in
    # the request's thread.
    body = json.dumps({"user_id": "alice", "input": list(range(20_000))}).encode()
    assert len(body) > DIRECT_MAX_BODY_BYTES
    served, alone = both_ways(body, chunks=3)

    assert len(django_answers) == 2  # both answered by Django
    assert served.status == alone.status == 201
    assert served.json()["input"] == list(range(20_000))
    assert Job.objects.count() == 2


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
@pytest.mark.usefixtures("open_mode")
def test_submits_cancelled_inside_their_calls_leave_no_connection_or_slot_behind(
    make_user: Any, django_answers: list[object]
) -> None:
    make_user("alice")

    async def run() -> list[Answer]:
        with (
            psycopg.connect(**listener_conninfo()) as blocker,
            psycopg.connect(**listener_conninfo(), autocommit=True) as watcher,
        ):
            blocker.execute("SELECT 1 FROM jobs_user WHERE username = 'alice' FOR UPDATE")
            calls = [asyncio.ensure_future(_submit("alice", n)) for n in range(CONNECTIONS)]
            for _ in range(400):  # until every call waits on the lock
                found = watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                )
                if cast(tuple[int], found.fetchone())[0] == CONNECTIONS:
                    break
                await asyncio.sleep(0.025)
            for call in calls:  # the server shuts down, say
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
            blocker.rollback()
        seen = len(django_answers)
        after = [await _submit("bob", n) for n in range(CONNECTIONS + 1)]
        assert len(django_answers) == seen, "a slot or connection was lost"
        web = watcher_count()
        assert web <= CONNECTIONS
        return after

    def watcher_count() -> int:
        with psycopg.connect(**listener_conninfo(), autocommit=True) as conn:
            found = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'zypher-web'"
            )
            return cast(tuple[int], found.fetchone())[0]

    answers = asyncio.run(run())

    assert [answer.status for answer in answers] == [201] * (CONNECTIONS + 1)
    assert Job.objects.filter(owner__username="bob").count() == CONNECTIONS + 1
    # Each cancelled call queued its job whole or not at all, and counted what it queued.
    alice = Job.objects.filter(owner__username="alice").count()
    account = FairShareAccount.objects.filter(user__username="alice").first()
    assert (account.queued_count if account else 0) == alice


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
@pytest.mark.usefixtures("open_mode")
def test_a_kept_connection_whose_backend_hangs_is_replaced_not_waited_on_forever() -> None:
    async def run() -> Answer:
        assert (await _submit("alice", 1)).status == 201
        [conn] = application.connections.idle
        conn._zypher_returned_at = 0.0  # type: ignore[attr-defined]  # idle long: checked
        backend = conn.info.backend_pid
        os.kill(backend, signal.SIGSTOP)  # the socket stays open; nothing answers
        try:
            return await asyncio.wait_for(_submit("alice", 2), 60)
        finally:
            os.kill(backend, signal.SIGCONT)

    answer = asyncio.run(run())

    assert answer.status == 201
    assert sorted(cast(list[int], list(Job.objects.values_list("input", flat=True)))) == [1, 2]
