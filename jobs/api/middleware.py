"""Refuse oversize API bodies with a JSON 413 before anything reads them, and answer a
database outage anywhere (admin, sessions, pages, the API) with a 503, not a 500."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.signals import got_request_exception
from django.http import HttpRequest, HttpResponse, JsonResponse

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
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
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
        response = self.get_response(request)
        if response.status_code == 500 and getattr(request, "_zypher_database_unavailable", False):
            forget_connections()
            return unavailable_response(request)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        # A database outage outside DRF views (admin, sessions, pages) is a 503, not a traceback.
        if database_unavailable(exception):
            forget_connections()
            return unavailable_response(request)
        return None
