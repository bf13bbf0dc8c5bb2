"""JSON errors for every API failure: a 4xx whose body names the problem, never HTML."""

from __future__ import annotations

from typing import Any

from django.db import DatabaseError, InterfaceError, OperationalError, connections
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

# SQLSTATE 25006: the session is read-only (a database set read-only by an operator, or a
# connection that landed on a standby after a failover). Like a lost connection, it is
# an outage to wait out, not a bug: writes will work again on a fresh connection.
READ_ONLY_SQLSTATE = "25006"
UNAVAILABLE_MESSAGE = "The database is unavailable; retry shortly."


def database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` means "the database cannot take this now, retry later": a lost or
    refused connection, or a read-only session."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return (
        isinstance(exc, DatabaseError)
        and getattr(exc.__cause__, "sqlstate", None) == READ_ONLY_SQLSTATE
    )


def forget_connections() -> None:
    """Close this thread's database connections after an outage, so that the next request
    opens a fresh one (a read-only session stays read-only for its whole life)."""
    for connection in connections.all(initialized_only=True):
        connection.close()


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, with every `detail`-only body also given an `error` key.

    Validation errors keep DRF's `{field: [messages]}` shape, which names the field.
    A database that is down answers 503, so clients retry instead of reporting a bug.
    """
    # Only a lost or refused connection or a read-only session is "unavailable": an
    # IntegrityError or DataError is a bug to fix (500), not something a retry will cure.
    if database_unavailable(exc):
        forget_connections()
        return Response(
            {"error": UNAVAILABLE_MESSAGE},
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
