"""The API describes itself: an OpenAPI 3 schema, Swagger UI, and the browsable API."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from jobs.models import Job, User
from tests.support.api_helpers import client_with_token

pytest_plugins = ["tests.support.api_fixtures"]

pytestmark = pytest.mark.django_db

HTML = "text/html"


@pytest.fixture
def schema(api_client: APIClient) -> dict[str, Any]:
    response = api_client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    return response.json()


def test_the_schema_is_an_openapi_3_document(schema: dict[str, Any]) -> None:
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["title"] == "Zypher API"


def test_the_schema_generates_without_warnings_and_validates(tmp_path: Path) -> None:
    call_command(
        "spectacular", "--fail-on-warn", "--validate", "--file", str(tmp_path / "schema.yaml")
    )

    assert (tmp_path / "schema.yaml").read_text().startswith("openapi: 3.")


def test_the_schema_is_served_as_yaml_by_default(api_client: APIClient) -> None:
    response = api_client.get("/api/schema/")

    assert response.status_code == 200
    assert response.content.startswith(b"openapi: 3.")


@pytest.mark.parametrize(
    ("path", "methods"),
    [
        ("/api/jobs/", {"get", "post"}),
        ("/api/jobs/{job_id}/", {"get"}),
        ("/api/jobs/{job_id}/cancel/", {"post"}),
        ("/api/users/", {"post"}),
        ("/api/users/{user_id}/", {"get", "patch"}),
        ("/api/token/", {"post"}),
    ],
)
def test_the_schema_lists_each_endpoint_with_its_methods(
    schema: dict[str, Any], path: str, methods: set[str]
) -> None:
    assert path in schema["paths"]
    assert methods <= set(schema["paths"][path])


def test_the_schema_documents_the_submit_body_and_the_list_filters(schema: dict[str, Any]) -> None:
    jobs = schema["paths"]["/api/jobs/"]
    list_parameters = {parameter["name"] for parameter in jobs["get"]["parameters"]}
    submit_parameters = {parameter["name"] for parameter in jobs["post"].get("parameters", [])}
    submit_body = jobs["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    submit_component = schema["components"]["schemas"][submit_body.rsplit("/", 1)[-1]]

    assert {"user_id", "status", "limit", "offset"} <= list_parameters
    assert "Idempotency-Key" in submit_parameters
    assert {"input", "kind", "priority", "device_type", "user_id"} <= set(
        submit_component["properties"]
    )
    assert "input" in submit_component["required"]
    priority = submit_component["properties"]["priority"]
    assert (priority["minimum"], priority["maximum"]) == (-100, 100)


def test_swagger_ui_answers_with_html(api_client: APIClient) -> None:
    response = api_client.get("/api/docs/")

    assert response.status_code == 200
    assert response["Content-Type"].startswith(HTML)
    assert b"swagger" in response.content.lower()


@pytest.mark.usefixtures("open_mode")
def test_the_browsable_api_renders_the_job_list(api_client: APIClient) -> None:
    Job.objects.create(owner=User.objects.create(username="x"), kind="noop", input=1)

    response = api_client.get("/api/jobs/?user_id=x", HTTP_ACCEPT=HTML)

    assert response.status_code == 200
    assert response["Content-Type"].startswith(HTML)
    assert b"Job List Create" in response.content
    assert b"noop" in response.content


@pytest.mark.usefixtures("open_mode")
def test_the_browsable_api_renders_a_job(api_client: APIClient) -> None:
    job = Job.objects.create(owner=User.objects.create(username="x"), kind="noop", input=1)

    response = api_client.get(f"/api/jobs/{job.public_id}/", HTTP_ACCEPT=HTML)

    assert response.status_code == 200
    assert response["Content-Type"].startswith(HTML)
    assert str(job.public_id).encode() in response.content


@pytest.mark.usefixtures("token_mode")
def test_the_browsable_api_renders_the_user_endpoints_for_staff(
    make_user: Callable[..., User],
) -> None:
    staff = client_with_token(make_user("operator", is_staff=True, is_superuser=True))

    account = staff.get("/api/users/operator/", HTTP_ACCEPT=HTML)
    create_form = staff.get("/api/users/", HTTP_ACCEPT=HTML)

    assert account.status_code == 200
    assert account["Content-Type"].startswith(HTML)
    assert b"device_seconds" in account.content
    # GET is not an operation of /api/users/, but the page still renders (with its form).
    assert create_form.status_code == 405
    assert create_form["Content-Type"].startswith(HTML)


def test_api_errors_are_json_even_when_html_is_asked_for(api_client: APIClient) -> None:
    response = api_client.get("/api/jobs/not-a-uuid/", HTTP_ACCEPT=HTML)

    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")


# Issue 17: the server accepted what the schema forbids; Schemathesis found each.
@pytest.mark.usefixtures("token_mode")
@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("post", "/api/devices/", {"id": "d1", "type": "cpu", "url": 0}, "url"),
        ("get", "/api/jobs/?offset=null", None, "offset"),
        ("post", "/api/users/x/remove-from-queue/", {"stop_running": 0}, "stop_running"),
        ("post", "/api/users/", {"user_id": "y", "is_staff": 0}, "is_staff"),
        ("post", "/api/jobs/", {"input": 1, "user_id": 5}, "user_id"),
    ],
)
def test_a_value_the_schema_forbids_is_a_400_naming_the_field(
    make_user: Callable[..., User], method: str, path: str, body: Any, field: str
) -> None:
    make_user("x")
    # A superuser holds every permission, so the answer is about the value, not the caller.
    staff = client_with_token(make_user("root", is_staff=True, is_superuser=True))

    response = getattr(staff, method)(path, body, format="json")

    assert response.status_code == 400, response.content[:200]
    assert field in response.json()


def test_the_schema_states_what_the_server_refuses(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    submit = components["JobSubmitRequest"]["properties"]
    program = components["ProgramSubmitSchemaRequest"]["properties"]
    weight = components["UserCreateRequest"]["properties"]["weight"]
    command = schema["paths"]["/api/devices/{device_id}/commands/"]["post"]["requestBody"]

    assert {"type": "null"} not in submit["input"]["anyOf"] and "anyOf" in submit["input"]
    assert weight["minimum"] > 0
    assert program["jobs"]["minItems"] == 1
    assert all(
        shape["properties"]["args"].get("additionalProperties") is False
        for shape in command["content"]["application/json"]["schema"]["oneOf"]
    )
