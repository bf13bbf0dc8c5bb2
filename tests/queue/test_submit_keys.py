"""Idempotency keys under poison input and concurrency, on SQLite and PostgreSQL alike: a
key answers only with the jobs it created, for the request that created them; two submits
at once with one key queue once; one user's key never reaches another's jobs."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import transaction
from rest_framework.test import APIClient

from jobs.invariants import find_violations
from jobs.models import FairShareAccount, Job, User
from jobs.queue import (
    IdempotencyKeyMismatch,
    JobSpec,
    NamedUser,
    QueueLimitReached,
    cancel_job,
    delete_users,
    submit_jobs,
)
from tests.support.api_helpers import submit
from tests.support.processes import wait_until
from tests.support.sessions import run_at_once, sessions_waiting_on_locks

pytest_plugins = ["tests.support.api_fixtures"]


@pytest.mark.django_db
def test_a_key_is_not_answered_with_one_job_another_request_created() -> None:
    """`k#1` is what a batch of two under `k` stores for its second job: a batch of two
    under `k` must not be answered with the one job a single submit keyed `k#1` made."""
    submit_jobs(NamedUser("kai"), [JobSpec("noop", 1)], idempotency_key="k#1")

    with pytest.raises(IdempotencyKeyMismatch) as refused:
        submit_jobs(NamedUser("kai"), [JobSpec("noop", 2)] * 2, idempotency_key="k")

    assert "'k'" in str(refused.value)
    assert Job.objects.count() == 1
    assert FairShareAccount.objects.get().queued_count == 1
    assert find_violations() == []


@pytest.mark.django_db
@pytest.mark.parametrize(("first", "second"), [(1, 2), (2, 1), (3, 2), (3, 1), (2, 3)])
def test_a_key_is_not_answered_with_the_jobs_of_a_request_of_another_size(
    first: int, second: int
) -> None:
    """A single job stores its key as sent, a batch `k#0`, `k#1`, ...: a request of
    another size under the same key must not find nothing and queue anew, nor be answered
    with the first jobs of a longer batch."""
    created, _ = submit_jobs(NamedUser("kai"), [JobSpec("noop", 1)] * first, idempotency_key="k")

    with pytest.raises(IdempotencyKeyMismatch) as refused:
        submit_jobs(NamedUser("kai"), [JobSpec("noop", 2)] * second, idempotency_key="k")

    assert "'k'" in str(refused.value)
    assert Job.objects.count() == first
    assert FairShareAccount.objects.get().queued_count == first
    again, new = submit_jobs(NamedUser("kai"), [JobSpec("noop", 3)] * first, idempotency_key="k")
    assert (again, new) == (created, False)
    assert find_violations() == []


@pytest.mark.django_db
@pytest.mark.usefixtures("open_mode")
def test_a_key_reused_for_a_bigger_batch_answers_422_naming_it(api_client: APIClient) -> None:
    headers = {"Idempotency-Key": "batch"}
    first = submit(api_client, [{"user_id": "lia", "input": i} for i in range(2)], **headers)
    assert first.status_code == 201, first.content

    again = submit(api_client, [{"user_id": "lia", "input": i} for i in range(3)], **headers)

    assert again.status_code == 422, again.content
    assert "Idempotency-Key" in again.json()["error"] and "'batch'" in again.json()["error"]
    assert Job.objects.count() == 2


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("other", "key", "count"),
    [("k#0", "k", 1), ("k#1", "k", 1), ("k", "k#0", 2), ("k", "k#0", 1)],
)
def test_a_key_that_looks_like_another_requests_is_not_that_request(
    other: str, key: str, count: int
) -> None:
    """A single job keyed `k#0` is not a batch under `k` (a batch stores `k#0` and `k#1`):
    `k` is answered as the request it is, and its retry with the jobs it created. (A
    single job keyed `k#2` before a batch of two under `k` still refuses the batch: its
    retry could not tell it from the first jobs of a batch of three.)"""
    [unrelated], _ = submit_jobs(NamedUser("kai"), [JobSpec("noop", 1)], idempotency_key=other)

    created, new = submit_jobs(NamedUser("kai"), [JobSpec("noop", 2)] * count, idempotency_key=key)
    again, repeated = submit_jobs(
        NamedUser("kai"), [JobSpec("noop", 3)] * count, idempotency_key=key
    )

    assert new and (again, repeated) == (created, False)
    assert unrelated not in created
    assert Job.objects.count() == FairShareAccount.objects.get().queued_count == 1 + count
    assert find_violations() == []


@pytest.mark.django_db
def test_a_retry_is_answered_after_another_key_like_its_batch_keys_is_used() -> None:
    """`k`, then a single job keyed `k#0`: the retry of `k` is `k`'s job."""
    [created], _ = submit_jobs(NamedUser("kai"), [JobSpec("noop", 1)], idempotency_key="k")
    submit_jobs(NamedUser("kai"), [JobSpec("noop", 1)], idempotency_key="k#0")

    assert submit_jobs(NamedUser("kai"), [JobSpec("noop", 2)], idempotency_key="k") == (
        [created],
        False,
    )


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("sizes", [(1, 2), (2, 3), (1, 12)])
def test_two_submits_at_once_of_different_sizes_under_one_key_queue_one(
    sizes: tuple[int, int],
) -> None:
    """Each on its own connection: one request's jobs are queued, the other is a mismatch."""
    User.objects.create(username="ivy")
    outcomes: list[tuple[int, str]] = []

    def work(count: int) -> Any:
        def run() -> None:
            try:
                submit_jobs(NamedUser("ivy"), [JobSpec("noop", 1)] * count, idempotency_key="k")
                outcomes.append((count, "queued"))
            except IdempotencyKeyMismatch:
                outcomes.append((count, "mismatch"))

        return run

    for _ in range(5):
        Job.objects.all().delete()
        FairShareAccount.objects.all().delete()
        outcomes.clear()
        assert run_at_once([work(sizes[0]), work(sizes[1])]) == []
        assert sorted(outcome for _, outcome in outcomes) == ["mismatch", "queued"]
        [queued] = [count for count, outcome in outcomes if outcome == "queued"]
        assert Job.objects.count() == FairShareAccount.objects.get().queued_count == queued
        assert find_violations() == []


