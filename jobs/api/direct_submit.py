"""`POST /api/jobs/` for one plain job, answered on the event loop (issue 16).

Through Django a single submit cost the web worker about 3.5 ms of CPU more than `GET
/api/health/` (py-spy, README "Performance"): Django's synchronous chain in the request's
thread, DRF's dispatch, the view, the thread hop. `DirectSubmit` is an ASGI application
in front of Django that answers the common submit itself: a JSON object that
`lean_submit_item` takes, sent with a token (`Authorization: Token …`) or, in open mode,
naming its user, with no Idempotency-Key, cookie, query string or submit rate limit. It
runs the very call Django's view runs (`jobs.queue.submit_statement`, one zypher_submit)
on an async psycopg connection of its own, and answers the status, headers and bytes
Django would: the response passes through the same middleware's `process_response`
(tests/api/test_direct_submit.py sends each request both ways and compares them).

Everything else goes to Django unchanged, the body read so far replayed: another method
or path, SQLite, any header or body this path does not take, and every refusal
(zypher_submit queues nothing when it refuses: the user deactivated, the queue cap), so
each error is phrased where it always was. Once the call may have queued a job, the
answer is this path's own: a lost connection is the 503 Django gives for an outage, never
a second submit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import psycopg
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.signals import setting_changed
from django.db import DEFAULT_DB_ALIAS, connections, models
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse, QueryDict
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.common import CommonMiddleware
from django.middleware.security import SecurityMiddleware
from django.urls import get_resolver, set_script_prefix
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.renderers import JSONRenderer
from rest_framework.settings import api_settings

from jobs.api.connection_check import RECENT_SECONDS, has_input
from jobs.api.errors import READ_ONLY_SQLSTATE, UNAVAILABLE_MESSAGE
from jobs.api.middleware import RETRY_AFTER_SECONDS
from jobs.api.serializers import (
    USER_ID_PATTERN,
    JobSerializer,
    JobSubmitSerializer,
    lean_submit_item,
)
from jobs.models import Job, User
from jobs.notifications import listener_conninfo
from jobs.queue import (
    NamedUser,
    OwnerDeactivated,
    OwnerDeleted,
    QueueLimitReached,
    raise_submit_refusal,
    submit_statement,
)

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[..., Awaitable[None]]

# The middleware this path stands in for, as zypher/settings.py lists them. With any
# other list the path is off: it cannot know what another middleware would have done.
STANDS_IN_FOR = [
    "jobs.api.middleware.ApiErrorMiddleware",
    "jobs.api.middleware.SecurityMiddleware",
    "jobs.api.middleware.WhiteNoiseMiddleware",
    "jobs.api.middleware.SessionMiddleware",
    "jobs.api.middleware.CommonMiddleware",
    "jobs.api.middleware.CsrfViewMiddleware",
    "jobs.api.middleware.AuthenticationMiddleware",
    "jobs.api.middleware.MessageMiddleware",
    "jobs.api.middleware.XFrameOptionsMiddleware",
]

AUTHENTICATES_AS = [TokenAuthentication, SessionAuthentication]

# The largest body this path takes; a larger one goes to Django. Its parsing, checking
# and rendering run on the event loop, where every other request of the worker waits
# meanwhile: over a second for a body near ZYPHER_MAX_BODY_BYTES, a few ms at this size.
DIRECT_MAX_BODY_BYTES = 64 * 1024

# Hosts whose job URL is kept (ALLOWED_HOSTS may be a pattern).
MAX_HOSTS = 64

# Connections per web worker: a submit holds one for one round trip.
CONNECTIONS = 4
# The longest the check of a kept connection may take (one empty round trip) before the
# connection is replaced: nothing of the submit has been sent yet.
CHECK_SECONDS = 2.0
# How long a call waits for one of them before Django answers instead (with its own
# pool): calls stuck on a row lock must not hold up every other user's submit.
SLOT_WAIT_SECONDS = 0.25
APPLICATION_NAME = "zypher-web"

_JSON = (b"application/json", b"application/json; charset=utf-8", b"application/json;charset=utf-8")
_ACCEPTED = (b"*/*", b"application/json")
# The headers this path reads; one sent twice sends the request to Django.
_READ = frozenset(
    {b"content-type", b"content-length", b"accept", b"authorization", b"x-user-id", b"host"}
)
# Headers whose presence alone sends the request to Django: a session (auth, CSRF),
# a repeated-submit key, a client's preference for the browsable API's format.
_TO_DJANGO = frozenset({b"cookie", b"idempotency-key"})
_USER_ID = re.compile(USER_ID_PATTERN)

_TOKEN_OWNER = (
    f"SELECT u.id, u.username, u.is_active FROM {Token._meta.db_table} t "
    f"JOIN {User._meta.db_table} u ON u.id = t.user_id WHERE t.key = %s"
)


class DirectSubmit:
    """The ASGI application: the common submit here, anything else to `app` (Django)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.connections = EventLoopConnections(CONNECTIONS)
        self._path: str | None = None
        self._serializers: dict[tuple[str | None, str], JobSerializer] = {}

    @property
    def path(self) -> str:
        if self._path is None:
            # The URLconf's path, without any script prefix (this path serves none).
            self._path = "/" + get_resolver().reverse("job-list")
        return self._path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and not scope.get("query_string")
            and not scope.get("root_path")
            and scope["path"] == self.path
            and enabled()
        ):
            await self.app(scope, receive, send)
            return
        read: list[Message] = []
        body = await read_body(receive, read)
        if body is None:  # over this path's limit, or the client went away: Django's to answer
            await self.app(scope, replay(read, receive), send)
            return
        response = await self.answer(scope, body)
        if response is None:
            await self.app(scope, replay(read, receive), send)
            return
        await send_response(response, send)

    async def answer(self, scope: Scope, body: bytes) -> HttpResponse | None:
        """The response to a submit this path takes, or None: Django's to answer."""
        headers = read_headers(scope)
        if headers is None:
            return None
        set_script_prefix("/")  # as Django sets it for a request without a root_path
        request = FrontRequest(scope, headers)
        try:
            host = request.get_host()  # ALLOWED_HOSTS, as Django checks it
        except DisallowedHost:
            return None
        if settings.SECURE_SSL_REDIRECT and not request.is_secure():
            return None  # Django redirects it
        item = plain_item(headers, body)
        if item is None:
            return None
        named = item.get("user_id")
        token = headers.get(b"authorization")
        try:
            if token is None:
                if not settings.ZYPHER_OPEN_MODE:
                    return None
                name = named or headers.get(b"x-user-id", b"").decode("latin-1") or "anonymous"
                if not _USER_ID.fullmatch(name):
                    return None
                owner: User | NamedUser = NamedUser(name)
            else:
                found = await self.token_owner(token)
                # An unknown token, another user named (a permission to check) or a
                # deactivated user: DRF's refusals.
                if found is None or (named and named != found.username):
                    return None
                owner = found
        except (psycopg.Error, NotConnected):
            return None  # nothing was queued: Django answers (the 503 of an outage)
        spec = JobSubmitSerializer.spec_from(item)
        public_id, now = uuid.uuid4(), timezone.now()
        sql, params = submit_statement(owner, [spec], [None], [public_id], now)
        try:
            rows = await self.connections.run(sql, params)
        except NotConnected:
            return None  # nothing was sent: Django answers (the 503 of an outage)
        except psycopg.OperationalError:
            # The call may have committed before the connection was lost: never again.
            logger.warning("direct submit: connection lost during the call", exc_info=True)
            # As the view's exception handler answers it (DRF's 503, not the middleware's).
            unavailable = {"error": UNAVAILABLE_MESSAGE}
            retry = {"Retry-After": RETRY_AFTER_SECONDS}
            return api_response(request, unavailable, 503, token is not None, retry)
        except psycopg.Error:
            return None  # refused by the database: nothing queued; Django phrases it
        try:
            raise_submit_refusal(rows, owner, 1)
        except (OwnerDeactivated, OwnerDeleted, QueueLimitReached):
            return None  # nothing queued (deactivated, at the cap): Django phrases it
        job = QueuedJob(
            public_id, owner, spec.kind, spec.input, spec.device_type, spec.priority, now
        )
        data = self.serializer(request, host).to_representation(cast(Job, job))
        return api_response(request, data, 201, token is not None)

    def serializer(self, request: FrontRequest, host: str) -> JobSerializer:
        """A JobSerializer for responses to `host`, kept: it reverses the job URL once."""
        # The scheme as Django reads it (behind a proxy, its header): the URL's own.
        key = (request.scheme, host)
        serializer = self._serializers.get(key)
        if serializer is None:
            serializer = JobSerializer(context={"request": request})
            if len(self._serializers) < MAX_HOSTS:
                self._serializers[key] = serializer
        return serializer

    async def token_owner(self, header: bytes) -> User | None:
        """The active user of `Authorization: Token <key>`, else None."""
        parts = header.split()
        if len(parts) != 2 or parts[0].lower() != b"token":
            return None
        try:
            key = parts[1].decode()
        except UnicodeDecodeError:
            return None
        rows = await self.connections.run(_TOKEN_OWNER, [key])
        if not rows or not rows[0][2]:
            return None
        user_id, username, _active = rows[0]
        return User.from_db("default", ["id", "username", "is_active"], [user_id, username, True])


