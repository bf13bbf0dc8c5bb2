"""`GET /api/jobs/` pages by `?limit=&offset=` with `limit` capped at 1,000, as the schema says."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from tests.support.api_helpers import JOBS_URL, submit

pytest_plugins = ["tests.support.api_fixtures"]

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("open_mode")]


@pytest.fixture
def alice_with_1001_jobs(open_mode: None, api_client: APIClient) -> None:
    response = submit(api_client, [{"user_id": "alice", "input": i} for i in range(1001)])
    assert response.status_code == 201


@pytest.mark.usefixtures("alice_with_1001_jobs")
def test_a_page_holds_at_most_1000_jobs_and_links_to_the_next(api_client: APIClient) -> None:
    body = api_client.get(JOBS_URL, {"user_id": "alice", "limit": "1000"}).json()

    assert len(body["results"]) == 1000
    assert body["next"] is not None
    rest = api_client.get(body["next"]).json()
    assert len(rest["results"]) == 1
    assert api_client.get(JOBS_URL, {"user_id": "alice"}).json()["results"].__len__() == 50


@pytest.mark.usefixtures("alice_with_1001_jobs")
@pytest.mark.parametrize("limit", ["1001", "100000", "0", "-1", "ten", "1.5"])
def test_a_limit_outside_1_to_1000_is_refused_naming_the_field(
    api_client: APIClient, limit: str
) -> None:
    response = api_client.get(JOBS_URL, {"user_id": "alice", "limit": limit})

    assert response.status_code == 400
    assert response.json() == {"limit": ["A whole number from 1 to 1000."]}


def test_the_schema_states_the_cap(api_client: APIClient) -> None:
    schema = api_client.get("/api/schema/", {"format": "json"}).json()

    parameters = schema["paths"]["/api/jobs/"]["get"]["parameters"]
    limit = next(parameter for parameter in parameters if parameter["name"] == "limit")
    assert limit["schema"] == {"type": "integer", "minimum": 1, "maximum": 1000}
    assert "1000" in limit["description"]
