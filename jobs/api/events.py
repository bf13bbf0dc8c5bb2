"""`GET /api/jobs/<id>/events`: a job's changes of state as Server-Sent Events.

The stream sends one event per change and ends after the job ends:

    id: 3
    event: running
    data: {"id": "…", "status": "running", "queue_position": null, "progress": 0.4,
           "progress_message": "…", "attempts": 1, "result": null, "error": ""}

* `queued`: at the start and after a requeue, with `queue_position`; again when the
  position changed (looked at every POSITION_SECONDS, not more: it costs a few queries);
* `running`: when a device starts it, and whenever its progress changed;
* `ended`: once, with the final `status` and the `result` or `error`; then the stream ends.

A comment line (`: keep-alive`) goes out every KEEPALIVE_SECONDS so proxies keep idle
streams open. Access is the job's own (`reader_of`): 401 without a token outside open
mode, 404 for an unknown job or another user's.

Like `/predict`'s waiting requests, a stream is a suspended coroutine on the ASGI
server's event loop, not a thread: `JobWatchHub` (one per event loop) re-reads every
watched job in one batched query every POLL_SECONDS and wakes the streams whose job
changed (SQLite and PostgreSQL alike: a claim sends no NOTIFY), and the end of a job
wakes its streams through `/predict`'s `CompletionHub` (NOTIFY on PostgreSQL within
milliseconds of the commit, its own poll on SQLite). Database calls run in `/predict`'s
small thread pool, so 1,000 streams are neither 1,000 threads nor 1,000 connections.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from django.db import DatabaseError
from django.http import HttpRequest, HttpResponseBase, JsonResponse, StreamingHttpResponse
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.settings import api_settings

from jobs.api.access import reader_of
from jobs.models import FINAL_STATUSES, Job, JobStatus
from jobs.predict.hub import completion_hub, run_in_db_thread

log = logging.getLogger("zypher.events")

POLL_SECONDS = 0.5  # every watched job is re-read this often, in one query per 500
POSITION_SECONDS = 30.0  # a queued job's position is recomputed this often, at most (a few queries)
KEEPALIVE_SECONDS = 15.0
EVENT_TYPES = ("queued", "running", "ended")


@dataclass(frozen=True)
class JobSnapshot:
    """What an event says about a job."""

    id: str
    status: str
    queue_position: int | None
    progress: float | None
    progress_message: str
    attempts: int
    result: Any
    error: str

    @property
    def event_type(self) -> str:
        if self.status in FINAL_STATUSES:
            return "ended"
        return "running" if self.status == JobStatus.RUNNING else "queued"

    def as_data(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "queue_position": self.queue_position,
            "progress": self.progress,
            "progress_message": self.progress_message,
            "attempts": self.attempts,
            "result": self.result,
            "error": self.error,
        }


def read_snapshot(public_id: str) -> JobSnapshot | None:
    from jobs.queue import queue_position

    job = Job.objects.filter(public_id=public_id).first()
    if job is None:
        return None
    return JobSnapshot(
        id=str(job.public_id),
        status=job.status,
        queue_position=queue_position(job),
        progress=job.progress,
        progress_message=job.progress_message,
        attempts=job.attempts,
        result=job.result if job.status == JobStatus.SUCCEEDED else None,
        error=job.error if job.status in FINAL_STATUSES else "",
    )


def open_stream(request: HttpRequest, public_id: str) -> JobSnapshot | None:
    """Authenticate as the jobs API does and read the job if the request may see it."""
    authenticators = [auth() for auth in api_settings.DEFAULT_AUTHENTICATION_CLASSES]  # type: ignore[operator]
    reader = reader_of(Request(request, authenticators=authenticators))
    if not Job.objects.filter(public_id=public_id).visible_to(reader).exists():
        return None
    return read_snapshot(public_id)


# --- waking streams -------------------------------------------------------------------

# What the batched poll compares: (status, attempts, progress, progress message).
Fingerprint = tuple[str, int, float | None, str] | None


def _fingerprints(public_ids: list[str]) -> dict[str, Fingerprint]:
    found: dict[str, Fingerprint] = dict.fromkeys(public_ids)
    for start in range(0, len(public_ids), 500):
        rows = Job.objects.filter(public_id__in=public_ids[start : start + 500]).values_list(
            "public_id", "status", "attempts", "progress", "progress_message"
        )
        for public_id, *fingerprint in rows:
            found[str(public_id)] = (
                fingerprint[0],
                fingerprint[1],
                fingerprint[2],
                fingerprint[3],
            )
    return found


@dataclass
class _Watch:
    fingerprint: Fingerprint
    changed: set[asyncio.Event] = field(default_factory=set)


class JobWatchHub:
    """The open streams of one event loop, woken when their job's row changed."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._watches: dict[str, _Watch] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def watched(self) -> int:
        return len(self._watches)

    def watch(self, public_id: str, fingerprint: Fingerprint) -> asyncio.Event:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._poll_forever(), name="job-events-poll")
        watch = self._watches.setdefault(public_id, _Watch(fingerprint))
        changed = asyncio.Event()
        if watch.fingerprint != fingerprint:
            # Another stream's poll already saw a state this caller has not: wake it now,
            # or it waits for a change that has happened (the poll only wakes on news).
            changed.set()
        watch.changed.add(changed)
        return changed

    def unwatch(self, public_id: str, changed: asyncio.Event) -> None:
        watch = self._watches.get(public_id)
        if watch is not None:
            watch.changed.discard(changed)
            if not watch.changed:
                del self._watches[public_id]

    async def _poll_forever(self) -> None:
        while self._watches:
            await asyncio.sleep(POLL_SECONDS)
            try:
                latest = await run_in_db_thread(_fingerprints, list(self._watches))
            except Exception as exc:  # an outage: the streams wait, and we retry
                log.warning("re-reading watched jobs failed: %s", str(exc)[:200])
                continue
            for public_id, fingerprint in latest.items():
                watch = self._watches.get(public_id)
                if watch is not None and watch.fingerprint != fingerprint:
                    watch.fingerprint = fingerprint
                    for changed in watch.changed:
                        changed.set()


