"""Refuse oversize API bodies with a JSON 413 before anything reads them."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse


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
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        # A database outage outside DRF views (admin, sessions) is a 503, not a traceback.
        if isinstance(exception, OperationalError | InterfaceError) and request.path.startswith(
            ("/api/", "/predict")
        ):
            return JsonResponse(
                {"error": "The database is unavailable; retry shortly."}, status=503
            )
        return None
