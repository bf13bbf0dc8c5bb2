"""The jobs views answer JSON clients without DRF's header parse, and browsers as before."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from jobs.models import Job, User

pytest_plugins = ["tests.support.api_fixtures"]

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("open_mode")]


@pytest.fixture
def job_url() -> str:
    job = Job.objects.create(owner=User.objects.create(username="x"), kind="noop", input=1)
    return f"/api/jobs/{job.public_id}/"


@pytest.mark.parametrize("accept", [None, "*/*", "application/json"])
def test_a_json_client_gets_json(api_client: APIClient, job_url: str, accept: str | None) -> None:
    response = (
        api_client.get(job_url) if accept is None else api_client.get(job_url, HTTP_ACCEPT=accept)
    )

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json()["kind"] == "noop"


@pytest.mark.parametrize(
    ("accept", "query", "content_type"),
    [
        ("*/*", "?format=api", "text/html; charset=utf-8"),
        ("text/html,application/xhtml+xml,*/*;q=0.8", "", "text/html; charset=utf-8"),
        ("*/*", "?format=json", "application/json"),
    ],
)
def test_other_accept_headers_and_formats_are_negotiated_as_drf_does(
    api_client: APIClient, job_url: str, accept: str, query: str, content_type: str
) -> None:
    response = api_client.get(job_url + query, HTTP_ACCEPT=accept)

    assert response.status_code == 200
    assert response["Content-Type"] == content_type


def test_an_indent_asked_for_in_the_accept_header_is_kept(
    api_client: APIClient, job_url: str
) -> None:
    response = api_client.get(job_url, HTTP_ACCEPT="application/json; indent=4")

    assert response.status_code == 200
    assert response.content.startswith(b'{\n    "id"')


def test_an_unacceptable_accept_header_is_a_406_naming_it(api_client: APIClient) -> None:
    response = api_client.post(
        "/api/jobs/", {"user_id": "x", "input": 1}, format="json", HTTP_ACCEPT="image/png"
    )

    assert response.status_code == 406
    assert "Accept header" in response.json()["error"]
    assert not Job.objects.exists()
