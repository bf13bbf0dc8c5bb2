"""A submit retried with the same Idempotency-Key returns what the first attempt created."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from rest_framework.test import APIClient

from jobs.models import FairShareAccount, Job, User
from tests.support.api_helpers import client_with_token, submit

pytest_plugins = ["tests.support.api_fixtures"]

pytestmark = pytest.mark.django_db

KEY = {"Idempotency-Key": "order-42"}


def queued_count(username: str) -> int:
    return FairShareAccount.objects.get(user__username=username).queued_count


@pytest.mark.usefixtures("open_mode")
def test_a_retried_submit_returns_the_original_job_with_200_and_creates_nothing(
    api_client: APIClient,
) -> None:
    first = submit(api_client, {"user_id": "alice", "input": 1}, **KEY)
    assert first.status_code == 201

    retry = submit(api_client, {"user_id": "alice", "input": 1}, **KEY)

    assert retry.status_code == 200
    assert retry.json()["id"] == first.json()["id"]
    assert retry.json()["url"] == first.json()["url"]
    assert Job.objects.count() == 1
    assert queued_count("alice") == 1


@pytest.mark.usefixtures("open_mode")
def test_a_retry_with_a_different_body_still_returns_the_original_job(
    api_client: APIClient,
) -> None:
    first = submit(api_client, {"user_id": "alice", "input": 1}, **KEY).json()

    retry = submit(api_client, {"user_id": "alice", "input": 2, "priority": 9}, **KEY)

    assert retry.status_code == 200
    assert retry.json()["id"] == first["id"]
    assert retry.json()["input"] == 1
    assert Job.objects.count() == 1


@pytest.mark.usefixtures("open_mode")
def test_a_retry_returns_the_original_job_even_after_it_was_cancelled(
    api_client: APIClient,
) -> None:
    first = submit(api_client, {"user_id": "alice", "input": 1}, **KEY).json()
    api_client.post(f"{first['url']}cancel/")

    retry = submit(api_client, {"user_id": "alice", "input": 1}, **KEY)

    assert retry.status_code == 200
    assert retry.json()["id"] == first["id"]
    assert retry.json()["status"] == "cancelled"
    assert Job.objects.count() == 1


@pytest.mark.usefixtures("open_mode")
def test_submits_without_a_key_are_never_deduplicated(api_client: APIClient) -> None:
    first = submit(api_client, {"user_id": "alice", "input": 1})
    second = submit(api_client, {"user_id": "alice", "input": 1})

    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["id"] != second.json()["id"]
    assert Job.objects.count() == 2


@pytest.mark.usefixtures("open_mode")
def test_different_keys_of_one_user_create_different_jobs(api_client: APIClient) -> None:
    first = submit(api_client, {"user_id": "alice", "input": 1}, **{"Idempotency-Key": "a"})
    second = submit(api_client, {"user_id": "alice", "input": 1}, **{"Idempotency-Key": "b"})

    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["id"] != second.json()["id"]


@pytest.mark.usefixtures("open_mode")
def test_different_users_may_use_the_same_key(api_client: APIClient) -> None:
    alice = submit(api_client, {"user_id": "alice", "input": 1}, **KEY)
    bob = submit(api_client, {"user_id": "bob", "input": 1}, **KEY)

    assert (alice.status_code, bob.status_code) == (201, 201)
    assert alice.json()["id"] != bob.json()["id"]
    assert bob.json()["user_id"] == "bob"
    assert Job.objects.count() == 2


@pytest.mark.usefixtures("token_mode")
def test_users_with_tokens_may_use_the_same_key(make_user: Callable[..., User]) -> None:
    alice = submit(client_with_token(make_user("alice")), {"input": 1}, **KEY)
    bob = submit(client_with_token(make_user("bob")), {"input": 1}, **KEY)

    assert (alice.status_code, bob.status_code) == (201, 201)
    assert alice.json()["id"] != bob.json()["id"]
    assert Job.objects.count() == 2


@pytest.mark.usefixtures("open_mode")
def test_a_retried_bulk_submit_returns_the_same_list_and_creates_nothing(
    api_client: APIClient,
) -> None:
    items = [{"user_id": "alice", "input": n} for n in range(3)]
    first = submit(api_client, items, **KEY)
    assert first.status_code == 201

    retry = submit(api_client, items, **KEY)

    assert retry.status_code == 200
    assert [job["id"] for job in retry.json()] == [job["id"] for job in first.json()]
    assert [job["input"] for job in retry.json()] == [0, 1, 2]
    assert Job.objects.count() == 3
    assert queued_count("alice") == 3
