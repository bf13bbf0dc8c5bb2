"""Every bad input is answered with its 4xx, a JSON body naming the problem, and nothing written."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from jobs.models import FairShareAccount, Job, User
from tests.support.api_helpers import JOBS_URL, USERS_URL, client_with_token, submit

WEIGHT_REFUSED = "Changing a weight needs the jobs.change_weight permission (the operator role)."

pytest_plugins = ["tests.support.api_fixtures"]

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("open_mode")]


@contextmanager
def nothing_written() -> Iterator[None]:
    """The requests inside must leave jobs, users and accounts exactly as they were."""
    before = (Job.objects.count(), User.objects.count(), FairShareAccount.objects.count())
    yield
    after = (Job.objects.count(), User.objects.count(), FairShareAccount.objects.count())
    assert after == before, "a refused request wrote to the database"


@pytest.fixture
def staff_client(make_user: Callable[..., User]) -> APIClient:
    return client_with_token(make_user("operator", is_staff=True, is_superuser=True))


def field_errors(response: object, field: str) -> str:
    """The messages a 400 gives for `field`, as one string."""
    body = response.json()  # type: ignore[attr-defined]
    assert field in body, f"{field!r} not named in {body}"
    return " ".join(map(str, body[field]))


def test_an_unknown_kind_is_refused_with_the_list_of_valid_kinds(api_client: APIClient) -> None:
    with nothing_written():
        response = submit(api_client, {"user_id": "alice", "input": 1, "kind": "mine_bitcoin"})

    assert response.status_code == 400
    message = field_errors(response, "kind")
    assert "mine_bitcoin" in message
    for valid in ("limited_f", "predict", "noop"):
        assert valid in message


def test_a_missing_input_is_refused(api_client: APIClient) -> None:
    with nothing_written():
        response = submit(api_client, {"user_id": "alice", "kind": "noop"})

    assert response.status_code == 400
    assert "required" in field_errors(response, "input")


def test_a_non_json_content_type_is_refused_with_415(api_client: APIClient) -> None:
    with nothing_written():
        response = api_client.post(
            JOBS_URL, "user_id=alice&input=1", content_type="application/x-www-form-urlencoded"
        )

    assert response.status_code == 415
    assert response["Content-Type"].startswith("application/json")
    assert "error" in response.json()


def test_a_multipart_form_is_refused_with_415(api_client: APIClient) -> None:
    with nothing_written():
        response = api_client.post(JOBS_URL, {"user_id": "alice", "input": "1"}, format="multipart")

    assert response.status_code == 415
    assert "error" in response.json()


def test_malformed_json_is_refused_with_400(api_client: APIClient) -> None:
    with nothing_written():
        response = api_client.post(
            JOBS_URL, '{"user_id": "alice", "input": ', content_type="application/json"
        )

    assert response.status_code == 400
    assert "JSON" in response.json()["error"]


def test_a_priority_that_is_not_an_integer_is_refused(api_client: APIClient) -> None:
    with nothing_written():
        response = submit(api_client, {"user_id": "alice", "input": 1, "priority": "high"})

    assert response.status_code == 400
    assert "integer" in field_errors(response, "priority")


def test_wrong_types_name_every_bad_field(api_client: APIClient) -> None:
    with nothing_written():
        response = submit(api_client, {"user_id": ["alice"], "priority": 1.5, "kind": 3})

    assert response.status_code == 400
    body = response.json()
    assert {"user_id", "priority", "input"} <= set(body)


@pytest.mark.parametrize("priority", [101, -101, 10**6])
def test_a_priority_outside_minus_100_to_100_is_refused(
    api_client: APIClient, priority: int
) -> None:
    with nothing_written():
        response = submit(api_client, {"user_id": "alice", "input": 1, "priority": priority})

    assert response.status_code == 400
    assert "100" in field_errors(response, "priority")


def test_json_nested_too_deeply_to_parse_is_refused_with_400(api_client: APIClient) -> None:
    depth = 100_000  # a 200 kB body, well under the size limit
    body = '{"user_id": "alice", "input": ' + "[" * depth + "]" * depth + "}"

    with nothing_written():
        response = api_client.post(JOBS_URL, body, content_type="application/json")

    assert response.status_code == 400
    assert "error" in response.json()


def test_an_input_nested_too_deeply_to_store_is_refused_with_400(api_client: APIClient) -> None:
    depth = 900  # parses, but storing or rendering it exhausts the stack on PostgreSQL
    body = '{"user_id": "alice", "input": ' + "[" * depth + "]" * depth + "}"

    with nothing_written():
        response = api_client.post(JOBS_URL, body, content_type="application/json")

    assert response.status_code == 400
    assert field_errors(response, "input")


def test_an_input_with_a_nul_character_is_refused_on_every_database(api_client: APIClient) -> None:
    # PostgreSQL's jsonb cannot hold \u0000; refusing it everywhere keeps backends alike.
    with nothing_written():
        response = submit(api_client, {"user_id": "alice", "input": {"text": "a\u0000b"}})

    assert response.status_code == 400
    assert field_errors(response, "input")


@pytest.mark.parametrize("priority", [-100, 100])
def test_the_priority_bounds_themselves_are_accepted(api_client: APIClient, priority: int) -> None:
    response = submit(api_client, {"user_id": "alice", "input": 1, "priority": priority})

    assert response.status_code == 201
    assert Job.objects.get(public_id=response.json()["id"]).priority == priority


@override_settings(ZYPHER_MAX_BODY_BYTES=100)
def test_a_body_over_the_size_limit_is_refused_with_413(api_client: APIClient) -> None:
    with nothing_written():
        response = submit(api_client, {"user_id": "alice", "input": "x" * 200})

    assert response.status_code == 413
    assert "100" in response.json()["error"]


@override_settings(ZYPHER_MAX_BODY_BYTES=100)
def test_a_body_under_the_size_limit_is_accepted(api_client: APIClient) -> None:
    assert submit(api_client, {"user_id": "alice", "input": 1}).status_code == 201


def test_a_request_with_a_non_numeric_content_length_is_refused_with_400(
    api_client: APIClient,
) -> None:
    with nothing_written():
        response = api_client.post(
            JOBS_URL,
            b'{"user_id": "alice", "input": 1}',
            content_type="application/json",
            CONTENT_LENGTH="lots",
        )

    assert response.status_code == 400
    assert "error" in response.json()


@pytest.mark.parametrize("weight", [0, -1, -0.5, "heavy", None, "NaN"])
def test_creating_a_user_with_a_weight_that_is_not_positive_is_refused(
    staff_client: APIClient, weight: object
) -> None:
    with nothing_written():
        response = staff_client.post(
            USERS_URL, {"user_id": "carol", "weight": weight}, format="json"
        )

    assert response.status_code == 400
    assert field_errors(response, "weight")


@pytest.mark.parametrize("weight", [0, -1, "heavy", None, "Infinity"])
def test_patching_a_weight_that_is_not_positive_is_refused_and_keeps_the_old_one(
    staff_client: APIClient, make_user: Callable[..., User], weight: object
) -> None:
    carol = make_user("carol", weight=2.0)

    with nothing_written():
        response = staff_client.patch(f"{USERS_URL}carol/", {"weight": weight}, format="json")

    assert response.status_code == 400
    assert field_errors(response, "weight")
    carol.refresh_from_db()
    assert carol.weight == 2.0


def test_patching_without_a_weight_changes_nothing(
    staff_client: APIClient, make_user: Callable[..., User]
) -> None:
    # PATCH is partial and the schema says so (issue 17): an empty patch is a no-op.
    make_user("carol", weight=2.0)

    with nothing_written():
        response = staff_client.patch(f"{USERS_URL}carol/", {}, format="json")

    assert response.status_code == 200
    assert response.json()["weight"] == 2.0


def test_creating_a_user_that_exists_is_refused(staff_client: APIClient) -> None:
    with nothing_written():
        response = staff_client.post(USERS_URL, {"user_id": "operator", "weight": 2}, format="json")

    assert response.status_code == 409  # well formed, conflicts with the state (issue 17)
    assert "exists" in response.json()["error"]


def test_a_bulk_submit_with_one_bad_item_is_refused_whole_and_names_its_index(
    api_client: APIClient,
) -> None:
    items = [
        {"user_id": "alice", "input": 1},
        {"user_id": "alice", "input": 2},
        {"user_id": "alice", "input": 3, "priority": 500},
        {"user_id": "alice", "input": 4},
    ]
    with nothing_written():
        response = submit(api_client, items)

    assert response.status_code == 400
    body = response.json()
    assert "2" in body["error"]
    assert set(body["items"]) == {"2"}
    assert "priority" in body["items"]["2"]


def test_a_bulk_submit_names_every_bad_index(api_client: APIClient) -> None:
    items = [
        {"user_id": "alice", "kind": "nope", "input": 1},
        {"user_id": "alice", "input": 2},
        "just a string",
    ]
    with nothing_written():
        response = submit(api_client, items)

    assert response.status_code == 400
    assert set(response.json()["items"]) == {"0", "2"}


def test_a_bulk_submit_for_two_users_is_refused(api_client: APIClient) -> None:
    with nothing_written():
        response = submit(
            api_client, [{"user_id": "alice", "input": 1}, {"user_id": "bob", "input": 2}]
        )

    assert response.status_code == 400
    assert field_errors(response, "user_id")


@override_settings(ZYPHER_MAX_BULK_JOBS=3)
def test_a_bulk_submit_over_the_item_limit_is_refused(api_client: APIClient) -> None:
    with nothing_written():
        response = submit(api_client, [{"user_id": "alice", "input": n} for n in range(4)])

    assert response.status_code == 400
    assert "3" in response.json()["error"]


def test_an_empty_list_is_refused(api_client: APIClient) -> None:
    with nothing_written():
        response = submit(api_client, [])

    assert response.status_code == 400
    assert "empty" in response.json()["error"]


@pytest.mark.parametrize("body", ["5", '"a job"', "null", "true"])
def test_a_json_body_that_is_neither_an_object_nor_a_list_is_refused(
    api_client: APIClient, body: str
) -> None:
    with nothing_written():
        response = api_client.post(JOBS_URL, body, content_type="application/json")

    assert response.status_code == 400
    assert "error" in response.json()


def test_an_invalid_user_id_is_refused(api_client: APIClient) -> None:
    with nothing_written():
        response = submit(api_client, {"user_id": "alice smith/../", "input": 1})

    assert response.status_code == 400
    assert field_errors(response, "user_id")


def test_an_invalid_device_type_is_refused(api_client: APIClient) -> None:
    with nothing_written():
        response = submit(
            api_client, {"user_id": "alice", "input": 1, "device_type": "gpu; drop table"}
        )

    assert response.status_code == 400
    assert field_errors(response, "device_type")


def test_an_idempotency_key_over_200_characters_is_refused(api_client: APIClient) -> None:
    with nothing_written():
        response = submit(
            api_client, {"user_id": "alice", "input": 1}, **{"Idempotency-Key": "k" * 201}
        )

    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()


@pytest.mark.parametrize("path", ["", "cancel/"])
def test_an_unknown_job_id_answers_404_json(api_client: APIClient, path: str) -> None:
    url = f"{JOBS_URL}{uuid.uuid4()}/{path}"
    response = api_client.post(url) if path else api_client.get(url)

    assert response.status_code == 404
    assert "error" in response.json()


@pytest.mark.parametrize("path", ["not-a-uuid/", "12345/", "not-a-uuid/cancel/"])
def test_a_job_id_that_is_not_a_uuid_answers_404_json_not_html(
    api_client: APIClient, path: str
) -> None:
    response = api_client.get(f"{JOBS_URL}{path}")

    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")
    assert "error" in json.loads(response.content)


def test_an_unknown_user_answers_404_json(staff_client: APIClient) -> None:
    response = staff_client.get(f"{USERS_URL}nobody/")

    assert response.status_code == 404
    assert "nobody" in response.json()["error"]


# The texts below are the API's contract: the checks behind them moved into
# jobs.api.access and the serializers' list limits (issue 11), the answers did not.


@override_settings(ZYPHER_MAX_BULK_JOBS=3)
def test_the_list_limits_answer_exactly_as_documented(api_client: APIClient) -> None:
    with nothing_written():
        too_many = submit(api_client, [{"user_id": "alice", "input": n} for n in range(4)])
        empty = submit(api_client, [])
        at_the_limit_with_a_bad_item = submit(
            api_client, [{"user_id": "alice", "input": 1}, {"user_id": "alice"}]
        )

    assert (too_many.status_code, too_many.json()) == (
        400,
        {"error": "At most 3 jobs per request."},
    )
    assert (empty.status_code, empty.json()) == (400, {"error": "The list of jobs is empty."})
    assert at_the_limit_with_a_bad_item.json() == {
        "error": "Item 1 is invalid; nothing was queued.",
        "items": {"1": {"input": ["This field is required."]}},
    }


def test_a_long_idempotency_key_answers_exactly_as_documented(api_client: APIClient) -> None:
    with nothing_written():
        response = submit(
            api_client, {"user_id": "alice", "input": 1}, **{"Idempotency-Key": "k" * 201}
        )

    assert response.json() == {"Idempotency-Key": ["At most 200 characters."]}


@override_settings(ZYPHER_MAX_BULK_JOBS=3)
def test_a_program_over_the_job_limit_answers_exactly_as_documented(
    api_client: APIClient,
) -> None:
    program = {"user_id": "alice", "jobs": [{"instructions": [], "shots": 1}] * 4}
    with nothing_written():
        too_many = api_client.post("/api/programs/", program, format="json")
        empty = api_client.post("/api/programs/", {**program, "jobs": []}, format="json")
        long_key = api_client.post(
            "/api/programs/",
            {**program, "jobs": program["jobs"][:1]},
            format="json",
            headers={"Idempotency-Key": "k" * 201},
        )

    assert (too_many.status_code, too_many.json()) == (400, {"jobs": ["At most 3 jobs."]})
    assert (empty.status_code, empty.json()) == (
        400,
        {"jobs": {"non_field_errors": ["This list may not be empty."]}},
    )
    assert (long_key.status_code, long_key.json()) == (
        400,
        {"Idempotency-Key": ["At most 200 characters."]},
    )


@override_settings(ZYPHER_OPEN_MODE=False)
def test_without_a_token_reads_and_account_pages_answer_exactly_as_documented(
    api_client: APIClient, make_user: Callable[..., User]
) -> None:
    send_token = "Send 'Authorization: Token <key>' (POST /api/token/ issues one)."
    for url in (JOBS_URL, f"{JOBS_URL}{uuid.uuid4()}/", f"/api/programs/{uuid.uuid4()}/"):
        response = api_client.get(url)
        assert (response.status_code, response.json()) == (401, {"error": send_token}), url
        assert response.headers["WWW-Authenticate"] == "Token"
    cancel = api_client.post(f"{JOBS_URL}{uuid.uuid4()}/cancel/")
    assert (cancel.status_code, cancel.json()) == (401, {"error": send_token})
    account = api_client.get(f"{USERS_URL}alice/")
    assert (account.status_code, account.json()) == (
        401,
        {"error": "Send 'Authorization: Token <key>'."},
    )
    # A submit checks its body before asking who it is for.
    bad_body = submit(api_client, {"input": 1, "priority": 1000})
    assert bad_body.status_code == 400 and "priority" in bad_body.json()
    unnamed = submit(api_client, {"input": 1})
    assert (unnamed.status_code, unnamed.json()) == (401, {"error": send_token})

    alice = client_with_token(make_user("alice"))
    other = alice.get(f"{USERS_URL}bob/")
    assert (other.status_code, other.json()) == (
        403,
        {"error": "You may only read your own account."},
    )
    weight = alice.patch(f"{USERS_URL}bob/", {"weight": 2}, format="json")
    assert (weight.status_code, weight.json()) == (
        403,
        {"error": WEIGHT_REFUSED},
    )
    own_weight = alice.patch(f"{USERS_URL}alice/", {"weight": 2}, format="json")
    assert own_weight.json() == {"error": WEIGHT_REFUSED}
    assert alice.get(f"{USERS_URL}alice/").json()["user_id"] == "alice"
