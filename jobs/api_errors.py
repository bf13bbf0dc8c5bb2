"""JSON errors for every API failure: a 4xx whose body names the problem, never HTML."""

from __future__ import annotations

from typing import Any

from django.db import InterfaceError, OperationalError
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, with every `detail`-only body also given an `error` key.

    Validation errors keep DRF's `{field: [messages]}` shape, which names the field.
    A database that is down answers 503, so clients retry instead of reporting a bug.
    """
    # Only a lost or refused connection is "unavailable": an IntegrityError or DataError
    # is a bug to fix (500 with a traceback), not something a retry will cure.
    if isinstance(exc, OperationalError | InterfaceError):
        return Response(
            {"error": "The database is unavailable; retry shortly."},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "5"},
        )
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        return response
    if isinstance(response.data, dict) and "detail" in response.data:
        response.data = {"error": str(response.data["detail"])}
    return response
