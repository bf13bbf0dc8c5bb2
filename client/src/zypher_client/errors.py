"""Typed errors: each carries the server's own message (its JSON `error`, or the fields a
validation error names), the HTTP status and the whole JSON body."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zypher_client.jobs import Job


class ZypherError(Exception):
    """Any failure the client reports. `status` is None when no HTTP answer came."""

    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.body = body


class BadRequest(ZypherError):
    """400, 413, 415: the request was refused for its content; the message names why."""


class Unauthorized(ZypherError):
    """401: no token, or not a valid one."""


class Forbidden(ZypherError):
    """403: authenticated, but not allowed."""


class NotFound(ZypherError):
    """404: no such job (or not one this client may see)."""


class Conflict(ZypherError):
    """409: e.g. cancelling a job that has already started or ended."""


class RateLimited(ZypherError):
    """429: too many submits, or the user's queued-jobs cap; retry after `retry_after` s."""

    def __init__(
        self, message: str, status: int | None = None, body: Any = None, retry_after: float = 0
    ) -> None:
        super().__init__(message, status, body)
        self.retry_after = retry_after


class ServerError(ZypherError):
    """5xx that stayed after the client's retries."""


class Unavailable(ServerError):
    """503: the server's database is unavailable; retry after `retry_after` s."""

    def __init__(
        self, message: str, status: int | None = None, body: Any = None, retry_after: float = 0
    ) -> None:
        super().__init__(message, status, body)
        self.retry_after = retry_after


class ConnectionFailed(ZypherError):
    """No answer from the server after the client's retries (refused, reset, timed out)."""


class Timeout(ZypherError, TimeoutError):
    """`wait` gave up before the job ended; the job goes on (`job` is its last state)."""

    def __init__(self, message: str, job: Job | None = None) -> None:
        super().__init__(message)
        self.job = job


class JobFailed(ZypherError):
    """The job ended without a result: it failed (its `error`) or was cancelled."""

    def __init__(self, job: Job) -> None:
        reason = job.error or f"the job was {job.status}"
        super().__init__(f"Job {job.id} {job.status}: {reason}")
        self.job = job


class PredictionFailed(ZypherError):
    """`/predict`: the model failed (500) or the prediction was cancelled (410)."""

    def __init__(
        self, message: str, status: int | None, body: Any, prediction_id: str | None
    ) -> None:
        super().__init__(message, status, body)
        self.prediction_id = prediction_id


def error_message(body: Any, fallback: str) -> str:
    """The server's words: `{"error": …}`, or a validation error's `field: message` pairs."""
    if isinstance(body, dict):
        if isinstance(body.get("error"), str):
            return body["error"]
        parts = []
        for field, messages in body.items():
            text = "; ".join(map(str, messages)) if isinstance(messages, list) else str(messages)
            parts.append(f"{field}: {text}")
        if parts:
            return "; ".join(parts)
    if isinstance(body, list) and body:
        return "; ".join(map(str, body))
    return fallback


def retry_after_seconds(value: str | None) -> float:
    """`Retry-After` in seconds (the server sends a number); 0 when absent or a date."""
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0


def error_for(status: int, body: Any, retry_after: str | None, fallback: str) -> ZypherError:
    """The typed error of an HTTP answer that is not a success."""
    message = error_message(body, fallback)
    if status == 429:
        return RateLimited(message, status, body, retry_after_seconds(retry_after))
    if status == 503:
        return Unavailable(message, status, body, retry_after_seconds(retry_after))
    kinds: dict[int, type[ZypherError]] = {
        400: BadRequest,
        401: Unauthorized,
        403: Forbidden,
        404: NotFound,
        409: Conflict,
        413: BadRequest,
        415: BadRequest,
    }
    kind = kinds.get(status, ServerError if status >= 500 else ZypherError)
    return kind(message, status, body)
