"""Programs: created with their jobs in one transaction, shown with every job's result,
callback URLs guarded against SSRF, and results delivered with retries and recorded."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from django.db import connections
from rest_framework.test import APIClient

from devices.qpu.programs import QpuJob, create_qpu_program
from jobs.models import Job, Program, User
from jobs.programs import CallbackCourier
from jobs.queue import claim_next, finish_job
from tests.support.device_fixtures import CallbackReceiver

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def open_mode(settings: Any) -> None:
    settings.ZYPHER_OPEN_MODE = True
    settings.ZYPHER_CALLBACK_ALLOWED_HOSTS = ["127.0.0.1", "localhost", "::1"]
    settings.ZYPHER_CALLBACK_BACKOFF_SECONDS = 0.2
    settings.ZYPHER_CALLBACK_MAX_ATTEMPTS = 3


@pytest.fixture
def client() -> APIClient:
    return APIClient()


PROGRAM: dict[str, Any] = {
    "user_id": "alice",
    "priority": 5,
    "device_type": "qpu",
    "jobs": [
        {"instructions": ["h 0", "cx 0 1"], "shots": 100, "size": 4},
        {"instructions": [], "shots": 10, "size": 20},
    ],
    "callback_url": "http://127.0.0.1:9/results",
}


def test_a_program_and_its_jobs_are_created_together(client):
    response = client.post("/api/programs/", PROGRAM, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert len(body["job_ids"]) == 2 and body["priority"] == 5
    jobs = list(Job.objects.filter(program__public_id=body["id"]).order_by("id"))
    assert [str(job.public_id) for job in jobs] == body["job_ids"]
    assert [(job.kind, job.size, job.priority, job.device_type) for job in jobs] == [
        ("qpu", 4, 5, "qpu"),
        ("qpu", 20, 5, "qpu"),
    ]
    assert jobs[0].input == {"instructions": ["h 0", "cx 0 1"], "shots": 100}
    assert Program.objects.get().callback_status == "pending"


def test_a_bad_job_refuses_the_whole_program(client):
    bad = {**PROGRAM, "jobs": [PROGRAM["jobs"][0], {"instructions": [], "shots": 0}]}
    response = client.post("/api/programs/", bad, format="json")
    assert response.status_code == 400
    assert "jobs" in response.json()
    assert not Program.objects.exists() and not Job.objects.exists()


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/hook",
        "file:///etc/passwd",
        "gopher://127.0.0.1/",
        "http://example.com/hook",
    ],
)
def test_a_callback_to_a_host_off_the_allow_list_is_refused(client, url):
    response = client.post("/api/programs/", {**PROGRAM, "callback_url": url}, format="json")
    # Not http(s): malformed (400); a well-formed URL this gateway may not call: 403 (issue 17).
    assert response.status_code == (403 if url.startswith("http") else 400)
    assert "callback_url" in response.json()
    assert not Program.objects.exists()


def test_get_shows_the_state_and_every_jobs_result(client):
    created = client.post("/api/programs/", PROGRAM, format="json").json()
    body = client.get(f"/api/programs/{created['id']}/").json()
    assert body["state"] == "queued" and body["callback"]["status"] == "pending"
    claim = claim_next("qpu", "sim", 20)
    assert claim is not None
    finish_job(claim, succeeded=True, duration=0.1, result={"counts": {"0000": 100}})
    body = client.get(f"/api/programs/{created['id']}/").json()
    assert body["state"] == "running"
    assert [job["status"] for job in body["jobs"]] == ["succeeded", "queued"]
    assert body["jobs"][0]["result"] == {"counts": {"0000": 100}}
    assert client.get("/api/programs/6f0c0000-0000-4000-8000-000000000000/").status_code == 404


def test_programs_are_private_without_open_mode(client, settings):
    created = client.post("/api/programs/", PROGRAM, format="json").json()
    settings.ZYPHER_OPEN_MODE = False
    assert client.get(f"/api/programs/{created['id']}/").status_code == 401
    bob = User.objects.create(username="bob")
    client.force_authenticate(bob)
    assert client.get(f"/api/programs/{created['id']}/").status_code == 404


def test_an_idempotency_key_returns_the_first_program(client):
    first = client.post("/api/programs/", PROGRAM, format="json", HTTP_IDEMPOTENCY_KEY="p-1")
    again = client.post("/api/programs/", PROGRAM, format="json", HTTP_IDEMPOTENCY_KEY="p-1")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["job_ids"] == first.json()["job_ids"]
    assert Program.objects.count() == 1 and Job.objects.count() == 2


# --- delivery (what each dispatcher runs) ---


def finished_program(url: str) -> Program:
    owner = User.objects.create(username="carol")
    program, _, _ = create_qpu_program(
        owner, [QpuJob(["x 0"], 10, 1)], device_type="qpu", callback_url=url
    )
    claim = claim_next("qpu", "sim", 1)
    assert claim is not None
    finish_job(claim, succeeded=True, duration=0.1, result={"counts": {"1": 10}})
    return program


def deliver(courier: CallbackCourier) -> None:
    async def db(function: Any, *args: Any) -> Any:
        return function(*args)

    async def run() -> None:
        try:
            await courier.deliver_due(db)
        finally:
            connections.close_all()  # this event loop's own connection

    asyncio.run(run())


@pytest.fixture
def async_orm(transactional_db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # deliver() calls the ORM inside its event loop (the dispatcher uses a thread), on a
    # connection of its own: the data must be committed, hence transactional_db.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def test_results_are_retried_with_backoff_until_delivered(async_orm):
    receiver = CallbackReceiver(fail_first=1)
    try:
        program = finished_program(receiver.url)
        courier = CallbackCourier()
        deliver(courier)
        program.refresh_from_db()
        assert (program.callback_status, program.callback_attempts) == ("pending", 1)
        assert program.callback_error == "HTTP 500"
        deliver(courier)  # within the backoff: no attempt
        assert receiver.attempts == 1
        time.sleep(0.25)
        deliver(courier)
        program.refresh_from_db()
        assert (program.callback_status, program.callback_attempts) == ("delivered", 2)
        assert program.delivered_at is not None
        [body] = receiver.bodies
        assert body["program_id"] == str(program.public_id)
        assert body["jobs"][0]["result"] == {"counts": {"1": 10}}
    finally:
        receiver.close()


def test_a_callback_that_keeps_failing_is_recorded_as_failed_with_the_reason(async_orm):
    receiver = CallbackReceiver(fail_first=100)
    try:
        program = finished_program(receiver.url)
        courier = CallbackCourier()
        deadline = time.monotonic() + 10
        while program.callback_status == "pending" and time.monotonic() < deadline:
            deliver(courier)
            time.sleep(0.1)
            program.refresh_from_db()
        assert program.callback_status == "failed"
        assert program.callback_attempts == 3 and program.callback_error == "HTTP 500"
        assert receiver.attempts == 3
    finally:
        receiver.close()


def test_a_program_with_unfinished_jobs_is_not_called_back_yet(async_orm):
    receiver = CallbackReceiver()
    try:
        owner = User.objects.create(username="dave")
        program, _, _ = create_qpu_program(
            owner, [QpuJob([], 1, 0)] * 2, device_type="qpu", callback_url=receiver.url
        )
        claim = claim_next("qpu", "sim", 1)
        assert claim is not None
        finish_job(claim, succeeded=True, duration=0.1, result={})
        deliver(CallbackCourier())
        program.refresh_from_db()
        assert program.callback_attempts == 0 and receiver.attempts == 0
    finally:
        receiver.close()
