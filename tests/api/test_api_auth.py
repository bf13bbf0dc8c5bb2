"""Who may do what: tokens when open mode is off, named users when it is on."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from jobs.models import FairShareAccount, Job, JobStatus, User
from tests.support.api_helpers import JOBS_URL, TOKEN_URL, USERS_URL, client_with_token, submit

pytest_plugins = ["tests.support.api_fixtures"]

pytestmark = pytest.mark.django_db

MakeUser = Callable[..., User]

token_mode = override_settings(ZYPHER_OPEN_MODE=False)
open_mode = override_settings(ZYPHER_OPEN_MODE=True)


def job_of(username: str) -> Job:
    """A queued job of `username`, made without the API."""
    owner, _ = User.objects.get_or_create(username=username)
    return Job.objects.create(owner=owner, kind="noop", input=1)


# --- open mode off: tokens ------------------------------------------------------------


@token_mode
def test_a_submit_without_a_token_is_refused_with_401_and_nothing_written(
    api_client: APIClient,
) -> None:
    response = submit(api_client, {"user_id": "alice", "input": 1})

    assert response.status_code == 401
    assert "Token" in response.json()["error"]
    assert Job.objects.count() == 0
    assert not User.objects.filter(username="alice").exists()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/jobs/?user_id=alice"),
        ("get", "/api/jobs/{job_id}/"),
        ("post", "/api/jobs/{job_id}/cancel/"),
        ("post", "/api/users/"),
        ("get", "/api/users/alice/"),
        ("patch", "/api/users/alice/"),
    ],
)
@token_mode
def test_every_endpoint_answers_401_with_an_error_without_a_token(
    api_client: APIClient, method: str, path: str
) -> None:
    job = job_of("alice")

    url = path.format(job_id=job.public_id)
    if method == "get":
        response = api_client.get(url)
    else:
        response = getattr(api_client, method)(url, {"weight": 2}, format="json")

    assert response.status_code == 401
    assert "error" in response.json()
    assert Job.objects.get(pk=job.pk).status == JobStatus.QUEUED
    assert User.objects.get(username="alice").weight == 1.0


@token_mode
def test_a_bad_token_is_refused_with_401(api_client: APIClient) -> None:
    api_client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")

    response = submit(api_client, {"input": 1})

    assert response.status_code == 401
    assert "error" in response.json()
    assert Job.objects.count() == 0


@token_mode
def test_a_token_user_submits_for_itself(make_user: MakeUser) -> None:
    alice = make_user("alice")

    response = submit(client_with_token(alice), {"input": 1})

    assert response.status_code == 201
    assert response.json()["user_id"] == "alice"
    assert Job.objects.get(public_id=response.json()["id"]).owner == alice


@token_mode
def test_a_token_user_may_name_itself(make_user: MakeUser) -> None:
    response = submit(client_with_token(make_user("alice")), {"user_id": "alice", "input": 1})

    assert response.status_code == 201
    assert response.json()["user_id"] == "alice"


@token_mode
def test_a_token_user_naming_another_user_is_refused_with_403_and_nothing_written(
    make_user: MakeUser,
) -> None:
    client = client_with_token(make_user("alice"))

    single = submit(client, {"user_id": "mallory", "input": 1})
    bulk = submit(client, [{"user_id": "mallory", "input": n} for n in range(2)])

    assert single.status_code == 403
    assert "mallory" in single.json()["error"]
    assert bulk.status_code == 403
    assert Job.objects.count() == 0
    assert FairShareAccount.objects.count() == 0
    assert not User.objects.filter(username="mallory").exists()


@token_mode
def test_an_x_user_id_header_does_not_change_who_a_token_acts_for(make_user: MakeUser) -> None:
    response = submit(
        client_with_token(make_user("alice")), {"input": 1}, **{"X-User-Id": "mallory"}
    )

    assert response.status_code == 201
    assert response.json()["user_id"] == "alice"
    assert not User.objects.filter(username="mallory").exists()


@token_mode
def test_a_staff_token_submits_for_any_user_id_creating_the_user(make_user: MakeUser) -> None:
    backend = client_with_token(make_user("backend", is_staff=True, is_superuser=True))

    response = submit(backend, {"user_id": "end-user-7", "input": 1})

    assert response.status_code == 201
    assert response.json()["user_id"] == "end-user-7"
    created = User.objects.get(username="end-user-7")
    assert not created.is_staff
    assert Job.objects.get(public_id=response.json()["id"]).owner == created


@token_mode
def test_a_staff_token_submits_for_itself_when_it_names_nobody(make_user: MakeUser) -> None:
    response = submit(
        client_with_token(make_user("backend", is_staff=True, is_superuser=True)), {"input": 1}
    )

    assert response.status_code == 201
    assert response.json()["user_id"] == "backend"


@token_mode
def test_a_user_lists_only_its_own_jobs(make_user: MakeUser) -> None:
    alice = make_user("alice")
    own = job_of("alice")
    job_of("bob")

    everything = client_with_token(alice).get(JOBS_URL).json()
    asking_for_bob = client_with_token(alice).get(JOBS_URL, {"user_id": "bob"}).json()

    assert [job["id"] for job in everything["results"]] == [str(own.public_id)]
    assert asking_for_bob["results"] == []


@token_mode
def test_a_user_gets_404_for_another_users_job_and_cannot_cancel_it(make_user: MakeUser) -> None:
    client = client_with_token(make_user("alice"))
    bobs = job_of("bob")

    detail = client.get(f"{JOBS_URL}{bobs.public_id}/")
    cancel = client.post(f"{JOBS_URL}{bobs.public_id}/cancel/")

    assert detail.status_code == 404
    assert "error" in detail.json()
    assert cancel.status_code == 404
    bobs.refresh_from_db()
    assert bobs.status == JobStatus.QUEUED


@token_mode
def test_a_user_reads_and_cancels_its_own_job(make_user: MakeUser) -> None:
    client = client_with_token(make_user("alice"))
    job_id = submit(client, {"input": 1}).json()["id"]

    assert client.get(f"{JOBS_URL}{job_id}/").status_code == 200
    cancel = client.post(f"{JOBS_URL}{job_id}/cancel/")

    assert cancel.status_code == 200
    assert cancel.json()["status"] == "cancelled"
    assert Job.objects.get(public_id=job_id).cancelled_by == "alice"


@token_mode
def test_staff_sees_and_cancels_every_users_jobs(make_user: MakeUser) -> None:
    staff = client_with_token(make_user("operator", is_staff=True, is_superuser=True))
    alices, bobs = job_of("alice"), job_of("bob")

    listed = staff.get(JOBS_URL).json()
    only_bob = staff.get(JOBS_URL, {"user_id": "bob"}).json()
    detail = staff.get(f"{JOBS_URL}{alices.public_id}/")
    cancel = staff.post(f"{JOBS_URL}{bobs.public_id}/cancel/")

    assert {job["id"] for job in listed["results"]} == {str(alices.public_id), str(bobs.public_id)}
    assert [job["id"] for job in only_bob["results"]] == [str(bobs.public_id)]
    assert detail.status_code == 200
    assert cancel.status_code == 200
    assert Job.objects.get(pk=bobs.pk).cancelled_by == "operator"


@token_mode
def test_creating_a_user_is_refused_to_non_staff_and_to_anonymous(
    make_user: MakeUser, api_client: APIClient
) -> None:
    as_user = client_with_token(make_user("alice")).post(
        USERS_URL, {"user_id": "carol", "weight": 2}, format="json"
    )
    anonymous = api_client.post(USERS_URL, {"user_id": "carol", "weight": 2}, format="json")

    assert as_user.status_code == 403
    assert "error" in as_user.json()
    assert anonymous.status_code == 401
    assert not User.objects.filter(username="carol").exists()


@open_mode
def test_creating_a_user_is_staff_only_in_open_mode_too(api_client: APIClient) -> None:
    response = api_client.post(USERS_URL, {"user_id": "carol", "weight": 2}, format="json")

    assert response.status_code == 401
    assert not User.objects.filter(username="carol").exists()


@token_mode
def test_staff_creates_a_user_whose_token_works(make_user: MakeUser) -> None:
    staff = client_with_token(make_user("operator", is_staff=True, is_superuser=True))

    created = staff.post(USERS_URL, {"user_id": "carol", "weight": 2.5}, format="json")

    assert created.status_code == 201
    body = created.json()
    assert body["user_id"] == "carol"
    assert body["weight"] == 2.5
    assert body["is_staff"] is False
    assert (body["queued"], body["running"], body["device_seconds"]) == (0, 0, 0.0)
    assert User.objects.get(username="carol").weight == 2.5
    carol = APIClient()
    carol.credentials(HTTP_AUTHORIZATION=f"Token {body['token']}")
    submitted = submit(carol, {"input": 1})
    assert submitted.status_code == 201
    assert submitted.json()["user_id"] == "carol"


@token_mode
def test_a_user_reads_its_own_account_with_counts_and_device_time(make_user: MakeUser) -> None:
    alice = make_user("alice", weight=3.0)
    client = client_with_token(alice)
    job_ids = [job["id"] for job in submit(client, [{"input": n} for n in range(3)]).json()]
    Job.objects.filter(public_id=job_ids[0]).update(status=JobStatus.RUNNING)
    FairShareAccount.objects.filter(user=alice).update(
        queued_count=2, running_count=1, served_seconds=12.5
    )

    response = client.get(f"{USERS_URL}alice/")

    assert response.status_code == 200
    assert response.json() == {
        "user_id": "alice",
        "weight": 3.0,
        "is_active": True,
        "is_staff": False,
        "queued": 2,
        "running": 1,
        "device_seconds": 12.5,
    }


@token_mode
def test_the_account_counts_come_from_submits(make_user: MakeUser) -> None:
    client = client_with_token(make_user("alice"))
    submit(client, [{"input": n} for n in range(4)])

    assert client.get(f"{USERS_URL}alice/").json()["queued"] == 4


@token_mode
def test_a_user_may_not_read_another_users_account_but_staff_may(make_user: MakeUser) -> None:
    make_user("bob")
    alice = client_with_token(make_user("alice"))
    staff = client_with_token(make_user("operator", is_staff=True, is_superuser=True))

    as_alice = alice.get(f"{USERS_URL}bob/")
    as_staff = staff.get(f"{USERS_URL}bob/")

    assert as_alice.status_code == 403
    assert "error" in as_alice.json()
    assert as_staff.status_code == 200
    assert as_staff.json()["user_id"] == "bob"


@token_mode
def test_only_staff_may_change_a_weight_and_it_takes_effect(make_user: MakeUser) -> None:
    alice = make_user("alice")
    staff = client_with_token(make_user("operator", is_staff=True, is_superuser=True))

    refused = client_with_token(alice).patch(f"{USERS_URL}alice/", {"weight": 50}, format="json")
    alice.refresh_from_db()
    assert refused.status_code == 403
    assert alice.weight == 1.0

    changed = staff.patch(f"{USERS_URL}alice/", {"weight": 4}, format="json")
    alice.refresh_from_db()
    assert changed.status_code == 200
    assert changed.json()["weight"] == 4.0
    assert alice.weight == 4.0


@token_mode
def test_a_new_weight_is_charged_at_the_next_dispatch(make_user: MakeUser) -> None:
    from jobs.queue import claim_next

    alice = make_user("alice")
    staff = client_with_token(make_user("operator", is_staff=True, is_superuser=True))
    submit(client_with_token(alice), [{"input": n} for n in range(2)])

    staff.patch(f"{USERS_URL}alice/", {"weight": 4}, format="json")
    claim = claim_next("cpu", "test-device")

    assert claim is not None
    assert claim.charged_weight == 4.0


@token_mode
def test_a_token_is_exchanged_for_username_and_password(
    make_user: MakeUser, api_client: APIClient
) -> None:
    make_user("alice", password="correct horse battery")

    issued = api_client.post(
        TOKEN_URL, {"username": "alice", "password": "correct horse battery"}, format="json"
    )
    assert issued.status_code == 200
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {issued.json()['token']}")
    submitted = submit(client, {"input": 1})
    assert submitted.status_code == 201
    assert submitted.json()["user_id"] == "alice"

    wrong = api_client.post(TOKEN_URL, {"username": "alice", "password": "wrong"}, format="json")
    assert wrong.status_code == 401  # well formed, declined (issue 17)
    assert "token" not in wrong.json()


@token_mode
def test_a_deactivated_users_own_token_is_refused(make_user: MakeUser) -> None:
    # DRF's TokenAuthentication rejects an inactive user's token as bad credentials (401).
    client = client_with_token(make_user("alice", is_active=False))

    response = submit(client, {"input": 1})

    assert response.status_code == 401
    assert "inactive" in response.json()["error"]
    assert Job.objects.count() == 0


@token_mode
def test_staff_submitting_for_a_deactivated_user_is_refused_with_403(make_user: MakeUser) -> None:
    make_user("alice", is_active=False)
    staff = client_with_token(make_user("operator", is_staff=True, is_superuser=True))

    response = submit(staff, {"user_id": "alice", "input": 1})

    assert response.status_code == 403
    assert "deactivated" in response.json()["error"]
    assert Job.objects.count() == 0


@open_mode
def test_naming_a_deactivated_user_in_open_mode_is_refused_with_403(
    make_user: MakeUser, api_client: APIClient
) -> None:
    make_user("alice", is_active=False)

    response = submit(api_client, {"user_id": "alice", "input": 1})

    assert response.status_code == 403
    assert "deactivated" in response.json()["error"]
    assert Job.objects.count() == 0


# --- open mode on: the request names its user --------------------------------------------


@open_mode
def test_open_mode_takes_the_user_from_the_body(api_client: APIClient) -> None:
    response = submit(api_client, {"user_id": "alice", "input": 1})

    assert response.status_code == 201
    assert response.json()["user_id"] == "alice"
    assert User.objects.filter(username="alice").exists()


@open_mode
def test_open_mode_takes_the_user_from_the_x_user_id_header(api_client: APIClient) -> None:
    response = submit(api_client, {"input": 1}, **{"X-User-Id": "bob"})

    assert response.status_code == 201
    assert response.json()["user_id"] == "bob"


@open_mode
def test_open_mode_prefers_the_body_over_the_header(api_client: APIClient) -> None:
    response = submit(api_client, {"user_id": "alice", "input": 1}, **{"X-User-Id": "bob"})

    assert response.json()["user_id"] == "alice"


@open_mode
def test_open_mode_without_a_user_submits_as_anonymous(api_client: APIClient) -> None:
    response = submit(api_client, {"input": 1})

    assert response.status_code == 201
    assert response.json()["user_id"] == "anonymous"


@open_mode
def test_open_mode_reads_a_job_by_its_id_without_a_token(api_client: APIClient) -> None:
    job = job_of("alice")

    response = api_client.get(f"{JOBS_URL}{job.public_id}/")

    assert response.status_code == 200
    assert response.json()["user_id"] == "alice"


@open_mode
def test_open_mode_lists_without_a_token_only_when_the_user_is_named(api_client: APIClient) -> None:
    job_of("alice")
    job_of("bob")

    named = api_client.get(JOBS_URL, {"user_id": "alice"})
    unnamed = api_client.get(JOBS_URL)

    assert named.status_code == 200
    assert {job["user_id"] for job in named.json()["results"]} == {"alice"}
    assert unnamed.status_code == 400
    assert "user_id" in unnamed.json()


@open_mode
def test_open_mode_still_binds_a_token_to_its_user(make_user: MakeUser) -> None:
    response = submit(client_with_token(make_user("alice")), {"user_id": "mallory", "input": 1})

    assert response.status_code == 403
    assert Job.objects.count() == 0
