"""Admission control: a user's queued jobs are capped (`ZYPHER_MAX_QUEUED_PER_USER`) on every
submit route, and a submit that would pass the cap is refused whole with a 429."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db.models import Sum
from django.test import Client
from rest_framework.test import APIClient

from jobs.models import FairShareAccount, Job, Program
from jobs.predict.hub import close_db_connections
from jobs.queue import cancel_job
from tests.support.api_helpers import submit

pytest_plugins = ["tests.support.api_fixtures"]

pytestmark = [pytest.mark.usefixtures("open_mode")]

LIMIT = 3


@pytest.fixture(autouse=True)
def small_limit(settings: Any) -> None:
    settings.ZYPHER_MAX_QUEUED_PER_USER = LIMIT


def queued(username: str) -> int:
    total = FairShareAccount.objects.filter(user__username=username).aggregate(
        total=Sum("queued_count")
    )["total"]
    return total or 0


def jobs_of(username: str) -> int:
    return Job.objects.filter(owner__username=username).count()


def assert_refused_naming_the_limit(response: Any, *, queued_before: int, requested: int) -> None:
    assert response.status_code == 429, response.content
    assert int(response["Retry-After"]) > 0
    body = response.json()
    assert body["limit"] == "max_queued_per_user"
    assert body["max_queued"] == LIMIT
    assert body["queued"] == queued_before
    assert body["requested"] == requested
    assert "ZYPHER_MAX_QUEUED_PER_USER" in body["error"]


@pytest.mark.django_db
def test_submits_up_to_the_limit_are_queued_and_the_next_is_refused_with_429(
    api_client: APIClient,
) -> None:
    for _ in range(LIMIT):
        assert submit(api_client, {"user_id": "alice", "input": 1}).status_code == 201

    response = submit(api_client, {"user_id": "alice", "input": 1})

    assert_refused_naming_the_limit(response, queued_before=LIMIT, requested=1)
    assert jobs_of("alice") == LIMIT and queued("alice") == LIMIT


@pytest.mark.django_db
def test_a_bulk_submit_that_would_cross_the_limit_is_refused_whole(api_client: APIClient) -> None:
    assert submit(api_client, {"user_id": "alice", "input": 1}).status_code == 201

    response = submit(api_client, [{"user_id": "alice", "input": i} for i in range(LIMIT)])

    assert_refused_naming_the_limit(response, queued_before=1, requested=LIMIT)
    assert jobs_of("alice") == 1 and queued("alice") == 1
    # What fits is still admitted.
    fitting = [{"user_id": "alice", "input": i} for i in range(LIMIT - 1)]
    assert submit(api_client, fitting).status_code == 201
    assert queued("alice") == LIMIT


@pytest.mark.django_db
def test_the_limit_counts_the_users_jobs_in_every_pool_and_no_other_users(
    api_client: APIClient,
) -> None:
    submit(api_client, [{"user_id": "alice", "input": 1, "device_type": "cpu"}] * 2)
    submit(api_client, {"user_id": "alice", "input": 1, "device_type": "gpu"})

    refused = submit(api_client, {"user_id": "alice", "input": 1, "device_type": "tpu"})

    assert_refused_naming_the_limit(refused, queued_before=LIMIT, requested=1)
    assert submit(api_client, {"user_id": "bob", "input": 1}).status_code == 201


@pytest.mark.django_db
def test_jobs_that_leave_the_queue_make_room_again(api_client: APIClient) -> None:
    ids = [submit(api_client, {"user_id": "alice", "input": i}).json()["id"] for i in range(LIMIT)]
    assert submit(api_client, {"user_id": "alice", "input": 1}).status_code == 429

    assert cancel_job(Job.objects.get(public_id=ids[0]))

    assert submit(api_client, {"user_id": "alice", "input": 1}).status_code == 201
    assert queued("alice") == LIMIT


@pytest.mark.django_db
def test_a_retry_of_an_accepted_keyed_submit_gets_its_jobs_even_at_the_limit(
    api_client: APIClient,
) -> None:
    first = submit(api_client, {"user_id": "alice", "input": 1}, **{"Idempotency-Key": "k1"})
    submit(api_client, [{"user_id": "alice", "input": 1}] * (LIMIT - 1))

    retry = submit(api_client, {"user_id": "alice", "input": 1}, **{"Idempotency-Key": "k1"})

    assert retry.status_code == 200
    assert retry.json()["id"] == first.json()["id"]


@pytest.mark.django_db
def test_a_program_that_would_cross_the_limit_is_refused_and_leaves_no_program(
    api_client: APIClient,
) -> None:
    jobs = [{"instructions": [], "shots": 10}] * (LIMIT + 1)

    response = api_client.post("/api/programs/", {"user_id": "alice", "jobs": jobs}, format="json")

    assert_refused_naming_the_limit(response, queued_before=0, requested=LIMIT + 1)
    assert not Program.objects.exists() and jobs_of("alice") == 0


@pytest.mark.django_db
def test_the_qpu_routes_refuse_a_job_past_the_limit(api_client: APIClient) -> None:
    for index in range(LIMIT):
        body = {"id": f"j{index}", "user_id": "alice", "program_id": "p1"}
        assert api_client.post("/jobs", body, format="json").status_code == 201

    response = api_client.post(
        "/jobs", {"id": "over", "user_id": "alice", "program_id": "p2"}, format="json"
    )

    assert_refused_naming_the_limit(response, queued_before=LIMIT, requested=1)
    assert jobs_of("alice") == LIMIT
    assert Program.objects.count() == 1  # p2 was not created for the refused job
    # A retry of an accepted job by the client's id still answers with it.
    assert (
        api_client.post("/jobs", {"id": "j0", "user_id": "alice"}, format="json").status_code == 200
    )


@pytest.fixture
def predict_threads() -> Iterator[None]:
    """/predict writes from its own thread pool: close its connections before the test
    database is dropped."""
    yield
    close_db_connections()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("predict_threads")
def test_predict_refuses_a_prediction_past_the_limit_with_429() -> None:
    client = Client()
    for _ in range(LIMIT):
        answer = client.post(
            "/predict",
            {"input": "x", "user_id": "alice"},
            content_type="application/json",
            headers={"Async-Mode": "true"},
        )
        assert answer.status_code == 202, answer.content

    response = client.post(
        "/predict",
        {"input": "x", "user_id": "alice"},
        content_type="application/json",
        headers={"Async-Mode": "true"},
    )

    assert_refused_naming_the_limit(response, queued_before=LIMIT, requested=1)
    assert jobs_of("alice") == LIMIT


def test_the_schema_documents_429_on_the_submit_operations(api_client: APIClient, db: None) -> None:
    schema = api_client.get("/api/schema/", {"format": "json"}).json()

    for path in ("/api/jobs/", "/api/programs/"):
        refusal = schema["paths"][path]["post"]["responses"]["429"]
        assert "ZYPHER_MAX_QUEUED_PER_USER" in refusal["description"]
        assert "application/json" in refusal["content"]
