"""Refuse oversize API bodies with a JSON 413 before anything reads them, and answer a
database outage anywhere (admin, sessions, pages, the API) with a 503, not a 500."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import sys
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from asgiref.sync import (
    ThreadSensitiveContext,
    iscoroutinefunction,
    markcoroutinefunction,
    sync_to_async,
)
from django.conf import settings
from django.contrib.auth.middleware import (
    AuthenticationMiddleware as DjangoAuthenticationMiddleware,
)
from django.contrib.messages.middleware import MessageMiddleware as DjangoMessageMiddleware
from django.contrib.messages.storage import default_storage
from django.contrib.sessions.middleware import SessionMiddleware as DjangoSessionMiddleware
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import BaseHandler
from django.core.signals import got_request_exception
from django.dispatch import Signal
from django.http import (
    FileResponse,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseForbidden,
    JsonResponse,
)
from django.middleware.clickjacking import XFrameOptionsMiddleware as DjangoXFrameOptionsMiddleware
from django.middleware.common import CommonMiddleware as DjangoCommonMiddleware
from django.middleware.csrf import CsrfViewMiddleware as DjangoCsrfViewMiddleware
from django.middleware.security import SecurityMiddleware as DjangoSecurityMiddleware
from django.urls import Resolver404, get_resolver, set_script_prefix
from django.utils.deprecation import MiddlewareMixin
from django.utils.functional import SimpleLazyObject, empty
from whitenoise.middleware import (  # type: ignore[import-untyped]
    WhiteNoiseMiddleware as PlainWhiteNoiseMiddleware,
)

from jobs.api.errors import UNAVAILABLE_MESSAGE, database_unavailable, forget_connections

RETRY_AFTER_SECONDS = "5"
# Request threads kept idle per web worker between requests (OneHopASGIHandler).
IDLE_REQUEST_THREADS = 32

Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith(("/api/", "/predict"))


def unavailable_response(request: HttpRequest) -> HttpResponse:
    """503 with Retry-After: JSON for the API, a line of text for pages."""
    response: HttpResponse
    if _is_api(request):
        response = JsonResponse({"error": UNAVAILABLE_MESSAGE}, status=503)
    else:
        response = HttpResponse(
            UNAVAILABLE_MESSAGE + "\n", status=503, content_type="text/plain; charset=utf-8"
        )
    response["Retry-After"] = RETRY_AFTER_SECONDS
    return response


def _note_database_outage(sender: Any, request: HttpRequest | None = None, **kwargs: Any) -> None:
    # An exception raised inside another middleware (a session saved after the view, the
    # user loaded for the admin) never reaches `process_exception`: Django turns it into
    # a 500 at that layer. The signal still sees it; mark the request for __call__ below.
    exc = sys.exc_info()[1]
    if request is not None and exc is not None and database_unavailable(exc):
        request._zypher_database_unavailable = True  # type: ignore[attr-defined]


got_request_exception.connect(_note_database_outage, dispatch_uid="zypher-database-outage")


class ApiErrorMiddleware:
    """Sync and async capable: in Django's asynchronous chain (the `async def` views) it
    runs on the event loop instead of costing a hop to a thread and back."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        refusal = self.refuse_body(request)
        if refusal is not None:
            return refusal
        response = self.get_response(request)
        if self.database_failed(request, response):
            forget_connections()
            return unavailable_response(request)
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        refusal = self.refuse_body(request)
        if refusal is not None:
            return refusal
        response = await self.get_response(request)
        if self.database_failed(request, response):
            await sync_to_async(forget_connections, thread_sensitive=True)()
            return unavailable_response(request)
        return response

    @staticmethod
    def refuse_body(request: HttpRequest) -> HttpResponse | None:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return JsonResponse({"error": "Content-Length is not a number."}, status=400)
        if length > settings.ZYPHER_MAX_BODY_BYTES:
            return JsonResponse(
                {
                    "error": f"Request body of {length} bytes is over the limit of "
                    f"{settings.ZYPHER_MAX_BODY_BYTES} bytes."
                },
                status=413,
            )
        return None

    @staticmethod
    def database_failed(request: HttpRequest, response: HttpResponse) -> bool:
        return response.status_code == 500 and getattr(
            request, "_zypher_database_unavailable", False
        )

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        # A database outage outside DRF views (admin, sessions, pages) is a 503, not a traceback.
        if database_unavailable(exception):
            forget_connections()
            return unavailable_response(request)
        return None


