"""Submitting, reading, listing and cancelling jobs through the API (open mode)."""

from __future__ import annotations

import uuid

import pytest
from django.urls import clear_script_prefix, set_script_prefix
from rest_framework.test import APIClient

from jobs.models import FairShareAccount, Job, JobStatus
from tests.support.api_helpers import JOBS_URL, submit

pytest_plugins = ["tests.support.api_fixtures"]

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("open_mode")]


def queued_count(username: str, device_type: str = "cpu") -> int:
    return FairShareAccount.objects.get(
        user__username=username, pool__device_type=device_type
    ).queued_count


def test_each_job_of_a_list_gets_the_absolute_url_of_its_own_detail(
    api_client: APIClient,
) -> None:
    # Served under a prefix (a proxy's sub-path): every URL carries it.
    set_script_prefix("/gateway/")
    try:
        response = submit(api_client, [{"user_id": "alice", "input": n} for n in range(3)])
    finally:
        clear_script_prefix()

    assert response.status_code == 201
    jobs = response.json()
    assert [job["url"] for job in jobs] == [
        f"http://testserver/gateway/api/jobs/{job['id']}/" for job in jobs
    ]
    assert len({job["id"] for job in jobs}) == 3


def test_a_submitted_job_is_queued_with_a_uuid_and_a_url_to_its_detail(
    api_client: APIClient,
) -> None:
    response = submit(api_client, {"user_id": "alice", "input": 5})

    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "queued"
    assert body["user_id"] == "alice"
    assert body["kind"] == "limited_f"
    job_id = uuid.UUID(body["id"])
    assert body["url"].endswith(f"/api/jobs/{job_id}/")
    detail = api_client.get(body["url"])
    assert detail.status_code == 200
    assert detail.json()["id"] == str(job_id)


def test_submitting_runs_nothing_the_job_stays_queued(api_client: APIClient) -> None:
    job_id = submit(api_client, {"user_id": "alice", "input": 5}).json()["id"]

    job = Job.objects.get(public_id=job_id)
    assert job.status == JobStatus.QUEUED
    assert job.started_at is None and job.result is None and job.attempts == 0
    assert api_client.get(f"{JOBS_URL}{job_id}/").json()["status"] == "queued"


def test_a_submit_keeps_kind_priority_and_device_type(api_client: APIClient) -> None:
    body = {
        "user_id": "alice",
        "input": {"x": [1, 2]},
        "kind": "noop",
        "priority": 7,
        "device_type": "gpu",
    }
    response = submit(api_client, body)

    assert response.status_code == 201
    job = Job.objects.get(public_id=response.json()["id"])
    assert (job.kind, job.priority, job.device_type, job.input) == ("noop", 7, "gpu", {"x": [1, 2]})


def test_a_bulk_submit_creates_every_job_in_one_request(api_client: APIClient) -> None:
    items = [{"user_id": "alice", "input": n} for n in range(5)]
    response = submit(api_client, items)

    assert response.status_code == 201
    body = response.json()
    assert isinstance(body, list) and len(body) == 5
    assert [job["input"] for job in body] == [0, 1, 2, 3, 4]
    assert {job["status"] for job in body} == {"queued"}
    assert Job.objects.filter(owner__username="alice").count() == 5
    assert queued_count("alice") == 5


def test_queue_position_counts_the_users_own_jobs_ahead(api_client: APIClient) -> None:
    ids = [submit(api_client, {"user_id": "alice", "input": n}).json()["id"] for n in range(3)]

    positions = [api_client.get(f"{JOBS_URL}{job_id}/").json()["queue_position"] for job_id in ids]

    assert positions == [0, 1, 2]


def test_queue_position_puts_higher_priority_first_within_a_user(api_client: APIClient) -> None:
    low = submit(api_client, {"user_id": "alice", "input": 1}).json()["id"]
    high = submit(api_client, {"user_id": "alice", "input": 2, "priority": 50}).json()["id"]

    assert api_client.get(f"{JOBS_URL}{high}/").json()["queue_position"] == 0
    assert api_client.get(f"{JOBS_URL}{low}/").json()["queue_position"] == 1


def test_a_second_users_first_job_interleaves_instead_of_waiting_behind_the_backlog(
    api_client: APIClient,
) -> None:
    for n in range(20):
        submit(api_client, {"user_id": "heavy", "input": n})
    light = submit(api_client, {"user_id": "light", "input": 0}).json()["id"]

    position = api_client.get(f"{JOBS_URL}{light}/").json()["queue_position"]

    assert position <= 1