@pytest.mark.django_db
@pytest.mark.usefixtures("open_mode")
def test_a_key_of_one_job_reused_for_a_batch_answers_422(api_client: APIClient) -> None:
    headers = {"Idempotency-Key": "once"}
    first = submit(api_client, {"user_id": "lia", "input": 1}, **headers)
    assert first.status_code == 201, first.content

    again = submit(api_client, [{"user_id": "lia", "input": i} for i in range(2)], **headers)

    assert again.status_code == 422, again.content
    assert "'once'" in again.json()["error"]
    assert Job.objects.count() == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_submits_at_once_with_one_key_queue_once_and_users_keys_are_their_own() -> None:
    mia, noa = User.objects.create(username="mia"), User.objects.create(username="noa")
    answers: list[tuple[str, list[int], bool]] = []

    def work(owner: Any) -> Any:
        def run() -> None:
            jobs, created = submit_jobs(owner, [JobSpec("noop", 1)] * 2, idempotency_key="same")
            answers.append((jobs[0].owner.username, [job.pk for job in jobs], created))

        return run

    failures = run_at_once([work(mia), work(mia), work(NamedUser("mia")), work(noa)])

    assert failures == []
    by_user: dict[str, list[tuple[list[int], bool]]] = {}
    for name, pks, created in answers:
        by_user.setdefault(name, []).append((pks, created))
    assert sorted(created for _, created in by_user["mia"]) == [False, False, True]
    assert len({tuple(pks) for pks, _ in by_user["mia"]}) == 1  # all three: the same jobs
    assert by_user["noa"][0][1] is True
    assert set(by_user["noa"][0][0]).isdisjoint(by_user["mia"][0][0])
    assert Job.objects.filter(owner=mia).count() == 2 and Job.objects.filter(owner=noa).count() == 2
    assert find_violations() == []


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_submits_naming_a_user_being_deleted_create_it_once_under_the_cap(
    settings: Any,
) -> None:
    """Both wait on the delete's row lock; once it commits, zypher_submit's look-up finds
    no row and both insert the name: one creates it, the other waits for that row and
    then takes its turn under its lock, where the cap (3) refuses its 2 jobs whole."""
    settings.ZYPHER_MAX_QUEUED_PER_USER = 3
    [old], _ = submit_jobs(NamedUser("kim"), [JobSpec("noop", 0)])
    assert cancel_job(old)
    outcomes: list[str] = []

    def work() -> None:
        try:
            submit_jobs(NamedUser("kim"), [JobSpec("noop", 1)] * 2)
            outcomes.append("queued")
        except QueueLimitReached:
            outcomes.append("full")

    failures: list[BaseException] = []
    runner = threading.Thread(target=lambda: failures.extend(run_at_once([work, work])))
    with transaction.atomic():
        assert delete_users([old.owner_id]) == []
        runner.start()
        wait_until(lambda: sessions_waiting_on_locks() >= 2, 60, "both submits to wait")
    runner.join(timeout=120)

    assert failures == []
    assert sorted(outcomes) == ["full", "queued"]
    kim = User.objects.get(username="kim")
    assert kim.pk != old.owner_id
    assert Job.objects.filter(owner=kim, status="queued").count() == 2
    assert FairShareAccount.objects.get(user=kim).queued_count == 2
    assert find_violations() == []
