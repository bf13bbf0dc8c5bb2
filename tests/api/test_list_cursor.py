"""`GET /api/jobs/` pages by an opaque cursor: newest first, every job once even while jobs
are submitted, no count of the whole listing; `offset` pages stay for existing clients."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from jobs.api.pagination import decode_cursor, encode_cursor
from jobs.models import Job
from tests.support.api_helpers import JOBS_URL, submit

pytest_plugins = ["tests.support.api_fixtures"]

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("open_mode")]


def submit_inputs(client: APIClient, inputs: range) -> list[str]:
    response = submit(client, [{"user_id": "alice", "input": n} for n in inputs])
    assert response.status_code == 201
    return [job["id"] for job in response.json()]


def follow(client: APIClient, url: str, params: dict[str, str] | None = None) -> list[Any]:
    pages = []
    body = client.get(url, params).json()
    pages.append(body)
    while body["next"] is not None:
        body = client.get(body["next"]).json()
        pages.append(body)
    return pages


def test_cursor_pages_list_every_job_once_newest_first(api_client: APIClient) -> None:
    ids = submit_inputs(api_client, range(7))
    pages = follow(api_client, JOBS_URL, {"user_id": "alice", "limit": "3"})
    assert [len(page["results"]) for page in pages] == [3, 3, 1]
    assert [job["id"] for page in pages for job in page["results"]] == list(reversed(ids))
    assert all(set(page) == {"next", "results"} for page in pages)
    assert "cursor=" in pages[0]["next"]


def test_jobs_submitted_while_paging_neither_repeat_nor_skip(api_client: APIClient) -> None:
    ids = submit_inputs(api_client, range(6))
    first = api_client.get(JOBS_URL, {"user_id": "alice", "limit": "2"}).json()
    submit_inputs(api_client, range(100, 105))  # newer than everything listed
    rest = follow(api_client, first["next"])
    listed = [job["id"] for page in [first, *rest] for job in page["results"]]
    assert listed == list(reversed(ids))


def test_a_cursor_page_counts_nothing_and_an_offset_page_still_counts(
    api_client: APIClient,
) -> None:
    submit_inputs(api_client, range(5))
    first = api_client.get(JOBS_URL, {"user_id": "alice", "limit": "2"}).json()
    with CaptureQueriesContext(connection) as queries:
        page = api_client.get(first["next"]).json()
    assert len(page["results"]) == 2
    assert not any("COUNT(" in query["sql"].upper() for query in queries.captured_queries)

    legacy = api_client.get(JOBS_URL, {"user_id": "alice", "limit": "2", "offset": "2"}).json()
    assert legacy["count"] == 5 and len(legacy["results"]) == 2
    assert "offset=4" in legacy["next"] and "offset" not in (legacy["previous"] or "offset")


def test_the_cursor_does_not_show_the_queue_key(api_client: APIClient) -> None:
    submit_inputs(api_client, range(3))
    first = api_client.get(JOBS_URL, {"user_id": "alice", "limit": "1"}).json()
    cursor = first["next"].split("cursor=")[1].split("&")[0]
    newest = Job.objects.order_by("-id").first()
    assert newest is not None
    assert str(newest.id) not in cursor and len(cursor) == 16
    assert decode_cursor(cursor) == newest.id
    for position in (0, 1, 2, 41, 2**31, 2**40 + 7, 2**63 - 1):
        assert decode_cursor(encode_cursor(position)) == position


@pytest.mark.parametrize("cursor", ["xyz", "0123456789ABCDEF", "0123456789abcdef0", ""])
def test_a_malformed_cursor_is_a_400_naming_it(api_client: APIClient, cursor: str) -> None:
    submit_inputs(api_client, range(2))
    response = api_client.get(JOBS_URL, {"user_id": "alice", "cursor": cursor})
    assert response.status_code == 400
    assert "cursor" in response.json()


def test_a_made_up_cursor_is_only_a_place_to_start(api_client: APIClient) -> None:
    submit_inputs(api_client, range(2))
    submit(api_client, {"user_id": "bob", "input": 1})
    for cursor in ("0000000000000000", "ffffffffffffffff", "0123456789abcdef"):
        response = api_client.get(JOBS_URL, {"user_id": "alice", "cursor": cursor})
        assert response.status_code == 200
        assert {job["user_id"] for job in response.json()["results"]} <= {"alice"}


def test_the_schema_declares_the_cursor_and_the_page_shape(api_client: APIClient) -> None:
    schema = api_client.get("/api/schema/", {"format": "json"}).json()
    operation = schema["paths"]["/api/jobs/"]["get"]
    cursor = next(p for p in operation["parameters"] if p["name"] == "cursor")
    assert cursor["in"] == "query" and cursor["schema"]["type"] == "string"
    assert cursor["schema"]["pattern"] == "^[0-9a-f]{16}$"
    page_ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    page = schema["components"]["schemas"][page_ref.rsplit("/", 1)[-1]]
    assert page["required"] == ["next", "results"]
    assert {"count", "previous"} <= set(page["properties"])