ALLOW = "GET, POST, HEAD, OPTIONS"


def api_response(
    request: FrontRequest,
    data: Any,
    status: int,
    token: bool,
    headers: dict[str, str] | None = None,
) -> HttpResponse:
    """The view's answer as DRF and the middleware give it: JSON, `headers`, Vary, Allow."""
    response = HttpResponse(
        JSONRenderer().render(data), status=status, content_type="application/json"
    )
    for name, value in (headers or {}).items():
        response[name] = value
    # As Django's answer varies: DRF by Accept; the session, read to authenticate a
    # request without a token, by Cookie.
    patch_vary_headers(response, ("Accept",) if token else ("Accept", "Cookie"))
    response["Allow"] = ALLOW
    return finish(response, request)


def _default(name: str) -> Any:
    field = Job._meta.get_field(name)
    assert isinstance(field, models.Field)
    return field.get_default()


@dataclass(frozen=True)
class QueuedJob:
    """What JobSerializer reads of a job just queued: its own values, the model's defaults
    for the rest. Not a Job: building a model instance and its owner cost ~0.15 ms here."""

    public_id: uuid.UUID
    owner: User | NamedUser
    kind: str
    input: Any
    device_type: str
    priority: int
    created_at: datetime
    status: str = _default("status")
    result: Any = None
    error: str = _default("error")
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration: float | None = None
    device: str = _default("device")
    attempts: int = _default("attempts")
    progress: float | None = None
    progress_message: str = _default("progress_message")
    callback_url: str = _default("callback_url")
    callback_status: str = _default("callback_status")