_hubs: dict[int, JobWatchHub] = {}


def job_watch_hub() -> JobWatchHub:
    loop = asyncio.get_running_loop()
    hub = _hubs.get(id(loop))
    if hub is None or hub.loop is not loop:
        for key in [key for key, old in _hubs.items() if old.loop.is_closed()]:
            del _hubs[key]
        hub = _hubs[id(loop)] = JobWatchHub(loop)
    return hub


# --- the stream -----------------------------------------------------------------------


def format_event(event_id: int, snapshot: JobSnapshot) -> bytes:
    data = json.dumps(snapshot.as_data(), separators=(",", ":"))
    return f"id: {event_id}\nevent: {snapshot.event_type}\ndata: {data}\n\n".encode()


def _fingerprint_of(snapshot: JobSnapshot) -> Fingerprint:
    return (snapshot.status, snapshot.attempts, snapshot.progress, snapshot.progress_message)


async def job_event_stream(first: JobSnapshot) -> AsyncIterator[bytes]:
    """Events from `first` until the job ends (or is deleted)."""
    public_id = first.id
    watch_hub, done_hub = job_watch_hub(), completion_hub()
    changed = watch_hub.watch(public_id, _fingerprint_of(first))
    ended = done_hub.register(public_id)
    event_id, last = 1, first
    try:
        yield format_event(event_id, first)
        # Jittered, so that streams opened together do not recompute positions together.
        next_position = time.monotonic() + POSITION_SECONDS * random.uniform(0.5, 1.0)
        while last.event_type != "ended":
            wait_until = time.monotonic() + KEEPALIVE_SECONDS
            if last.event_type == "queued":
                wait_until = min(wait_until, next_position)
            changed_wait: asyncio.Future[Any] = asyncio.ensure_future(changed.wait())
            waits: set[asyncio.Future[Any]] = {changed_wait, ended}
            try:
                done, _ = await asyncio.wait(
                    waits,
                    timeout=max(0.0, wait_until - time.monotonic()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:  # also when the client went away (cancelled): no wait left pending
                changed_wait.cancel()
            position_due = last.event_type == "queued" and time.monotonic() >= next_position
            if not done and not position_due:
                yield b": keep-alive\n\n"
                continue
            changed.clear()
            if ended.done():  # resolved once: a later end is seen by the poll
                ended = done_hub.register(public_id)
            if position_due:
                next_position = time.monotonic() + POSITION_SECONDS
            try:
                snapshot = await run_in_db_thread(read_snapshot, public_id)
            except DatabaseError:
                continue  # the next wake-up reads again
            if snapshot is None:  # deleted (by staff in the admin): nothing more to say
                return
            if snapshot != last:
                event_id += 1
                last = snapshot
                yield format_event(event_id, snapshot)
            elif not done:
                yield b": keep-alive\n\n"
    finally:
        watch_hub.unwatch(public_id, changed)
        done_hub.unregister(public_id, ended)


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"detail": message, "error": message}, status=status)


