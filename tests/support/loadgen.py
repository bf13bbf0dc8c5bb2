"""HTTP load for the soak test and the fault drill: client processes that submit jobs.

Plain Python (no pytest, no Django), so that tests and bench/ drive the server the same
way. Each planned job is one `POST /api/jobs/` of the test handler `sleep` with a unique
`tag` (the handler logs the tag when it completes) and the tag as `Idempotency-Key`: a
client that gets a 503, or loses the connection, retries the same request until it is
accepted, so a request that was committed but whose answer was lost is not submitted
twice. Every answer's status is counted; an answer that is neither 2xx nor a JSON 503
is recorded as a protocol error.
"""

from __future__ import annotations

import multiprocessing
import random
import time
from dataclasses import dataclass, field
from typing import Any

import requests


@dataclass(frozen=True)
class PlannedJob:
    user: str
    tag: str
    seconds: float


@dataclass
class ClientReport:
    """What one client process saw."""

    accepted: dict[str, str] = field(default_factory=dict)  # tag -> public id
    latencies: list[float] = field(default_factory=list)  # seconds, first attempt's answer
    statuses: dict[str, int] = field(default_factory=dict)  # "201", "503", "connection"...
    protocol_errors: list[str] = field(default_factory=list)  # 500s, non-JSON errors
    given_up: list[str] = field(default_factory=list)  # tags never accepted before deadline
    started: float = 0.0
    finished: float = 0.0

    def merge(self, other: ClientReport) -> None:
        self.accepted.update(other.accepted)
        self.latencies += other.latencies
        for key, count in other.statuses.items():
            self.statuses[key] = self.statuses.get(key, 0) + count
        self.protocol_errors += other.protocol_errors
        self.given_up += other.given_up
        self.started = min(self.started or other.started, other.started)
        self.finished = max(self.finished, other.finished)


def plan_weighted_jobs(
    weights: dict[str, int], total: int, seconds: float, seed: int = 1
) -> list[PlannedJob]:
    """`total` jobs shared between users in proportion to their weights, interleaved.

    Each user asks for its weight's share of the work, so under a fair scheduler every
    user stays backlogged until near the end and the fairness window is long.
    """
    weight_sum = sum(weights.values())
    counts = {user: max(1, round(total * w / weight_sum)) for user, w in weights.items()}
    jobs = [
        PlannedJob(user, f"{user}-{index}", seconds)
        for user, count in counts.items()
        for index in range(count)
    ]
    random.Random(seed).shuffle(jobs)
    return jobs


def _answer_is_clean_503(response: requests.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and isinstance(body.get("error"), str)


def submit_all(
    url: str, jobs: list[PlannedJob], deadline: float, interval: float = 0.0
) -> ClientReport:
    """Submit `jobs` one request each, retrying refusals with the same key until `deadline`
    (a `time.time()` value); `interval`: seconds between two jobs (a steady trickle)."""
    report = ClientReport(started=time.time())
    session = requests.Session()
    for job in jobs:
        if interval:
            time.sleep(interval)
        body: dict[str, Any] = {
            "user_id": job.user,
            "kind": "sleep",
            "input": {"tag": job.tag, "seconds": job.seconds},
        }
        first_attempt = True
        while True:
            started = time.perf_counter()
            response: requests.Response | None = None
            try:
                response = session.post(
                    url + "/api/jobs/",
                    json=body,
                    headers={"Idempotency-Key": job.tag},
                    timeout=30,
                )
            except requests.RequestException:
                key = "connection"
            else:
                key = str(response.status_code)
            elapsed = time.perf_counter() - started
            report.statuses[key] = report.statuses.get(key, 0) + 1
            if first_attempt:
                report.latencies.append(elapsed)
                first_attempt = False
            if response is not None and response.status_code in (200, 201):
                report.accepted[job.tag] = response.json()["id"]
                break
            if response is not None and not (
                response.status_code == 503 and _answer_is_clean_503(response)
            ):
                report.protocol_errors.append(
                    f"{job.tag}: {response.status_code} {response.text[:300]!r}"
                )
            if time.time() > deadline:
                report.given_up.append(job.tag)
                break
            retry_after = 0.2
            if response is not None and response.headers.get("Retry-After", "").isdigit():
                retry_after = min(float(response.headers["Retry-After"]), 1.0)
            time.sleep(retry_after)
    report.finished = time.time()
    return report


def _client_main(
    url: str, jobs: list[PlannedJob], deadline: float, interval: float, out: Any
) -> None:
    try:
        out.put(submit_all(url, jobs, deadline, interval))
    except Exception as exc:  # report instead of leaving the parent waiting
        out.put(exc)


class Clients:
    """Client processes submitting a plan concurrently; `join()` merges their reports."""

    def __init__(
        self,
        url: str,
        jobs: list[PlannedJob],
        processes: int,
        timeout: float,
        interval: float = 0.0,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self.out = context.Queue()
        self.timeout = timeout
        deadline = time.time() + timeout
        self.processes = [
            context.Process(
                target=_client_main, args=(url, jobs[n::processes], deadline, interval, self.out)
            )
            for n in range(processes)
        ]
        for process in self.processes:
            process.start()

    def join(self) -> ClientReport:
        merged = ClientReport()
        for _ in self.processes:
            reported = self.out.get(timeout=self.timeout + 60)
            if isinstance(reported, Exception):
                raise RuntimeError(f"a client process failed: {reported!r}")
            merged.merge(reported)
        for process in self.processes:
            process.join(timeout=10)
        return merged