_enabled: bool | None = None


def enabled() -> bool:
    """Whether this path answers: read from the settings once (again when a test changes them)."""
    global _enabled
    if _enabled is None:
        _enabled = _settings_allow()
    return _enabled


@receiver(setting_changed)
def _forget_settings(**kwargs: Any) -> None:
    global _enabled, _RESPONSE_MIDDLEWARE
    _enabled = _RESPONSE_MIDDLEWARE = None


def _settings_allow() -> bool:
    return (
        settings.ZYPHER_DIRECT_SUBMIT
        and settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
        and settings.MIDDLEWARE == STANDS_IN_FOR
        and not any(api_settings.DEFAULT_THROTTLE_RATES.values())
        # DRF as this path reads a request and renders its answer: a token, else the
        # session (no cookie: anonymous), and JSON for a client's */*.
        and list(api_settings.DEFAULT_AUTHENTICATION_CLASSES) == AUTHENTICATES_AS
        and list(api_settings.DEFAULT_RENDERER_CLASSES)[:1] == [JSONRenderer]
        and not settings.DISALLOWED_USER_AGENTS
        and not settings.PREPEND_WWW
        and settings.FORCE_SCRIPT_NAME is None
    )


def read_headers(scope: Scope) -> dict[bytes, bytes] | None:
    """The headers this path reads, or None if the request is Django's."""
    headers: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in _TO_DJANGO:
            return None
        if name in _READ:
            if name in headers:
                return None
            headers[name] = value
    if headers.get(b"content-type", b"").lower() not in _JSON:
        return None
    if headers.get(b"accept", b"*/*") not in _ACCEPTED:
        return None
    return headers


