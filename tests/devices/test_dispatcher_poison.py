"""Poison never spreads: a result the database cannot store fails that job, with the
reason, and the dispatcher carries on with the next job (issue 12)."""

from __future__ import annotations

from functools import partial

import pytest

from jobs.models import Job
from jobs.results import storable_result
from tests.conftest import on_postgres
from tests.support.processes import wait_until

pytestmark = pytest.mark.e2e


def _ended(job_id: str) -> Job | None:
    job = Job.objects.get(public_id=job_id)
    return job if job.status in ("succeeded", "failed") else None


def test_results_the_database_cannot_store_fail_their_job_and_the_dispatcher_carries_on(
    gateway, start_dispatcher
):
    dispatcher = start_dispatcher(devices=1, ZYPHER_MAX_RESULT_BYTES="100000")
    poison = {
        "infinity": {"user_id": "m", "input": 1e200},  # limited_f squares it: inf
        "nan": {"user_id": "m", "kind": "not_a_number", "input": 1},
        "nul": {"user_id": "m", "kind": "nul_string", "input": 1},
        "huge": {"user_id": "m", "kind": "huge", "input": {"bytes": 200_000}},
        "nul_error": {"user_id": "m", "kind": "nul_error", "input": 1},
    }
    ids = {}
    for name, body in poison.items():
        response = gateway.post("/api/jobs/", body)
        assert response.status_code == 201, response.text
        ids[name] = response.json()["id"]
    normal = gateway.post("/api/jobs/", {"user_id": "n", "kind": "sleep", "input": {}}).json()

    done = wait_until(lambda: _ended(normal["id"]), 60, "the normal job to end")
    assert done.status == "succeeded", done.error
    errors = {}
    for name, job_id in ids.items():
        job = wait_until(partial(_ended, job_id), 30, f"the {name} job to end")
        if name == "infinity" and on_postgres():
            # jsonb keeps 1e200 as an exact number: it comes back an int, squared exactly.
            assert job.status == "succeeded" and job.result["y"] == 10**400, job.error
            continue
        assert job.status == "failed" and job.result is None, (name, job.status)
        errors[name] = job.error
    if not on_postgres():
        assert "inf" in errors["infinity"] and "$.y" in errors["infinity"]
    assert "NaN" in errors["nan"]
    assert "NUL" in errors["nul"]
    assert "100000" in errors["huge"] and "ZYPHER_MAX_RESULT_BYTES" in errors["huge"]
    assert (
        errors["nul_error"].startswith("ValueError: bad byte") and "\x00" not in errors["nul_error"]
    )
    assert dispatcher.process.poll() is None, dispatcher.log_text()[-3000:]
    # The device is still in service: the next job runs too.
    again = gateway.post("/api/jobs/", {"user_id": "n", "kind": "sleep", "input": {}}).json()
    assert wait_until(lambda: _ended(again["id"]), 30, "another job").status == "succeeded"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"y": float("inf")}, "inf at $.y"),
        ([1, float("-inf")], "-inf at $[1]"),
        ({"a": {"b": float("nan")}}, "NaN at $.a.b"),
        ({"k": "a\x00b"}, "NUL character at $.k"),
        ({"a\x00": 1}, "NUL character in a key at $"),
        ({"s": "\ud800"}, "not valid Unicode at $.s"),
        ({1, 2}, "set"),
    ],
)
def test_storable_result_says_why_a_result_cannot_be_stored(value, reason):
    error = storable_result(value)
    assert error is not None and reason in error, error


def test_storable_results_pass(settings):
    settings.ZYPHER_MAX_RESULT_BYTES = 64
    assert storable_result({"x": 1.5, "y": [None, True, "ok"], "é": "ü"}) is None
    error = storable_result({"blob": "x" * 100})
    assert error is not None and "over the limit" in error
