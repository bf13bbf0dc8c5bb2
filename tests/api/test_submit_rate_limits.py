"""Submit rate limits (DRF throttles, jobs.api.throttles): per token user and per client
address, off unless `ZYPHER_SUBMIT_RATE_USER` / `ZYPHER_SUBMIT_RATE_ADDRESS` set them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client
from rest_framework.test import APIClient

from jobs.models import Job, User
from jobs.predict.hub import close_db_connections
from tests.support.api_helpers import JOBS_URL, client_with_token, submit

pytest_plugins = ["tests.support.api_fixtures"]


@pytest.fixture(autouse=True)
def empty_throttle_counts() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def rates(settings: Any) -> Callable[..., None]:
    def set_rates(user: str | None = None, address: str | None = None) -> None:
        throttle_rates = {"submit_user": user, "submit_address": address}
        settings.REST_FRAMEWORK = {
            **settings.REST_FRAMEWORK,
            "DEFAULT_THROTTLE_RATES": throttle_rates,
        }

    return set_rates


def assert_throttled(response: Any, setting: str) -> None:
    assert response.status_code == 429, response.content
    assert int(response["Retry-After"]) > 0
    assert setting in response.json()["error"]


@pytest.mark.django_db
@pytest.mark.usefixtures("open_mode")
def test_submits_are_not_limited_by_default(api_client: APIClient) -> None:
    for index in range(30):
        assert submit(api_client, {"user_id": "alice", "input": index}).status_code == 201


@pytest.mark.django_db
@pytest.mark.usefixtures("token_mode")
def test_a_user_past_their_rate_is_refused_with_429_and_other_users_are_not(
    rates: Callable[..., None], make_user: Callable[..., User]
) -> None:
    rates(user="2/min")
    alice = client_with_token(make_user("alice"))
    bob = client_with_token(make_user("bob"))
    assert submit(alice, {"input": 1}).status_code == 201
    assert submit(alice, [{"input": 2}, {"input": 3}]).status_code == 201

    refused = submit(alice, {"input": 4})

    assert_throttled(refused, "ZYPHER_SUBMIT_RATE_USER")
    assert Job.objects.filter(owner__username="alice").count() == 3
    assert submit(bob, {"input": 1}).status_code == 201  # same address, other user


@pytest.mark.django_db
@pytest.mark.usefixtures("token_mode")
def test_reading_and_listing_do_not_count_as_submits(
    rates: Callable[..., None], make_user: Callable[..., User]
) -> None:
    rates(user="1/min", address="1/min")
    alice = client_with_token(make_user("alice"))
    job_id = submit(alice, {"input": 1}).json()["id"]

    for _ in range(5):
        assert alice.get(JOBS_URL).status_code == 200
        assert alice.get(f"{JOBS_URL}{job_id}/").status_code == 200


@pytest.mark.django_db
@pytest.mark.usefixtures("open_mode")
def test_one_address_past_its_rate_is_refused_whatever_user_it_names(
    rates: Callable[..., None],
) -> None:
    rates(address="2/min")
    client = APIClient(REMOTE_ADDR="10.0.0.1")
    assert submit(client, {"user_id": "alice", "input": 1}).status_code == 201
    assert submit(client, {"user_id": "bob", "input": 1}).status_code == 201

    refused = submit(client, {"user_id": "carol", "input": 1})

    assert_throttled(refused, "ZYPHER_SUBMIT_RATE_ADDRESS")
    assert not Job.objects.filter(owner__username="carol").exists()
    other = APIClient(REMOTE_ADDR="10.0.0.2")
    assert submit(other, {"user_id": "carol", "input": 1}).status_code == 201


@pytest.mark.django_db
@pytest.mark.usefixtures("open_mode")
def test_programs_count_as_submits(rates: Callable[..., None], api_client: APIClient) -> None:
    rates(address="1/min")
    program = {"user_id": "alice", "jobs": [{"instructions": [], "shots": 10}]}
    assert api_client.post("/api/programs/", program, format="json").status_code == 201

    refused = api_client.post("/api/programs/", program, format="json")

    assert_throttled(refused, "ZYPHER_SUBMIT_RATE_ADDRESS")


@pytest.fixture
def predict_threads() -> Iterator[None]:
    """/predict writes from its own thread pool: close its connections before the test
    database is dropped."""
    yield
    close_db_connections()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("open_mode", "predict_threads")
def test_predictions_count_as_submits(rates: Callable[..., None]) -> None:
    rates(address="1/min")
    client = Client()

    def predict() -> Any:
        return client.post(
            "/predict",
            {"input": "x", "user_id": "alice"},
            content_type="application/json",
            headers={"Async-Mode": "true"},
        )

    assert predict().status_code == 202
    refused = predict()

    assert_throttled(refused, "ZYPHER_SUBMIT_RATE_ADDRESS")
    assert Job.objects.filter(owner__username="alice").count() == 1