def plain_item(headers: dict[bytes, bytes], body: bytes) -> dict[str, Any] | None:
    """The validated job of a body `lean_submit_item` takes, else None."""
    length = headers.get(b"content-length")
    # Compared as text: int() of a header of over 4,300 digits raises.
    if length != str(len(body)).encode() or not body:
        return None
    try:
        # Decoded as DRF's parser decodes it, strictly as UTF-8: json.loads of bytes would
        # also take UTF-16/32, a BOM and encoded surrogates, which Django refuses (400).
        data = json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return None
    if type(data) is not dict:
        return None
    return lean_submit_item(data)


def _refuse_constant(name: str) -> Any:
    # DRF's parser refuses NaN and Infinity (strict JSON): so does this path.
    raise ValueError(f"Invalid JSON constant {name}")


_NO_QUERY = QueryDict()


class FrontRequest(HttpRequest):
    """The little of a Django request the answer needs: host, scheme, absolute URLs and
    what the middleware's `process_response` reads."""

    def __init__(self, scope: Scope, headers: dict[bytes, bytes]) -> None:
        # Not HttpRequest.__init__: its new QueryDicts cost ~0.03 ms; the query is empty.
        self.GET = self.POST = _NO_QUERY
        self.scope_scheme = scope.get("scheme", "http")
        self.path = self.path_info = scope["path"]
        self.method = "POST"
        # As Django's ASGIRequest: without a server (a Unix socket) and a Host header,
        # get_host() sees "unknown:0", which ALLOWED_HOSTS refuses.
        server = scope.get("server") or ("unknown", "0")
        self.META = {"SERVER_NAME": server[0], "SERVER_PORT": str(server[1])}
        for name, value in scope["headers"]:
            if b"_" in name:
                continue  # as Django drops it: `x_forwarded_proto` must not pass for the dashed one
            key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
            text = value.decode("latin-1")
            self.META[key] = f"{self.META[key]},{text}" if key in self.META else text

    def _get_scheme(self) -> str:
        return self.scope_scheme


_RESPONSE_MIDDLEWARE: list[Any] | None = None


def finish(response: HttpResponse, request: FrontRequest) -> HttpResponse:
    """`response` with the headers Django's middleware gives an API response, in their order."""
    global _RESPONSE_MIDDLEWARE
    if _RESPONSE_MIDDLEWARE is None:
        _RESPONSE_MIDDLEWARE = [
            middleware(lambda request: response)
            for middleware in (XFrameOptionsMiddleware, CommonMiddleware, SecurityMiddleware)
        ]
    for middleware in _RESPONSE_MIDDLEWARE:
        response = middleware.process_response(request, response)
    return response


async def send_response(response: HttpResponse, send: Send) -> None:
    headers = [
        (name.encode("latin-1"), str(value).encode("latin-1")) for name, value in response.items()
    ]
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": response.content})


