# ruff: noqa: F811 - the fixtures imported from tests.support.device_fixtures are parameters here
"""A report whose result no JSON column can hold (NaN, Infinity, U+0000, oversize, nested
too deep) fails its job with an error that says why: no 500, no wedged job or device,
and the gateway, the dispatcher and the agent stay up."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import requests

from devices import pool, protocol
from devices.models import Device
from jobs.models import FairShareAccount, Job, User
from jobs.queue import JobSpec, submit_jobs
from tests.devices.poison_handlers import POISON_HANDLERS
from tests.support.device_fixtures import (  # noqa: F401 - fixtures used by name
    DEVICE_TOKEN,
    device_env,
    device_gateway,
    device_settings,
    start_agent,
    start_device_dispatcher,
)
from tests.support.processes import Gateway, free_port, wait_until

pytestmark = pytest.mark.e2e


def queue_job(kind: str = "noop", device_type: str = "qpu", job_input: Any = None) -> Job:
    owner, _ = User.objects.get_or_create(username="poisoner")
    spec = JobSpec(kind=kind, input=job_input or {"n": 1}, device_type=device_type)
    [job], _ = submit_jobs(owner, [spec])
    return job


def post_report(gateway: Gateway, device_id: str, secret: str, body: bytes) -> requests.Response:
    path = f"/api/devices/{device_id}/reports/"
    headers = protocol.sign(secret, "POST", path, body)
    return requests.post(gateway.url + path, data=body, headers=headers, timeout=30)


def deeply_nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


POISON_REPORTS: list[tuple[str, dict[str, Any], str]] = [
    ("nan", {"result": {"mean": float("nan")}}, "NaN"),
    ("infinity", {"result": [1.0, float("-inf")]}, "-inf at $[1]"),
    ("nul in a value", {"result": {"text": "a\x00b"}}, "NUL character at $.text"),
    ("nul in a key", {"result": {"a\x00": 1}}, "NUL character in a key"),
    ("oversize", {"result": "x" * (protocol.MAX_RESULT_BYTES + 1)}, "over the limit"),
    ("nested too deep", {"result": deeply_nested(200)}, "nesting deeper than 64 levels"),
]


def test_unstorable_results_fail_their_job_with_the_reason_and_free_the_device(
    device_gateway,
):
    """Reports as a hostile or older agent may send them, straight to the gateway."""
    registered = device_gateway.post(
        "/api/devices/",
        {"id": "qpu-poison", "type": "qpu", "size": 4, "url": f"http://127.0.0.1:{free_port()}"},
        headers={"X-Zypher-Device-Token": DEVICE_TOKEN},
    )
    assert registered.status_code == 201, registered.text
    secret = registered.json()["secret"]
    Device.objects.filter(name="qpu-poison").update(state="ready")

    def claimed_job() -> tuple[Job, int]:
        job = queue_job()
        claimed = pool.claim_for_device("qpu-poison")
        assert claimed is not None
        _, claim = claimed
        assert claim.public_id == str(job.public_id)
        return job, claim.fencing_token

    def finished(job: Job, token: int, **fields: Any) -> bytes:
        report = {
            "report": "job_finished",
            "job_id": str(job.public_id),
            "fencing_token": token,
            "succeeded": True,
            "duration": 0.5,
            "state": "ready",
            **fields,
        }
        return json.dumps(report).encode()  # NaN and Infinity as Python writes them

    for case, fields, reason in POISON_REPORTS:
        job, token = claimed_job()
        answer = post_report(device_gateway, "qpu-poison", secret, finished(job, token, **fields))
        assert answer.status_code == 200, (case, answer.status_code, answer.text)
        job.refresh_from_db()
        assert job.status == "failed", case
        assert job.result is None, case
        assert job.error.startswith("the result") and reason in job.error, (case, job.error)
        device = Device.objects.get(name="qpu-poison")
        assert device.state == "ready" and device.current_job_id is None, case

    # A failure whose error text holds U+0000 is recorded, the character replaced.
    job, token = claimed_job()
    body = finished(job, token, succeeded=False, error="exploded\x00here")
    answer = post_report(device_gateway, "qpu-poison", secret, body)
    assert answer.status_code == 200, answer.text
    job.refresh_from_db()
    assert job.status == "failed" and "exploded" in job.error and "\x00" not in job.error

    # A duration of NaN or Infinity would poison the user's virtual time for good.
    for duration in (float("nan"), float("inf")):
        job, token = claimed_job()
        body = finished(job, token, duration=duration, result={"ok": 1})
        answer = post_report(device_gateway, "qpu-poison", secret, body)
        assert answer.status_code == 200, answer.text
        job.refresh_from_db()
        assert job.status == "succeeded" and job.result == {"ok": 1}
        assert job.duration is not None and math.isfinite(job.duration)
    for account in FairShareAccount.objects.all():
        assert math.isfinite(account.virtual_time), account
        assert math.isfinite(account.served_seconds), account

    assert device_gateway.get("/api/health/").status_code == 200
    assert not Job.objects.filter(status__in=["queued", "running"]).exists()


@pytest.fixture
def poison_env(device_env: dict[str, str]) -> dict[str, str]:
    handlers = {**json.loads(device_env["ZYPHER_HANDLERS"]), **POISON_HANDLERS}
    return {"ZYPHER_HANDLERS": json.dumps(handlers)}


def test_a_real_agent_whose_job_returns_poison_fails_that_job_and_carries_on(
    device_gateway, start_agent, start_device_dispatcher, poison_env
):
    agent = start_agent("cpu-poison", size=0, device_type="cpu-poison", **poison_env)
    agent.command("start")
    dispatcher = start_device_dispatcher(**poison_env)
    expected = {"nan_result": "NaN", "nul_result": "NUL character", "huge_result": "over the limit"}
    jobs = {kind: queue_job(kind, "cpu-poison") for kind in expected}
    healthy = queue_job("noop", "cpu-poison", {"still": "working"})

    def settled() -> bool:
        return not Job.objects.filter(status__in=["queued", "running"]).exists()

    wait_until(settled, 60, "every job to end")
    for kind, reason in expected.items():
        job = Job.objects.get(pk=jobs[kind].pk)
        assert job.status == "failed" and reason in job.error, (kind, job.status, job.error)
        assert job.attempts == 1, (kind, job.attempts)
    healthy.refresh_from_db()
    assert healthy.status == "succeeded" and healthy.result == {"still": "working"}
    assert agent.process.process.poll() is None
    assert dispatcher.process.poll() is None
    device = Device.objects.get(name="cpu-poison")
    assert device.state == "ready" and device.current_job_id is None
    assert agent.command("status").body["result"]["unreported"] == []
