"""`/predict`: the published prediction contract, as asynchronous Django views.

These views are `async def` so that a synchronous prediction waits as a suspended
coroutine on the ASGI server's event loop, not as a blocked thread (see `jobs.predict.hub`).
They are plain Django views rather than DRF ones (DRF views are synchronous), but they
authenticate with DRF's authenticators and decide access with `jobs.api.access`, so
tokens, open mode and `X-User-Id` work exactly as for `/api/jobs/`.

Every error body is `{"error": "…"}` (never DRF's `{"detail": …}`); the field names and
status codes are the contract's, byte for byte.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.settings import api_settings

from jobs.api.access import IdempotencyKeyTooLong, acting_owner, read_idempotency_key, reader_of
from jobs.api.errors import (
    QUEUE_LIMIT_RETRY_AFTER_SECONDS,
    owner_deleted_answer,
    queue_limit_body,
)
from jobs.api.serializers import USER_ID_PATTERN
from jobs.api.throttles import check_submit_throttles
from jobs.models import JobStatus
from jobs.predict.hub import (
    AsyncModeError,
    PredictionState,
    parse_async_mode,
    read_prediction,
    run_in_db_thread,
    submit_prediction,
    wait_for_prediction,
)
from jobs.queue import IdempotencyKeyMismatch, OwnerDeactivated, OwnerDeleted, QueueLimitReached

ACCEPTED_MESSAGE = "Request received. Processing asynchronously."
STILL_WAITING_MESSAGE = (
    "The prediction is still being processed after the synchronous wait limit; "
    "poll GET /predict/<prediction_id> for its result."
)
PROCESSING_ERROR = "Prediction is still being processed."
NOT_FOUND_ERROR = "Prediction ID not found."
CANCELLED_ERROR = "Prediction was cancelled."


class PredictionRequestError(Exception):
    """A request the contract refuses, with its status code and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error(status: int, message: str, **extra: Any) -> JsonResponse:
    return JsonResponse({**extra, "error": message}, status=status)


def parse_prediction_body(request: HttpRequest) -> tuple[str, str | None]:
    """The `input` string and the optional `user_id` of a `POST /predict` body."""
    content_type = request.content_type or ""
    if content_type and content_type != "application/json" and not content_type.endswith("+json"):
        raise PredictionRequestError(
            415, f"Unsupported Content-Type {content_type!r}: send the body as application/json."
        )
    if not request.body:
        raise PredictionRequestError(400, 'The request body is empty: send {"input": "..."}.')
    try:
        body = json.loads(request.body)
    except UnicodeDecodeError:
        raise PredictionRequestError(400, "The request body is not UTF-8 encoded JSON.") from None
    except json.JSONDecodeError as exc:
        raise PredictionRequestError(
            400, f"Malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}."
        ) from None
    if not isinstance(body, dict):
        raise PredictionRequestError(400, 'Send a JSON object: {"input": "..."}.')
    if "input" not in body:
        raise PredictionRequestError(400, 'Missing field "input": send {"input": "..."}.')
    if not isinstance(body["input"], str):
        kind = "null" if body["input"] is None else type(body["input"]).__name__
        raise PredictionRequestError(400, f'Field "input" must be a string, not {kind}.')
    user_id = body.get("user_id")
    if user_id is not None and (
        not isinstance(user_id, str) or not re.fullmatch(USER_ID_PATTERN, user_id)
    ):
        raise PredictionRequestError(
            400, 'Field "user_id" may hold 1 to 150 letters, digits and . @ + - _'
        )
    return body["input"], user_id


def _drf_request(request: HttpRequest) -> Request:
    authenticators = [auth() for auth in api_settings.DEFAULT_AUTHENTICATION_CLASSES]  # type: ignore[operator]
    return Request(request, authenticators=authenticators)


def _submit(request: HttpRequest, input: str, user_id: str | None, key: str | None) -> str:
    drf_request = _drf_request(request)
    check_submit_throttles(drf_request)
    # Who it acts for, as /api/jobs/ does: a named user is found or created by the submit's
    # own call (not read first here: a delete between the two would leave no one to queue for).
    owner = acting_owner(drf_request, user_id)
    try:
        return submit_prediction(owner, input, idempotency_key=key)
    except OwnerDeactivated as exc:
        raise exceptions.PermissionDenied(str(exc)) from exc
    except IdempotencyKeyMismatch as exc:  # the key's jobs are gone, or another request's
        refused = exceptions.APIException(str(exc))
        refused.status_code = 422
        raise refused from exc
    except OwnerDeleted as exc:  # the token's own user, deleted after it was authenticated
        code, text, _ = owner_deleted_answer(exc, drf_request.user)
        if code == 401:
            raise exceptions.AuthenticationFailed(text) from exc
        conflict = exceptions.APIException(text)
        conflict.status_code = code
        raise conflict from exc