async def read_body(receive: Receive, read: list[Message]) -> bytes | None:
    """The request body, or None past this path's body limit or on a disconnect; every message
    received is kept in `read`, to be replayed to Django."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        read.append(message)
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > DIRECT_MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(read: list[Message], receive: Receive) -> Receive:
    """`receive` that gives the messages already read first."""
    pending = list(read)

    async def receive_again() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return receive_again


class NotConnected(Exception):
    """No connection could be opened, or none was free in time: nothing was sent."""


class EventLoopConnections:
    """Up to `size` autocommit psycopg connections of the running event loop, each used by
    one call at a time, the most recently used first; opened on first use.

    A connection is checked before a call as the web workers' pool checks Django's
    (jobs.api.connection_check): unchecked if given back moments ago with nothing to
    read, else with an empty query. So a session the server ended while it sat idle is
    replaced before the submit is sent on it, and a failed call can be told from a
    connection that was already dead.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.loop: asyncio.AbstractEventLoop | None = None
        self.idle: list[psycopg.AsyncConnection[Any]] = []
        self.slots = asyncio.Semaphore(size)

    def _for_this_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self.loop:
            # A new loop (a test's asyncio.run): the old loop's connections cannot be used
            # from it; their sockets are closed without it.
            self.close_all()
            self.loop = loop
            self.slots = asyncio.Semaphore(self.size)

    def close_all(self) -> None:
        """Close the idle connections (those of a finished event loop too)."""
        while self.idle:
            self.idle.pop().pgconn.finish()
        self.loop = None

    async def run(self, sql: str, params: Any) -> list[tuple[Any, ...]]:
        """The rows of `sql`; NotConnected when no connection could be had (nothing was
        sent), else the call's own error."""
        self._for_this_loop()
        if self.slots.locked():  # a timer only when the call must wait
            try:
                async with asyncio.timeout(SLOT_WAIT_SECONDS):
                    await self.slots.acquire()
            except TimeoutError:
                raise NotConnected("every connection is busy") from None
        else:
            await self.slots.acquire()
        try:
            conn = await self._checked_out()
            try:
                cursor = await conn.execute(sql, params)
                rows = await cursor.fetchall()
            except BaseException as error:
                # Refused by the database, the connection is clean (autocommit) and stays;
                # lost, cancelled inside the call, or read-only (a standby's session after
                # a failover stays one), it is closed.
                if (
                    conn.closed
                    or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
                    or getattr(error, "sqlstate", None) == READ_ONLY_SQLSTATE
                ):
                    await conn.close()
                else:
                    self._give_back(conn)
                raise
            self._give_back(conn)
            return rows
        finally:
            self.slots.release()

    async def _checked_out(self) -> psycopg.AsyncConnection[Any]:
        while self.idle:
            conn = self.idle.pop()
            if await _usable(conn):
                return conn
        try:
            return await psycopg.AsyncConnection.connect(
                autocommit=True,
                # As Django's connections: no server-side prepared statements unless
                # OPTIONS ask for them (PgBouncer in transaction mode loses them).
                prepare_threshold=connections.settings[DEFAULT_DB_ALIAS]
                .get("OPTIONS", {})
                .get("prepare_threshold"),
                **{**listener_conninfo(), "application_name": APPLICATION_NAME},
            )
        except psycopg.OperationalError as error:
            raise NotConnected(str(error)) from error

    def _give_back(self, conn: psycopg.AsyncConnection[Any]) -> None:
        conn._zypher_returned_at = time.monotonic()  # type: ignore[attr-defined]
        self.idle.append(conn)


async def _usable(conn: psycopg.AsyncConnection[Any]) -> bool:
    returned_at = getattr(conn, "_zypher_returned_at", 0.0)
    if not conn.closed and time.monotonic() - returned_at < RECENT_SECONDS and not has_input(conn):
        return True
    # psycopg-pool's own check, an empty query; bounded, as a backend that hangs (the
    # socket open, nothing answering) would hold the submit and its slot forever.
    check = asyncio.ensure_future(conn.execute(""))
    done, _ = await asyncio.wait({check}, timeout=CHECK_SECONDS)
    if done and check.exception() is None:
        return True
    # Closed first, the cancelled check ends at once (psycopg would otherwise ask the
    # server to cancel it and wait 5 s more).
    await conn.close()
    if not done:
        check.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait({check}, timeout=1)
            check.exception()  # retrieved: not logged as never retrieved
    return False