def test_queue_position_is_null_once_the_job_is_not_queued(api_client: APIClient) -> None:
    job_id = submit(api_client, {"user_id": "alice", "input": 1}).json()["id"]
    api_client.post(f"{JOBS_URL}{job_id}/cancel/")

    assert api_client.get(f"{JOBS_URL}{job_id}/").json()["queue_position"] is None


def test_the_list_filters_by_user_and_status_and_is_paginated(api_client: APIClient) -> None:
    alice_ids = [
        submit(api_client, {"user_id": "alice", "input": n}).json()["id"] for n in range(3)
    ]
    submit(api_client, {"user_id": "bob", "input": 9})
    api_client.post(f"{JOBS_URL}{alice_ids[0]}/cancel/")

    queued = api_client.get(JOBS_URL, {"user_id": "alice", "status": "queued"}).json()
    assert len(queued["results"]) == 2
    assert {job["id"] for job in queued["results"]} == set(alice_ids[1:])
    assert {job["user_id"] for job in queued["results"]} == {"alice"}

    cancelled = api_client.get(JOBS_URL, {"user_id": "alice", "status": "cancelled"}).json()
    assert [job["id"] for job in cancelled["results"]] == [alice_ids[0]]

    first_page = api_client.get(JOBS_URL, {"user_id": "alice", "limit": "2"}).json()
    assert len(first_page["results"]) == 2
    assert first_page["next"] is not None
    second_page = api_client.get(first_page["next"]).json()
    assert len(second_page["results"]) == 1
    listed = [job["id"] for job in first_page["results"] + second_page["results"]]
    assert listed == list(reversed(alice_ids)), "newest first, every job once"


def test_the_list_refuses_an_unknown_status(api_client: APIClient) -> None:
    response = api_client.get(JOBS_URL, {"user_id": "alice", "status": "done"})

    assert response.status_code == 400
    assert "status" in response.json()


def test_cancelling_a_queued_job_answers_200_and_cancelling_again_answers_409(
    api_client: APIClient,
) -> None:
    job_id = submit(api_client, {"user_id": "alice", "input": 1}).json()["id"]

    first = api_client.post(f"{JOBS_URL}{job_id}/cancel/")
    assert first.status_code == 200
    assert first.json()["status"] == "cancelled"
    assert first.json()["finished_at"] is not None
    assert Job.objects.get(public_id=job_id).status == JobStatus.CANCELLED

    again = api_client.post(f"{JOBS_URL}{job_id}/cancel/")
    assert again.status_code == 409
    assert "cancelled" in again.json()["error"]


def test_cancelling_a_running_job_answers_409_and_leaves_it_running(api_client: APIClient) -> None:
    job_id = submit(api_client, {"user_id": "alice", "input": 1}).json()["id"]
    Job.objects.filter(public_id=job_id).update(status=JobStatus.RUNNING)

    response = api_client.post(f"{JOBS_URL}{job_id}/cancel/")

    assert response.status_code == 409
    assert "error" in response.json()
    assert Job.objects.get(public_id=job_id).status == JobStatus.RUNNING


def test_the_accounts_queued_count_follows_submits_and_cancels(api_client: APIClient) -> None:
    first = submit(api_client, {"user_id": "alice", "input": 1}).json()["id"]
    assert queued_count("alice") == 1
    submit(api_client, [{"user_id": "alice", "input": n} for n in range(3)])
    assert queued_count("alice") == 4

    api_client.post(f"{JOBS_URL}{first}/cancel/")
    assert queued_count("alice") == 3
    api_client.post(f"{JOBS_URL}{first}/cancel/")  # 409: must not count twice
    assert queued_count("alice") == 3


def test_the_hand_written_job_representation_matches_the_declared_fields():
    from jobs.api.serializers import JobDetailSerializer, JobSerializer

    response = APIClient().post("/api/jobs/", {"user_id": "shape", "input": 1}, format="json")
    assert set(response.json()) == set(JobSerializer().fields)
    detail = APIClient().get(response.json()["url"]).json()
    assert set(detail) == set(JobDetailSerializer().fields)
    assert detail["created_at"].endswith("Z") and detail["started_at"] is None