def _read(request: HttpRequest, prediction_id: str) -> PredictionState | None:
    return read_prediction(prediction_id, reader_of(_drf_request(request)))


def _api_exception_response(exc: exceptions.APIException) -> JsonResponse:
    response = error(exc.status_code, str(exc.detail))
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        response["WWW-Authenticate"] = "Token"
    if isinstance(exc, exceptions.Throttled) and (wait := getattr(exc, "wait", None)):
        response["Retry-After"] = str(int(wait))
    return response


def _database_unavailable() -> JsonResponse:
    response = error(503, "The database is unavailable; retry shortly.")
    response["Retry-After"] = "5"
    return response


def _accepted(prediction_id: str, message: str) -> JsonResponse:
    response = JsonResponse({"message": message, "prediction_id": prediction_id}, status=202)
    response["Location"] = f"/predict/{prediction_id}"
    return response


def _method_not_allowed(request: HttpRequest, allowed: str) -> JsonResponse:
    response = error(405, f"Method {request.method} not allowed; use {allowed}.")
    response["Allow"] = allowed
    return response


@csrf_exempt
async def predict(request: HttpRequest) -> JsonResponse:
    """`POST /predict`: run the model through the fair queue, waiting for it or not."""
    if request.method != "POST":
        return _method_not_allowed(request, "POST")
    try:
        asynchronous = parse_async_mode(request.headers.get("Async-Mode"))
        input, user_id = parse_prediction_body(request)
    except AsyncModeError as exc:
        return error(400, str(exc))
    except PredictionRequestError as exc:
        return error(exc.status, exc.message)
    try:
        key = read_idempotency_key(request)
    except IdempotencyKeyTooLong:
        return error(400, "Idempotency-Key may hold at most 200 characters.")
    try:
        prediction_id = await run_in_db_thread(_submit, request, input, user_id, key)
    except exceptions.APIException as exc:
        return _api_exception_response(exc)
    except QueueLimitReached as exc:
        response = JsonResponse(queue_limit_body(exc), status=429)
        response["Retry-After"] = str(QUEUE_LIMIT_RETRY_AFTER_SECONDS)
        return response
    except DatabaseError:
        return _database_unavailable()
    if asynchronous:
        return _accepted(prediction_id, ACCEPTED_MESSAGE)

    # Synchronous: wait for the job. If the client goes away, this coroutine is
    # cancelled and the job carries on; its result stays readable by id.
    try:
        state = await wait_for_prediction(prediction_id, settings.ZYPHER_PREDICT_WAIT_SECONDS)
    except DatabaseError:
        return _database_unavailable()
    if state is None:  # deleted while we waited (by staff in the admin)
        return error(404, NOT_FOUND_ERROR)
    if state.status == JobStatus.SUCCEEDED:
        return JsonResponse(state.output, status=200, safe=False)
    if state.status == JobStatus.FAILED:
        return error(500, f"Prediction failed: {state.error or 'unknown error'}")
    if state.status == JobStatus.CANCELLED:
        return error(410, CANCELLED_ERROR, prediction_id=prediction_id)
    return _accepted(prediction_id, STILL_WAITING_MESSAGE)


@csrf_exempt
async def prediction_detail(request: HttpRequest, prediction_id: str) -> JsonResponse:
    """`GET /predict/<prediction_id>`: the output when done, else why not."""
    if request.method not in ("GET", "HEAD"):
        return _method_not_allowed(request, "GET")
    try:
        canonical_id = str(uuid.UUID(prediction_id))
    except ValueError:
        return error(404, NOT_FOUND_ERROR)
    try:
        state = await run_in_db_thread(_read, request, canonical_id)
    except exceptions.APIException as exc:
        return _api_exception_response(exc)
    except DatabaseError:
        return _database_unavailable()
    if state is None:
        return error(404, NOT_FOUND_ERROR)
    if state.status == JobStatus.SUCCEEDED:
        return JsonResponse({"prediction_id": canonical_id, "output": state.output})
    if state.status == JobStatus.FAILED:
        message = state.error or "The prediction failed."
        return error(500, message, prediction_id=canonical_id)
    if state.status == JobStatus.CANCELLED:
        return error(410, CANCELLED_ERROR, prediction_id=canonical_id)
    return error(400, PROCESSING_ERROR)
