"""Refuse oversize API bodies with a JSON 413 before anything reads them, and answer a
database outage anywhere (admin, sessions, pages, the API) with a 503, not a 500."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import BaseHandler
from django.core.signals import got_request_exception
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.urls import Resolver404, get_resolver

from jobs.api.errors import UNAVAILABLE_MESSAGE, database_unavailable, forget_connections

RETRY_AFTER_SECONDS = "5"


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


class OneHopASGIHandler(ASGIHandler):
    """Django's ASGI handler with one thread hop per request to a synchronous view.

    Django's own handler runs the middleware chain on the event loop and adapts every
    synchronous piece to it: each `process_request`/`process_response` of the built-in
    middleware (sessions, CSRF, auth, messages, ...), WhiteNoise, this module's
    middleware and the view each paid a hop to a thread and back (17 per `GET
    /api/health/`, measured with `python -m bench.bench_http --profile`). Here a request
    whose view is synchronous (the API, the admin, the pages) runs the whole synchronous
    chain, exactly as under WSGI, in one hop to the request's thread; a request whose
    view is `async def` (/predict, which waits on the event loop) keeps Django's
    asynchronous chain. The request_started signal and the response's close (which gives
    the database connection back to the pool) stay where Django puts them, in the same
    thread as the view.
    """

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=is_async)
        self._sync_handler = BaseHandler()
        self._sync_handler.load_middleware(is_async=False)

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        if _view_is_async(request.path_info):
            return await super().get_response_async(request)
        return await sync_to_async(self._sync_handler.get_response, thread_sensitive=True)(request)


def _view_is_async(path: str) -> bool:
    try:
        match = get_resolver(settings.ROOT_URLCONF).resolve(path)
    except Resolver404:
        return False
    return iscoroutinefunction(match.func)