async def job_events(request: HttpRequest, job_id: uuid.UUID) -> HttpResponseBase:
    """`GET /api/jobs/<id>/events`: the job's state changes as `text/event-stream`."""
    if request.method not in ("GET", "HEAD"):
        response = _error(405, f"Method {request.method} not allowed; use GET.")
        response["Allow"] = "GET"
        return response
    try:
        first = await run_in_db_thread(open_stream, request, str(job_id))
    except exceptions.APIException as exc:
        response = _error(exc.status_code, str(exc.detail))
        if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
            response["WWW-Authenticate"] = "Token"
        return response
    except DatabaseError:
        response = _error(503, "The database is unavailable; retry shortly.")
        response["Retry-After"] = "5"
        return response
    if first is None:
        return _error(404, "No job with this id (or not yours).")
    stream = StreamingHttpResponse(job_event_stream(first), content_type="text/event-stream")
    stream["Cache-Control"] = "no-cache"
    stream["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return stream


def document_events_endpoint(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: declare the stream, a plain Django view that
    the schema generator does not see, with its event format."""
    result.setdefault("paths", {})["/api/jobs/{job_id}/events"] = {
        "get": {
            "operationId": "api_jobs_events_retrieve",
            "summary": "A job's state changes as Server-Sent Events",
            "description": __doc__.split("\n\n", 1)[1].split("\n\nLike", 1)[0],
            "tags": ["api"],
            "parameters": [
                {
                    "in": "path",
                    "name": "job_id",
                    "required": True,
                    "schema": {"type": "string", "format": "uuid"},
                }
            ],
            "security": [{"tokenAuth": []}, {}],
            "responses": {
                "200": {
                    "description": (
                        "A `text/event-stream`: events `queued`, `running` and `ended` "
                        "(the last one), each `data` a JobEvent as JSON."
                    ),
                    "content": {
                        "text/event-stream": {"schema": {"$ref": "#/components/schemas/JobEvent"}}
                    },
                },
                "401": {"description": "No token outside open mode."},
                "404": {"description": "No such job, or another user's."},
            },
        }
    }
    result.setdefault("components", {}).setdefault("schemas", {})["JobEvent"] = {
        "type": "object",
        "description": "The `data` of one event; the event's type is `queued`, `running` "
        "or `ended`.",
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "status": {"type": "string", "enum": [str(value) for value in JobStatus.values]},
            "queue_position": {"type": "integer", "nullable": True},
            "progress": {"type": "number", "minimum": 0, "maximum": 1, "nullable": True},
            "progress_message": {"type": "string"},
            "attempts": {"type": "integer"},
            "result": {"description": "The result, in the `ended` event of a success."},
            "error": {"type": "string"},
        },
        "required": ["id", "status", "queue_position", "progress", "attempts"],
    }
    return result
