"""Whom a submit is for, the same on SQLite (the ORM path) and PostgreSQL (zypher_submit):
the user's row as the database holds it now decides, not a copy read earlier; a named
user is created once; the cap and the idempotency key count per user, whole."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from jobs.invariants import find_violations
from jobs.models import FairShareAccount, Job, User
from jobs.queue import (
    JobSpec,
    NamedUser,
    OwnerDeactivated,
    OwnerDeleted,
    QueueLimitReached,
    submit_jobs,
)
from tests.support.api_helpers import submit

pytest_plugins = ["tests.support.api_fixtures"]

pytestmark = pytest.mark.django_db

CAP = 4


@pytest.fixture(autouse=True)
def small_cap(settings: Any) -> None:
    settings.ZYPHER_MAX_QUEUED_PER_USER = CAP


def test_a_user_deactivated_after_it_was_read_is_refused_and_nothing_is_queued() -> None:
    gail = User.objects.create(username="gail")
    User.objects.filter(pk=gail.pk).update(is_active=False)  # `gail` still says active

    with pytest.raises(OwnerDeactivated):
        submit_jobs(gail, [JobSpec("noop", 1)])

    assert not Job.objects.exists()
    assert not FairShareAccount.objects.exists()


def test_a_user_deleted_after_it_was_read_is_refused_as_gone_and_nothing_is_queued() -> None:
    hal = User.objects.create(username="hal")
    User.objects.filter(pk=hal.pk).delete()

    with pytest.raises(OwnerDeleted) as refused:  # not "deactivated": it is no one now
        submit_jobs(hal, [JobSpec("noop", 1)])

    assert refused.value.user_id == hal.pk and "no longer exists" in str(refused.value)
    assert not Job.objects.exists()
    assert not User.objects.filter(username="hal").exists()  # not created again by id


def test_a_named_user_deleted_since_its_last_submit_is_created_again() -> None:
    [first], _ = submit_jobs(NamedUser("hana"), [JobSpec("noop", 1)])
    User.objects.filter(username="hana").delete()  # takes its jobs with it

    [again], created = submit_jobs(NamedUser("hana"), [JobSpec("noop", 2)])

    assert created and again.owner.username == "hana" and again.owner_id != first.owner_id
    assert User.objects.get(username="hana").is_active
    assert find_violations() == []


def test_a_deactivated_user_retrying_an_accepted_key_gets_its_jobs_and_a_new_key_is_refused() -> (
    None
):
    accepted, _ = submit_jobs(
        NamedUser("ida"), [JobSpec("noop", 1), JobSpec("noop", 2)], idempotency_key="k"
    )
    ida = User.objects.get(username="ida")
    User.objects.filter(pk=ida.pk).update(is_active=False)

    for owner in (NamedUser("ida"), ida):  # by name (open mode, act-for) and by the row
        again, created = submit_jobs(owner, [JobSpec("noop", 3)] * 2, idempotency_key="k")
        assert not created and [job.pk for job in again] == [job.pk for job in accepted]
        with pytest.raises(OwnerDeactivated):
            submit_jobs(owner, [JobSpec("noop", 4)], idempotency_key="new")
        with pytest.raises(OwnerDeactivated):
            submit_jobs(owner, [JobSpec("noop", 5)])

    assert Job.objects.count() == 2
    assert FairShareAccount.objects.get(user=ida).queued_count == 2
    assert find_violations() == []


def test_a_named_deactivated_user_is_refused_and_a_new_name_is_created_once() -> None:
    User.objects.create(username="ivy", is_active=False)
    with pytest.raises(OwnerDeactivated):
        submit_jobs(NamedUser("ivy"), [JobSpec("noop", 1)])

    first, _ = submit_jobs(NamedUser("Zoë"), [JobSpec("noop", 1)])
    second, _ = submit_jobs(NamedUser("Zoë"), [JobSpec("noop", 2)])
    other, _ = submit_jobs(NamedUser("zoë"), [JobSpec("noop", 3)])  # another name

    zoe = User.objects.get(username="Zoë")
    assert first[0].owner_id == second[0].owner_id == zoe.pk != other[0].owner_id
    assert zoe.is_active and zoe.weight == 1.0 and zoe.password == ""
    assert Job.objects.filter(owner__username="ivy").count() == 0
    assert find_violations() == []


def test_a_bulk_across_pools_at_the_cap_is_queued_and_one_more_is_refused_whole() -> None:
    specs = [JobSpec("noop", n, device_type=("a", "b")[n % 2]) for n in range(CAP)]
    jobs, created = submit_jobs(NamedUser("jo"), specs)
    assert created and len(jobs) == CAP

    with pytest.raises(QueueLimitReached):
        submit_jobs(NamedUser("jo"), [JobSpec("noop", 9, device_type="c")])

    assert Job.objects.filter(owner__username="jo").count() == CAP
    assert sorted(FairShareAccount.objects.values_list("queued_count", flat=True)) == [2, 2]
    assert find_violations() == []


def test_one_key_used_by_two_users_queues_for_each_and_a_retry_answers_with_its_own() -> None:
    kim, _ = submit_jobs(NamedUser("kim"), [JobSpec("noop", 1)], idempotency_key="k")
    lee, _ = submit_jobs(NamedUser("lee"), [JobSpec("noop", 2)], idempotency_key="k")
    again, created = submit_jobs(NamedUser("lee"), [JobSpec("noop", 3)], idempotency_key="k")

    assert kim[0].pk != lee[0].pk
    assert not created and [job.pk for job in again] == [lee[0].pk]
    assert Job.objects.count() == 2


@pytest.mark.usefixtures("open_mode")
@pytest.mark.parametrize(
    ("user_id", "expected"),
    [("", 400), ("x" * 151, 400), ("a b", 400), ("ünï.çødé-名", 201), ("x" * 150, 201)],
)
def test_a_submit_names_its_user_or_gets_a_400(
    api_client: APIClient, user_id: str, expected: int
) -> None:
    response = submit(api_client, {"user_id": user_id, "input": 1})

    assert response.status_code == expected, response.content
    if expected == 400:
        assert "user_id" in response.json()
        assert not Job.objects.exists()
    else:
        assert Job.objects.get().owner.username == user_id


@pytest.mark.usefixtures("open_mode")
def test_a_submit_for_a_deactivated_user_answers_403_naming_them(api_client: APIClient) -> None:
    User.objects.create(username="max", is_active=False)

    response = submit(api_client, {"user_id": "max", "input": 1})

    assert response.status_code == 403
    assert "max" in str(response.json()), response.json()
    assert not Job.objects.exists()


@pytest.mark.usefixtures("open_mode")
def test_a_deactivated_users_retry_over_http_answers_200_with_its_job_a_new_key_403(
    api_client: APIClient,
) -> None:
    accepted = submit(api_client, {"user_id": "nia", "input": 1}, **{"Idempotency-Key": "once"})
    assert accepted.status_code == 201, accepted.content
    User.objects.filter(username="nia").update(is_active=False)

    again = submit(api_client, {"user_id": "nia", "input": 2}, **{"Idempotency-Key": "once"})
    new_key = submit(api_client, {"user_id": "nia", "input": 3}, **{"Idempotency-Key": "twice"})

    assert again.status_code == 200, again.content
    assert again.json()["id"] == accepted.json()["id"]
    assert new_key.status_code == 403, new_key.content
    assert "deactivated" in new_key.json()["error"]
    assert Job.objects.count() == 1


def test_a_token_user_deleted_while_its_submit_is_on_its_way_answers_401(
    make_user: Any,
) -> None:
    oli = make_user("oli")
    client = APIClient()
    client.force_authenticate(user=oli)  # authenticated, then deleted before the submit
    User.objects.filter(pk=oli.pk).delete()

    response = submit(client, {"input": 1})

    assert response.status_code == 401, response.content
    assert "no longer exists" in response.json()["error"]
    assert "deactivated" not in response.json()["error"]
    assert response.headers["WWW-Authenticate"] == "Token"
    assert not Job.objects.exists() and not User.objects.filter(username="oli").exists()


@pytest.mark.usefixtures("open_mode")
def test_in_open_mode_a_deleted_user_named_again_is_created_again(api_client: APIClient) -> None:
    assert submit(api_client, {"user_id": "pat", "input": 1}).status_code == 201
    User.objects.filter(username="pat").delete()

    response = submit(api_client, {"user_id": "pat", "input": 2})

    assert response.status_code == 201, response.content
    assert Job.objects.get().owner.username == "pat"
