"""Whether a job's result can be stored, and an error text that can always be stored.

A handler may return anything; the database takes only strict JSON: no NaN or Infinity
(SQLite's JSON_VALID check and PostgreSQL's jsonb both refuse them), no NUL character in
a string or key (jsonb and text columns refuse it), valid Unicode, and at most
ZYPHER_MAX_RESULT_BYTES. Every path that settles a job (the dispatcher's local workers
and simulated devices, remote agents' reports) asks `storable_result` before it writes,
so one bad result fails its own job with the reason instead of raising in the settle.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from typing import Any, TypeVar

from django.conf import settings
from django.db import DataError, IntegrityError, connection, transaction

log = logging.getLogger("zypher.queue")
R = TypeVar("R")

ERROR_MAX_CHARS = 4000  # a job's error is for people: the head of a long one is enough
# Deeper JSON is refused: encoding or rendering it later could exhaust the stack.
MAX_RESULT_DEPTH = 64


def storable_result(value: Any, limit: int | None = None) -> str | None:
    """None if `value` can be stored as the job's result, else why not (for the job's error).
    `limit`: a lower size limit than ZYPHER_MAX_RESULT_BYTES (a remote device's reports)."""
    problem = _first_problem(value)
    if problem is not None:
        return f"the result cannot be stored: {problem}"
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return f"the result is not JSON: {type(exc).__name__}: {exc}"
    size = len(text.encode())
    limit = min(limit or settings.ZYPHER_MAX_RESULT_BYTES, settings.ZYPHER_MAX_RESULT_BYTES)
    if size > limit:
        return (
            f"the result is {size} bytes of JSON, over the limit of {limit} "
            "(ZYPHER_MAX_RESULT_BYTES)"
        )
    return None


def storable_error(text: str) -> str:
    """`text` made safe for the job's error column: no NUL, valid Unicode, bounded length."""
    text = text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode()
    if len(text) > ERROR_MAX_CHARS:
        text = text[:ERROR_MAX_CHARS] + f"... ({len(text) - ERROR_MAX_CHARS} more characters)"
    return text


def _first_problem(value: Any) -> str | None:
    """The first value JSON or the database cannot hold, with its path ($.key[index])."""
    # Iterative: a deeply nested result must not overflow the stack here.
    pending: list[tuple[Any, str, int]] = [(value, "$", 1)]
    while pending:
        item, path, depth = pending.pop()
        if isinstance(item, dict | list | tuple) and depth > MAX_RESULT_DEPTH:
            return f"nesting deeper than {MAX_RESULT_DEPTH} levels at {path}"
        if isinstance(item, float) and not math.isfinite(item):
            return f"{_float_name(item)} at {path}, which JSON cannot represent"
        if isinstance(item, str):
            if problem := _string_problem(item):
                return f"{problem} at {path}"
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and (problem := _string_problem(key)):
                    return f"{problem} in a key at {path}"
                pending.append((child, f"{path}.{key}", depth + 1))
        elif isinstance(item, list | tuple):
            pending.extend(
                (child, f"{path}[{index}]", depth + 1) for index, child in enumerate(item)
            )
    return None


def _string_problem(text: str) -> str | None:
    if "\x00" in text:
        return "a NUL character"
    try:
        text.encode()
    except UnicodeEncodeError:
        return "a string that is not valid Unicode"
    return None


def _float_name(number: float) -> str:
    if math.isnan(number):
        return "NaN"
    return "inf" if number > 0 else "-inf"


def settle_outcome(
    record: Callable[..., R], *, succeeded: bool, duration: float, result: Any, error: str
) -> R:
    """Write a job's outcome with `record(succeeded=, duration=, result=, error=)` (finish_job,
    finish_and_claim_next, settle_on_device, bound to their claim): the one place where the
    dispatcher's local workers, simulated devices and remote agents' reports settle.

    A result that cannot be stored fails the job with the reason; a database error tied
    to this one outcome (DataError, IntegrityError) is recorded as the job's failure
    instead of raising, so one job never ends the caller's loop. Errors that are not about
    this job (the database unreachable) propagate: the caller retries or gives the job back.
    """
    succeeded, result, error = _storable_outcome(succeeded, result, error)
    # Inside a caller's transaction a savepoint keeps it usable after a refused write; in
    # autocommit a failed statement undoes only itself, and a savepoint would cost the
    # device's idle gap two more round trips (BEGIN, COMMIT) on the hot path.
    guard = transaction.atomic() if connection.in_atomic_block else nullcontext()
    try:
        with guard:
            return record(succeeded=succeeded, duration=duration, result=result, error=error)
    except (DataError, IntegrityError) as exc:
        log.warning("the database refused an outcome (%s); recording a failure", exc)
        refused = storable_error(f"the database refused the job's outcome: {exc}")
        return record(succeeded=False, duration=duration, result=None, error=refused)


def _storable_outcome(succeeded: bool, result: Any, error: str) -> tuple[bool, Any, str]:
    """The outcome as it can be written: a result that cannot be stored fails the job."""
    if succeeded and (problem := storable_result(result)) is not None:
        succeeded, result, error = False, None, problem
    if not succeeded:
        result, error = None, storable_error(error)
    return succeeded, result, error


async def settle_outcome_async(
    record: Callable[..., Awaitable[R]],
    *,
    succeeded: bool,
    duration: float,
    result: Any,
    error: str,
) -> R:
    """`settle_outcome` for a `record` that is awaited (the dispatcher's settle-and-claim
    on its own async connection, always in autocommit: no savepoint to take)."""
    succeeded, result, error = _storable_outcome(succeeded, result, error)
    try:
        return await record(succeeded=succeeded, duration=duration, result=result, error=error)
    except (DataError, IntegrityError) as exc:
        log.warning("the database refused an outcome (%s); recording a failure", exc)
        refused = storable_error(f"the database refused the job's outcome: {exc}")
        return await record(succeeded=False, duration=duration, result=None, error=refused)
