"""`Client`: submit, wait for, cancel and list jobs of a Zypher gateway over its HTTP API.

Retries are safe by construction: a request is retried (after a connection error or a
5xx) only when repeating it cannot do twice what the first did: reads, and writes that
carry an `Idempotency-Key` (the server returns the first attempt's jobs for a repeated
key, per user). `submit`, `submit_many` and `predict` make up a key when none is given.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, overload
from urllib.parse import quote

import httpx

from zypher_client.errors import (
    ConnectionFailed,
    JobFailed,
    PredictionFailed,
    ServerError,
    Timeout,
    ZypherError,
    error_for,
    error_message,
    retry_after_seconds,
)
from zypher_client.jobs import Job, apply_event, parse_events

DEFAULT_URL = "http://127.0.0.1:8080"
# 500 is retried only where the request is idempotent; a 500 may come after a commit.
RETRY_STATUSES = frozenset({500, 502, 503, 504})
MAX_POLL_INTERVAL = 1.0
Update = Callable[[Job], None]


class Client:
    """A gateway at `url`, as the user of `token` (or, in open mode, as `user`).

    `retries` is how many times a failed attempt is repeated (connection errors, 5xx),
    with exponential backoff from `backoff` seconds, honouring `Retry-After` on 503.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        user: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.user = user
        self.retries = retries
        self.backoff = backoff
        headers = {"Accept": "application/json", "User-Agent": "zypher-client/0.1"}
        if token:
            headers["Authorization"] = f"Token {token}"
        if user:
            headers["X-User-Id"] = user  # open mode: who reads and submits
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )
        self._events_supported: bool | None = None  # learnt from the first wait

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- jobs --------------------------------------------------------------------------

    def submit(
        self,
        input: Any,
        *,
        kind: str | None = None,
        priority: int | None = None,
        device_type: str | None = None,
        user_id: str | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Queue one job; answers with it (status "queued"). A retry after a lost answer
        returns the same job, never a second one. With `callback_url` the server POSTs the
        job (as `get` shows it) there once it has ended; the server's allow-list decides
        which URLs it accepts (BadRequest naming the problem otherwise)."""
        body = self._job_spec(
            {
                "input": input,
                "kind": kind,
                "priority": priority,
                "device_type": device_type,
                "user_id": user_id,
                "callback_url": callback_url,
            }
        )
        data = self._request("POST", "/api/jobs/", json=body, key=idempotency_key)
        return Job.from_json(data)

    def submit_many(
        self, jobs: Iterable[Mapping[str, Any]], *, idempotency_key: str | None = None
    ) -> list[Job]:
        """Queue many jobs in one request, all or nothing. Each item is a job's fields:
        `{"input": …, "kind": …, "priority": …, "device_type": …, "callback_url": …}`."""
        body = [self._job_spec(dict(job)) for job in jobs]
        data = self._request("POST", "/api/jobs/", json=body, key=idempotency_key)
        return [Job.from_json(item) for item in data]

    def get(self, job_id: str) -> Job:
        return Job.from_json(self._request("GET", f"/api/jobs/{_segment(job_id)}/"))

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job (Conflict once it has started or ended)."""
        # Not blindly retried: a retry after a cancel that went through would answer 409.
        data = self._request("POST", f"/api/jobs/{_segment(job_id)}/cancel/", idempotent=False)
        return Job.from_json(data)

    def jobs(
        self,
        *,
        user_id: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[Job]:
        """One page of jobs, newest first (open mode lists the client's `user`)."""
        params = {
            "user_id": user_id or self.user,
            "status": status,
            "limit": limit,
            "offset": offset,
        }
        query = {name: str(value) for name, value in params.items() if value is not None}
        data = self._request("GET", "/api/jobs/", params=query)
        return [Job.from_json(item) for item in data["results"]]

    def wait(
        self, job_id: str, timeout: float | None = None, on_update: Update | None = None
    ) -> Job:
        """Block until the job ends and answer with it, whatever its end (see `result`).

        Follows the job's event stream (`GET /api/jobs/<id>/events`) and falls back to
        polling where the server has none; `on_update` sees each new state. Raises
        Timeout after `timeout` seconds (the job goes on)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        notify = _on_change(on_update)
        job = self.get(job_id)
        notify(job)
        interval = 0.05
        while not job.done:
            if self._events_supported is not False:
                job = self._follow_events(job, deadline, notify)
                if job.done:
                    break
            _sleep_until(interval, deadline, job)
            interval = min(interval * 1.5, MAX_POLL_INTERVAL)
            job = self.get(job.id)
            notify(job)
        return job

    def result(self, job_id: str, timeout: float | None = None) -> Any:
        """Wait for the job and return its result; JobFailed if it failed or was cancelled."""
        job = self.wait(job_id, timeout)
        if not job.succeeded:
            raise JobFailed(job)
        return job.result

    # -- /predict ------------------------------------------------------------------------

    @overload
    def predict(
        self, input: str, sync: Literal[True] = True, *, idempotency_key: str | None = None
    ) -> Any: ...

    @overload
    def predict(
        self, input: str, sync: Literal[False], *, idempotency_key: str | None = None
    ) -> str: ...

    def predict(self, input: str, sync: bool = True, *, idempotency_key: str | None = None) -> Any:
        """The prediction contract: with `sync` the model's output (waiting past the
        server's own wait limit by polling `GET /predict/<id>`); otherwise the
        `prediction_id` at once. PredictionFailed when the model failed (500) or the
        prediction was cancelled (410), with the server's message."""
        body: dict[str, Any] = {"input": input}
        if self.user:
            body["user_id"] = self.user
        headers = {"Async-Mode": "false" if sync else "true"}
        response = self._send(
            "POST",
            "/predict",
            json=body,
            headers=headers,
            key=idempotency_key,
            retry_500=False,
            raise_for=False,
        )
        if response.status_code in (410, 500):
            raise _prediction_failed(response)
        if response.status_code >= 400:
            raise self._error(response)
        data = _json(response)
        if not sync:
            return str(data["prediction_id"])
        if response.status_code == 200:
            return data
        return self.prediction(str(data["prediction_id"]), wait=True)

    def prediction(self, prediction_id: str, wait: bool = False) -> Any:
        """`GET /predict/<id>`: the output; with `wait`, polls while it is being processed."""
        interval = 0.05
        while True:
            response = self._send("GET", f"/predict/{_segment(prediction_id)}", raise_for=False)
            if response.status_code == 200:
                return _json(response)["output"]
            if response.status_code in (410, 500):
                raise _prediction_failed(response)
            if not (wait and response.status_code == 400):
                raise self._error(response)
            time.sleep(interval)
            interval = min(interval * 1.5, MAX_POLL_INTERVAL)

    # -- internals -----------------------------------------------------------------------

    def _job_spec(self, fields: dict[str, Any]) -> dict[str, Any]:
        if "input" not in fields:
            raise ValueError("every job needs an 'input'")
        if self.user and not fields.get("user_id"):
            fields["user_id"] = self.user
        return {
            name: value for name, value in fields.items() if value is not None or name == "input"
        }

    def _follow_events(self, job: Job, deadline: float | None, notify: Update) -> Job:
        """Apply the job's events until its stream ends; the job as then read back.
        A 404 from the events path means this server has no stream: poll from then on."""
        read = 60.0 if deadline is None else min(max(deadline - time.monotonic(), 0.01), 60.0)
        timeout = httpx.Timeout(10.0, read=read)
        path = f"/api/jobs/{_segment(job.id)}/events"
        try:
            with self._http.stream(
                "GET", path, headers={"Accept": "text/event-stream"}, timeout=timeout
            ) as response:
                if response.status_code == 404:
                    self._events_supported = False
                    return job
                if response.status_code != 200:
                    response.read()
                    raise self._error(response)
                self._events_supported = True
                for event in parse_events(response.iter_lines()):
                    job = apply_event(job, event)
                    notify(job)
        except httpx.TimeoutException:
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(f"Job {job.id} is still {job.status}.", job) from None
        except httpx.TransportError:
            pass  # the stream broke: read the job and go on (by stream or poll)
        if deadline is not None and time.monotonic() >= deadline and not job.done:
            raise Timeout(f"Job {job.id} is still {job.status}.", job)
        fresh = self.get(job.id)  # the whole record, also what an event left out
        notify(fresh)
        return fresh

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        key: str | None = None,
        idempotent: bool | None = None,
    ) -> Any:
        response = self._send(
            method, path, json=json, params=params, key=key, idempotent=idempotent
        )
        return _json(response)

    def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        key: str | None = None,
        idempotent: bool | None = None,
        retry_500: bool = True,
        raise_for: bool = True,
    ) -> httpx.Response:
        """One request with retries; the answer, or its typed error (when `raise_for`)."""
        headers = dict(headers or {})
        if method == "POST" and idempotent is None:
            headers["Idempotency-Key"] = key or uuid.uuid4().hex  # the same for each retry
            idempotent = True
        idempotent = method == "GET" if idempotent is None else idempotent
        statuses = RETRY_STATUSES if retry_500 else RETRY_STATUSES - {500}
        attempt = 0
        while True:
            response: httpx.Response | None = None
            try:
                response = self._http.request(
                    method, path, json=json, params=params, headers=headers
                )
            except httpx.TransportError as exc:
                # Nothing reached the server after a refused connection: always safe.
                safe = idempotent or isinstance(exc, httpx.ConnectError)
                if attempt >= self.retries or not safe:
                    raise ConnectionFailed(f"{method} {self.url}{path}: {exc}") from exc
            else:
                code = response.status_code
                if code < 400 or (not raise_for and code < 500):
                    return response
                # A 503 is the database refusing before any write: safe to repeat.
                retryable = code in statuses and (idempotent or code == 503)
                if attempt >= self.retries or not retryable:
                    if not raise_for:
                        return response
                    raise self._error(response)
            time.sleep(self._delay(attempt, response))
            attempt += 1

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        """Exponential backoff, or the server's `Retry-After` on 503 (at most 30 s)."""
        delay = self.backoff * 2**attempt
        if response is not None and response.status_code == 503:
            retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            delay = max(delay, min(retry_after, 30.0))
        return delay

    def _error(self, response: httpx.Response) -> ZypherError:
        try:
            body = response.json()
        except ValueError:
            body = None
        fallback = f"{response.status_code} {response.reason_phrase}".strip()
        return error_for(response.status_code, body, response.headers.get("Retry-After"), fallback)


def _prediction_failed(response: httpx.Response) -> PredictionFailed:
    body = _json(response)
    message = error_message(body, f"{response.status_code} {response.reason_phrase}")
    prediction_id = body.get("prediction_id") if isinstance(body, dict) else None
    return PredictionFailed(message, response.status_code, body, prediction_id)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise ServerError(
            f"{response.status_code}: the answer is not JSON", response.status_code
        ) from exc


def _segment(value: str) -> str:
    """A job id as one path segment (an id with a slash must not reach another route)."""
    return quote(str(value), safe="")


def _on_change(on_update: Update | None) -> Update:
    """`on_update`, called only when something a person would see has changed."""
    last: list[tuple[Any, ...]] = []

    def notify(job: Job) -> None:
        seen = (job.status, job.queue_position, job.progress, job.progress_message)
        if on_update is not None and (not last or last[-1] != seen):
            last[:] = [seen]
            on_update(job)

    return notify


def _sleep_until(interval: float, deadline: float | None, job: Job) -> None:
    if deadline is not None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout(f"Job {job.id} is still {job.status}.", job)
        interval = min(interval, remaining)
    time.sleep(interval)
