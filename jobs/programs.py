"""Programs: jobs submitted together whose results go back to the user at a callback URL.

A program groups jobs of any kind; what its jobs are (the QPU exercise's circuits) is the
business of the app that submits them (`devices.qpu.programs`).

A program's priority is its jobs' priority: it orders them among the user's own work
(the core scheduler's semantics); between users the weighted fair share decides. When
every job of a program has ended, a dispatcher POSTs the program's results to its
`callback_url`, retried with exponential backoff up to ZYPHER_CALLBACK_MAX_ATTEMPTS and
recorded on the program (`delivered`, or `failed` with the reason).

SSRF guard: a callback URL must be http(s) with a host in ZYPHER_CALLBACK_ALLOWED_HOSTS
(default loopback only; `*` allows any), checked when the program is created and again
before each delivery; redirects are not followed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlparse

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from jobs.models import Job, JobStatus, Program, User
from jobs.queue import JobSpec, submit_jobs

log = logging.getLogger("zypher.programs")

UNFINISHED = (JobStatus.QUEUED, JobStatus.RUNNING)


class CallbackNotAllowed(ValueError):
    pass


def check_callback_url(url: str) -> None:
    """Raise CallbackNotAllowed unless `url` is http(s) to an allowed host."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise CallbackNotAllowed("callback_url must be an http(s) URL with a host")
    allowed = settings.ZYPHER_CALLBACK_ALLOWED_HOSTS
    if "*" not in allowed and parsed.hostname.lower() not in allowed:
        raise CallbackNotAllowed(
            f"callback host {parsed.hostname!r} is not allowed "
            f"(ZYPHER_CALLBACK_ALLOWED_HOSTS: {', '.join(allowed)})"
        )


def create_program(
    owner: User,
    specs: list[JobSpec],
    *,
    device_type: str,
    priority: int = 0,
    callback_url: str = "",
    idempotency_key: str | None = None,
) -> tuple[Program, list[Job], bool]:
    """Create a program and queue its jobs in one transaction, all or nothing.

    Returns the program, its jobs and whether they were created now (False: the
    idempotency key was used before and this is the program it created).
    """
    if callback_url:
        check_callback_url(callback_url)
    with transaction.atomic():
        program = Program.objects.create(
            owner=owner,
            priority=priority,
            device_type=device_type,
            callback_url=callback_url,
            callback_status=Program.Delivery.PENDING if callback_url else Program.Delivery.NONE,
        )
        created_jobs, created = submit_jobs(
            owner, specs, idempotency_key=idempotency_key, program=program
        )
        if not created:
            transaction.set_rollback(True)
    if not created:
        # The jobs the key found belong to the program the first request created.
        first_program = created_jobs[0].program
        assert first_program is not None
        program = first_program
    return program, created_jobs, created


def program_state(counts: dict[str, int]) -> str:
    """`queued` (nothing started), `running`, or `finished` (every job ended)."""
    if counts.get(JobStatus.RUNNING, 0):
        return "running"
    queued = counts.get(JobStatus.QUEUED, 0)
    if not queued:
        return "finished"
    return "queued" if queued == sum(counts.values()) else "running"


def program_report(program: Program) -> dict[str, Any]:
    """The program's state and every job's result: what GET shows and the callback gets."""
    jobs = list(
        program.jobs.order_by("id").only(
            "public_id", "status", "result", "error", "size", "device", "attempts", "finished_at"
        )
    )
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status] = counts.get(job.status, 0) + 1
    return {
        "program_id": str(program.public_id),
        "state": program_state(counts),
        "priority": program.priority,
        "device_type": program.device_type,
        "counts": counts,
        "jobs": [
            {
                "id": str(job.public_id),
                "status": job.status,
                "size": job.size,
                "result": job.result,
                "error": job.error,
                "device": job.device,
                "attempts": job.attempts,
                "finished_at": job.finished_at.isoformat() if job.finished_at else None,
            }
            for job in jobs
        ],
    }


# --- callback delivery (runs in the dispatchers) ---


def programs_due_for_callback(exclude: set[int]) -> list[tuple[int, int, str]]:
    """(id, attempts so far, url) of pending programs whose jobs have all ended."""
    unfinished = Job.objects.filter(program=OuterRef("pk"), status__in=UNFINISHED)
    return list(
        Program.objects.filter(callback_status=Program.Delivery.PENDING)
        .exclude(pk__in=exclude)
        .annotate(unfinished=Exists(unfinished))
        .filter(unfinished=False)
        .order_by("id")
        .values_list("id", "callback_attempts", "callback_url")[:50]
    )


def claim_callback_attempt(program_id: int, attempts: int) -> dict[str, Any] | None:
    """Take attempt `attempts + 1` (compare-and-set: one dispatcher per attempt) and return
    the payload to post, or None if another dispatcher took it."""
    taken = Program.objects.filter(
        pk=program_id, callback_status=Program.Delivery.PENDING, callback_attempts=attempts
    ).update(callback_attempts=attempts + 1)
    if not taken:
        return None
    return program_report(Program.objects.get(pk=program_id))


def record_callback(program_id: int, delivered: bool, error: str, final: bool) -> None:
    if delivered:
        Program.objects.filter(pk=program_id).update(
            callback_status=Program.Delivery.DELIVERED,
            delivered_at=timezone.now(),
            callback_error="",
        )
    else:
        Program.objects.filter(pk=program_id).update(
            callback_status=Program.Delivery.FAILED if final else Program.Delivery.PENDING,
            callback_error=error[:2000],
        )


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect could lead past the allow-list


def post_callback(url: str, payload: dict[str, Any], timeout: float = 10.0) -> str:
    """POST the results; "" on a 2xx answer, else the reason it failed."""
    try:
        check_callback_url(url)
    except CallbackNotAllowed as error:
        return str(error)
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "zypher-callback"},
    )
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=timeout) as response:
            return "" if 200 <= response.status < 300 else f"HTTP {response.status}"
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        return f"{type(error).__name__}: {getattr(error, 'reason', error)}"


class CallbackCourier:
    """A dispatcher's delivery of callbacks; it remembers when each program's next retry is."""

    def __init__(self) -> None:
        self.next_attempt: dict[int, float] = {}

    async def deliver_due(self, db: Callable[..., Awaitable[Any]]) -> None:
        now = time.monotonic()
        waiting = {pk for pk, at in self.next_attempt.items() if at > now}
        for program_id, attempts, url in await db(programs_due_for_callback, waiting):
            payload = await db(claim_callback_attempt, program_id, attempts)
            if payload is None:
                continue
            error = await asyncio.to_thread(post_callback, url, payload)
            final = bool(error) and attempts + 1 >= settings.ZYPHER_CALLBACK_MAX_ATTEMPTS
            await db(record_callback, program_id, not error, error, final)
            if error and not final:
                delay = settings.ZYPHER_CALLBACK_BACKOFF_SECONDS * 2**attempts
                self.next_attempt[program_id] = time.monotonic() + delay
                log.warning(
                    "callback of program %s failed (%s); retry in %.1fs", program_id, error, delay
                )
            else:
                self.next_attempt.pop(program_id, None)
                log.info(
                    "callback of program %s %s",
                    program_id,
                    "delivered" if not error else f"failed for good: {error}",
                )
