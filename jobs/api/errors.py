"""JSON errors for every API failure: a 4xx whose body names the problem, never HTML."""

from __future__ import annotations

from typing import Any

from django.db import DatabaseError, InterfaceError, OperationalError, connections
from drf_spectacular.utils import OpenApiResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from jobs.queue import IdempotencyKeyMismatch, OwnerDeactivated, OwnerDeleted, QueueLimitReached

# SQLSTATE 25006: the session is read-only (a database set read-only by an operator, or a
# connection that landed on a standby after a failover). Like a lost connection, it is
# an outage to wait out, not a bug: writes will work again on a fresh connection.
READ_ONLY_SQLSTATE = "25006"
UNAVAILABLE_MESSAGE = "The database is unavailable; retry shortly."
# A user at the queued-jobs cap waits for some of their jobs to run: a guess, not a promise.
QUEUE_LIMIT_RETRY_AFTER_SECONDS = 60


def queue_limit_body(exc: QueueLimitReached) -> dict[str, Any]:
    """The 429 body of a submit refused by admission control: the limit by name and value."""
    return {
        "error": str(exc),
        "limit": "max_queued_per_user",
        "max_queued": exc.limit,
        "queued": exc.queued,
        "requested": exc.requested,
    }


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


def owner_deleted_answer(exc: OwnerDeleted, user: object) -> tuple[int, str, dict[str, str]]:
    """A submit whose user was deleted after the request was authenticated (or after a
    route read the row of the user it names): status, error text and headers. For the
    request's own `user` that is an authentication failure (401): its token or session
    names no one now, and a retry will not pass. Otherwise the named user was deleted
    under the request (409); sending it again creates the user anew, as a name does on
    first use. /predict answers the same (jobs.predict.views)."""
    if getattr(user, "is_authenticated", False) and getattr(user, "pk", None) == exc.user_id:
        return (
            status.HTTP_401_UNAUTHORIZED,
            f"{exc} The credentials of this request belong to a deleted user.",
            {"WWW-Authenticate": "Token"},
        )
    return (
        status.HTTP_409_CONFLICT,
        f"{exc} It was deleted while this request ran; send it again.",
        {},
    )


def owner_deleted_response(exc: OwnerDeleted, context: dict[str, Any]) -> Response:
    """`owner_deleted_answer` for a DRF view."""
    request = context.get("request")
    code, text, headers = owner_deleted_answer(exc, getattr(request, "user", None))
    return Response({"error": text}, status=code, headers=headers)


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
    if isinstance(exc, QueueLimitReached):
        return Response(
            queue_limit_body(exc),
            status=status.HTTP_429_TOO_MANY_REQUESTS,
            headers={"Retry-After": str(QUEUE_LIMIT_RETRY_AFTER_SECONDS)},
        )
    if isinstance(exc, OwnerDeleted):
        return owner_deleted_response(exc, context)
    # Routes that read their user's row first (`acting_user`) meet a deactivation that lands
    # before their submit here, not in the view: 403, as the view's own check answers.
    if isinstance(exc, OwnerDeactivated):
        return Response({"error": str(exc)}, status=status.HTTP_403_FORBIDDEN)
    if isinstance(exc, IdempotencyKeyMismatch):
        return Response({"error": str(exc)}, status=status.HTTP_422_UNPROCESSABLE_ENTITY)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        return response
    if isinstance(response.data, dict) and "detail" in response.data:
        response.data = {"error": str(response.data["detail"])}
    return response


_ERROR_SCHEMA = {
    "type": "object",
    "description": 'Why the request failed: `{"error": "…"}`, or for a validation error '
    "the invalid fields, each with its messages (a bulk submit adds `items`).",
    "properties": {"error": {"type": "string"}},
    "additionalProperties": True,
}
_ERROR_RESPONSES = {
    "400": "Invalid input: the body names the problem (and the field).",
    "401": "No or an invalid token (`Authorization: Token <key>`).",
    "403": "Authenticated, but not allowed (another user's account, staff only).",
    "404": "No such object, or not one the requester may see.",
    "413": "The body is over `ZYPHER_MAX_BODY_BYTES`.",
    "415": "The body is not JSON.",
    "503": "The database is unavailable or read-only; retry after `Retry-After` seconds.",
}
# What a submit operation lists for 429 (`extend_schema(responses=SUBMIT_REFUSALS)`).
SUBMIT_REFUSALS = {
    429: OpenApiResponse(
        description="Refused whole: the user would pass `ZYPHER_MAX_QUEUED_PER_USER` queued "
        "jobs (the body names the limit), or submits too often; retry after `Retry-After` "
        "seconds."
    )
}


def document_error_responses(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    """drf-spectacular post-processing hook: state the error contract on every operation.

    The views share it (this module's handler and `jobs.api.middleware`): any operation may
    answer 401, 403 or 503; one with parameters or a body 400; one with a path parameter
    404; one with a body 413 and 415. All with the same JSON error body.
    """
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault("Error", _ERROR_SCHEMA)
    reference = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            parameters = operation.get("parameters", [])
            codes = ["401", "403", "503"]
            if parameters or "requestBody" in operation:
                codes.append("400")
            if "{" in path:
                codes.append("404")
            if "requestBody" in operation:
                codes += ["413", "415"]
            responses = operation.setdefault("responses", {})
            for code in codes:
                responses.setdefault(
                    code, {"description": _ERROR_RESPONSES[code], "content": reference}
                )
            if "429" in responses:  # a view's SUBMIT_REFUSALS: the same JSON error body
                responses["429"].setdefault("content", reference)
    return result