# --- Django's middleware on the event loop (the chain of `async def` views) -------------
#
# Django's MiddlewareMixin.__acall__ runs every process_request and process_response in a
# thread (two hops per middleware). Those of the middleware below only read and write the
# request and the response, except where they touch the database (a session or messages
# saved, a CSRF secret kept in the session), and there they still go to the thread.


class EventLoopMiddleware(MiddlewareMixin):
    """A MiddlewareMixin whose hooks run on the event loop in the asynchronous chain."""

    def request_needs_thread(self, request: HttpRequest) -> bool:
        return False

    def response_needs_thread(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        return False

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response = None
        process_request = getattr(self, "process_request", None)
        if process_request is not None:
            if self.request_needs_thread(request):
                response = await sync_to_async(process_request, thread_sensitive=True)(request)
            else:
                response = process_request(request)
        response = response or await self.get_response(request)  # type: ignore[misc]
        process_response = getattr(self, "process_response", None)
        if process_response is not None:
            if self.response_needs_thread(request, response):
                response = await sync_to_async(process_response, thread_sensitive=True)(
                    request, response
                )
            else:
                response = process_response(request, response)
        return response


class SecurityMiddleware(EventLoopMiddleware, DjangoSecurityMiddleware):
    pass


class CommonMiddleware(EventLoopMiddleware, DjangoCommonMiddleware):
    pass


class XFrameOptionsMiddleware(EventLoopMiddleware, DjangoXFrameOptionsMiddleware):
    pass


class AuthenticationMiddleware(EventLoopMiddleware, DjangoAuthenticationMiddleware):
    """Sets the lazy `request.user`; loading it (the session, the user row) is the view's."""


class SessionMiddleware(EventLoopMiddleware, DjangoSessionMiddleware):
    """The session store is lazy; only saving it (a modified session) needs the database."""

    def response_needs_thread(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        session = getattr(request, "session", None)
        return session is not None and (session.modified or settings.SESSION_SAVE_EVERY_REQUEST)


class MessageMiddleware(EventLoopMiddleware, DjangoMessageMiddleware):
    """Messages neither read nor added are not stored (the fallback store is the session).

    The storage is built when first touched: the API never touches it, and building it
    (a cookie signer and the fallback's two stores) was ~0.04 ms of every request.
    """

    def process_request(self, request: HttpRequest) -> None:
        request._messages = SimpleLazyObject(lambda: default_storage(request))  # type: ignore[attr-defined]

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if _untouched(getattr(request, "_messages", None)):
            return response  # nothing read or added: nothing to store
        return super().process_response(request, response)

    def response_needs_thread(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        storage = getattr(request, "_messages", None)
        if storage is None or _untouched(storage):
            return False
        return bool(storage.used or storage.added_new)


def _untouched(storage: object) -> bool:
    # isinstance looks at the proxy's own type; `_wrapped` is read without building it.
    return isinstance(storage, SimpleLazyObject) and storage._wrapped is empty  # type: ignore[attr-defined]


class CsrfViewMiddleware(EventLoopMiddleware, DjangoCsrfViewMiddleware):
    """The secret is in a cookie unless CSRF_USE_SESSIONS keeps it in the session."""

    def request_needs_thread(self, request: HttpRequest) -> bool:
        return bool(settings.CSRF_USE_SESSIONS)

    def response_needs_thread(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        return bool(settings.CSRF_USE_SESSIONS)

    def process_view(
        self,
        request: HttpRequest,
        callback: Callable[..., Any],
        callback_args: tuple[Any, ...],
        callback_kwargs: dict[str, Any],
    ) -> HttpResponseForbidden | None:
        return super().process_view(request, callback, callback_args, callback_kwargs)

    process_view.runs_on_event_loop = True  # type: ignore[attr-defined]


class WhiteNoiseMiddleware(PlainWhiteNoiseMiddleware):
    """WhiteNoise, async capable: a path that is no static file passes on the event loop
    (the asynchronous chain only carries `async def` views' paths); a file is served from
    a thread."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        super().__init__(get_response)
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        return super().__call__(request)

    async def __acall__(self, request: HttpRequest) -> Any:
        if self.autorefresh:  # a look at the disk (DEBUG); the next layer is awaited here
            static_file = await sync_to_async(self.find_file, thread_sensitive=True)(
                request.path_info
            )
        else:
            static_file = self.files.get(request.path_info)
        if static_file is not None:
            return await sync_to_async(self.serve, thread_sensitive=True)(static_file, request)
        return await self.get_response(request)


class RequestThread(ThreadPoolExecutor):
    """A request's one thread, which notes whether the request used it."""

    used = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.used = True
        return super().submit(fn, *args, **kwargs)


_request_thread: contextvars.ContextVar[RequestThread] = contextvars.ContextVar("request_thread")


def _has_async_receivers(signal: Signal, sender: Any) -> bool:
    # Signal.send runs `async def` receivers through async_to_sync, which refuses the
    # event loop's thread: with any connected, the signal is sent as Django sends it.
    # Asked of every receiver, whatever its sender: a look at a short list, where asking
    # for `sender`'s live receivers cost ~0.03 ms a request (a lock, weak references).
    return any(is_async for _key, _receiver, is_async in signal.receivers)


def _on_event_loop(method: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    async def call(*args: Any) -> Any:
        return method(*args)

    return call


class OneHopASGIHandler(ASGIHandler):
    """Django's ASGI handler with one thread hop per request to a synchronous view, on a
    reused thread.

    Django's own handler runs the middleware chain on the event loop and adapts every
    synchronous piece to it: each `process_request`/`process_response` of the built-in
    middleware (sessions, CSRF, auth, messages, ...), WhiteNoise, this module's
    middleware and the view each paid a hop to a thread and back (17 per `GET
    /api/health/`, measured with `python -m bench.bench_http --profile`). Here a request
    whose view is synchronous (the API, the admin, the pages) runs the request_started
    signal, the whole synchronous chain (exactly as under WSGI) and, for a response that
    is not streamed, its close (request_finished, which gives the database connection
    back to the pool) in one hop to the request's thread. A request whose view is `async
    def` (/predict, the job events, `GET /api/health/`) runs Django's asynchronous chain
    on the event loop with no hop at all (`handle_on_event_loop`): the middleware in
    MIDDLEWARE are this module's event-loop versions, which go to the request's thread
    only for what touches the database (tests/api/test_thread_hops.py).

    Django also starts a thread for every request (a ThreadSensitiveContext with a new
    one-thread executor) and joins it in one more new thread at the end: 0.7 ms of the
    1.6 ms a trivial view took in process (issue 16). Here each request borrows a
    one-thread executor from a free list instead, so its synchronous parts still share
    one thread (thread-local database connections stay with the request), as a WSGI
    worker's thread serves one request after another.
    """

    def __init__(self) -> None:
        super().__init__()
        self._idle_executors: list[RequestThread] = []

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=is_async)
        self._sync_handler = BaseHandler()
        self._sync_handler.load_middleware(is_async=False)

    def adapt_method_mode(
        self,
        is_async: bool,
        method: Any,
        method_is_async: bool | None = None,
        debug: bool = False,
        name: str | None = None,
    ) -> Any:
        # A view hook marked safe for the loop (CSRF's process_view) is called there.
        if (
            is_async
            and getattr(method, "runs_on_event_loop", False)
            and not iscoroutinefunction(method)
            and not settings.CSRF_USE_SESSIONS
        ):
            return _on_event_loop(method)
        return super().adapt_method_mode(is_async, method, method_is_async, debug, name)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        # Only the event loop's thread touches the free list, so it needs no lock.
        executor = (
            self._idle_executors.pop()
            if self._idle_executors
            else RequestThread(max_workers=1, thread_name_prefix="zypher-request")
        )
        executor.used = False
        token = _request_thread.set(executor)
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            _request_thread.reset(token)
            if len(self._idle_executors) < IDLE_REQUEST_THREADS:
                self._idle_executors.append(executor)
            else:
                # A burst (a thousand waiting /predict calls) leaves no crowd of idle
                # threads behind; the thread ends by itself once its last call returns.
                executor.shutdown(wait=False)

    async def handle(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        script_name = get_script_prefix(scope)
        path_info = scope["path"].removeprefix(script_name) if script_name else scope["path"]
        if _view_is_async(settings.ROOT_URLCONF, path_info):
            await self.handle_on_event_loop(scope, receive, send)
            return
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(script_name)
        request, error_response = self.create_request(scope, body_file)

        def respond() -> HttpResponseBase:
            signals.request_started.send(sender=self.__class__, scope=scope)
            response = (
                self._sync_handler.get_response(request) if request is not None else error_response
            )
            assert response is not None
            response._handler_class = self.__class__  # type: ignore[attr-defined]
            if isinstance(response, FileResponse):
                response.block_size = self.chunk_size
            if not response.streaming:
                # The body is in memory: finish the request (request_finished) here,
                # in the thread that holds its database connection, before sending.
                response.close()
            return response

        response = await sync_to_async(respond, thread_sensitive=True)()
        try:
            await self.send_response(response, send)
        except asyncio.CancelledError:
            pass  # the client went away while the response was sent
        finally:
            if response.streaming:
                await sync_to_async(response.close, thread_sensitive=True)()
            body_file.close()

    async def handle_on_event_loop(
        self, scope: dict[str, Any], receive: Receive, send: Send
    ) -> None:
        """Django's ASGIHandler.handle for an `async def` view, less its two hops.

        Django sends request_started, and closes the response (request_finished), in the
        request's thread. Their receivers (close_old_connections, reset_queries,
        close_caches, reset_urlconf) act on the calling thread's connections: the
        request's thread holds one only if the request ran something there, so only then
        does the close go to it; otherwise both run here, where there is no connection to
        close (the ORM refuses to run on the event loop).
        """
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        if _has_async_receivers(signals.request_started, self.__class__):
            # As Django sends it: the sync receivers in the request's thread.
            await signals.request_started.asend(sender=self.__class__, scope=scope)
        else:
            signals.request_started.send(sender=self.__class__, scope=scope)
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            assert error_response is not None
            body_file.close()
            await self.send_response(error_response, send)
            await self._finish(error_response)
            return

        async def process_request(request: HttpRequest) -> HttpResponseBase:
            response = await self.run_get_response(request)
            with contextlib.suppress(asyncio.CancelledError):  # the client went away
                await self.send_response(response, send)
            return response

        # As Django does: a client that goes away cancels the view (a waiting /predict).
        responder = asyncio.create_task(process_request(request))
        tasks: list[asyncio.Task[Any]] = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            responder,
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    pass
                except AssertionError:
                    body_file.close()
                    raise
            else:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        try:
            response = responder.result()
        except asyncio.CancelledError:
            if _request_thread.get().used or _has_async_receivers(
                signals.request_finished, self.__class__
            ):
                await signals.request_finished.asend(sender=self.__class__)
            else:
                signals.request_finished.send(sender=self.__class__)
        else:
            await self._finish(response)
        body_file.close()

    @staticmethod
    async def _finish(response: HttpResponseBase) -> None:
        if _request_thread.get().used or _has_async_receivers(
            signals.request_finished, getattr(response, "_handler_class", None)
        ):
            await sync_to_async(response.close, thread_sensitive=True)()
        else:
            response.close()


@functools.lru_cache(maxsize=4096)
def _view_is_async(urlconf: str, path: str) -> bool:
    # Cached per path (job ids make many, hence the bound); the URLconf does not change
    # while a server runs.
    try:
        match = get_resolver(urlconf).resolve(path)
    except Resolver404:
        return False
    return iscoroutinefunction(match.func)
