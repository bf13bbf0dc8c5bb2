"""A submit locks its user's row before its accounts (zypher_submit): every other path that
locks a user's row must take it first too, or the two wait on each other. On PostgreSQL.

Deleting a user (the admin's delete) removes their accounts and then their row; a submit
holding the row and waiting for an account closed a cycle with it. A third session holds
the account's lock until both wait, so they overlap for certain; what is asserted is what
happened to the user and the jobs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
from django.contrib.admin import site
from django.contrib.messages.storage.fallback import FallbackStorage
from django.db import OperationalError, connection, transaction
from django.test import RequestFactory

from jobs.invariants import find_violations
from jobs.models import FairShareAccount, Job, User
from jobs.queue import JobSpec, NamedUser, OwnerDeactivated, OwnerDeleted, cancel_job, submit_jobs
from tests.support.processes import wait_until
from tests.support.sessions import run_at_once, sessions_waiting_on_locks

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def at_least_waiting(count: int) -> bool:
    return sessions_waiting_on_locks() >= count


def ended_user(name: str) -> User:
    """A user with an account that counts nothing and one ended job: one the admin deletes."""
    user = User.objects.create(username=name)
    [job], _ = submit_jobs(user, [JobSpec("noop", 1)])
    assert cancel_job(job)
    return user


def admin_deletes(user: User) -> Callable[[], None]:
    request = RequestFactory().post("/admin/")
    request.user = User.objects.create_superuser(f"root-{user.username}", password="x")
    request.session = {}  # type: ignore[assignment]
    request._messages = FallbackStorage(request)  # type: ignore[attr-defined]  # as its middleware
    return lambda: site._registry[User].delete_model(request, user)


def in_turn_while_holding_the_account(
    user: User, first: Callable[[], None], second: Callable[[], None]
) -> list[BaseException]:
    """`first`, then (once it waits on a lock) `second`, run while this session holds
    `user`'s account row, let go when both wait: the first in line gets it first."""
    failures: list[BaseException] = []
    runners: list[threading.Thread] = []
    with transaction.atomic():
        list(FairShareAccount.objects.select_for_update(no_key=True).filter(user=user))
        for count, work in enumerate((first, second), start=1):

            def run(work: Callable[[], None] = work) -> None:
                failures.extend(run_at_once([work]))

            runner = threading.Thread(target=run)
            runner.start()
            runners.append(runner)
            wait_until(partial(at_least_waiting, count), 60, f"{count} to wait")
    for runner in runners:
        runner.join(timeout=120)
    return failures


def submit_one(user: User, outcomes: list[str]) -> Callable[[], None]:
    def work() -> None:
        try:
            submit_jobs(user, [JobSpec("noop", 2)])
            outcomes.append("queued")
        except OwnerDeactivated:
            outcomes.append("refused")
        except OwnerDeleted:
            outcomes.append("gone")

    return work


def test_a_user_deleted_while_their_submit_waits_is_deleted_and_the_submit_told_so() -> None:
    erin = ended_user("erin")
    outcomes: list[str] = []

    failures = in_turn_while_holding_the_account(
        erin, admin_deletes(erin), submit_one(erin, outcomes)
    )

    assert failures == []  # no deadlock, no foreign key left dangling
    assert not User.objects.filter(username="erin").exists()
    assert outcomes == ["gone"]  # not "deactivated": the API answers 401, no one to be
    assert not Job.objects.filter(owner_id=erin.pk).exists()
    assert find_violations() == []


def test_a_submit_that_lands_before_a_delete_keeps_the_user_and_its_job() -> None:
    erin = ended_user("erin")
    outcomes: list[str] = []

    failures = in_turn_while_holding_the_account(
        erin, submit_one(erin, outcomes), admin_deletes(erin)
    )

    assert failures == []
    assert outcomes == ["queued"]  # answered 201: the job must not vanish with its user
    assert User.objects.filter(pk=erin.pk).exists()
    assert Job.objects.filter(owner=erin, status="queued").count() == 1
    assert FairShareAccount.objects.get(user=erin).queued_count == 1
    assert find_violations() == []


def test_a_submit_killed_while_it_holds_the_users_row_leaves_nothing_and_the_next_goes_through(
    settings: Any,
) -> None:
    settings.ZYPHER_MAX_QUEUED_PER_USER = 3
    fay = User.objects.create(username="fay")
    submit_jobs(fay, [JobSpec("noop", 1)])
    killed: list[BaseException] = []

    def doomed() -> None:
        try:
            submit_jobs(fay, [JobSpec("noop", 2), JobSpec("noop", 3, device_type="other")])
        except OperationalError as error:  # its backend was terminated
            killed.append(error)

    with transaction.atomic():
        list(FairShareAccount.objects.select_for_update(no_key=True).filter(user=fay))
        runner = threading.Thread(target=lambda: run_at_once([doomed]))
        runner.start()
        wait_until(lambda: sessions_waiting_on_locks() >= 1, 60, "the submit to wait")
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )
    runner.join(timeout=120)

    assert len(killed) == 1
    assert Job.objects.filter(owner=fay).count() == 1
    assert FairShareAccount.objects.get(user=fay).queued_count == 1
    # Its user lock went with it: the next submit is not held, and the cap counts 1.
    submit_jobs(fay, [JobSpec("noop", 4), JobSpec("noop", 5)])
    assert Job.objects.filter(owner=fay, status="queued").count() == 3
    assert find_violations() == []


def keyed_submit(
    owner: User | NamedUser, key: str, outcomes: dict[str, object]
) -> Callable[[], None]:
    def work() -> None:
        try:
            jobs, created = submit_jobs(owner, [JobSpec("noop", 7)], idempotency_key=key)
            outcomes[key] = ([job.pk for job in jobs], created)
        except OwnerDeactivated:
            outcomes[key] = "refused"

    return work


@pytest.mark.parametrize("by_name", [False, True])
def test_submits_waiting_on_a_deactivation_answer_an_accepted_key_and_refuse_a_new_one(
    by_name: bool,
) -> None:
    """A deactivation holds the user's row; a retry of an accepted submit and a new submit
    wait on it. Once it commits, the retry answers with the jobs it accepted (200), the
    new one is refused (403), and nothing more is queued."""
    gus = User.objects.create(username="gus")
    [accepted], _ = submit_jobs(gus, [JobSpec("noop", 1)], idempotency_key="once")
    owner: User | NamedUser = NamedUser("gus") if by_name else gus
    outcomes: dict[str, object] = {}
    runners: list[threading.Thread] = []
    failures: list[BaseException] = []
    with transaction.atomic():
        User.objects.filter(pk=gus.pk).update(is_active=False)  # holds the row till commit
        for count, key in enumerate(("once", "new"), start=1):
            work = keyed_submit(owner, key, outcomes)
            runner = threading.Thread(target=lambda work=work: failures.extend(run_at_once([work])))
            runner.start()
            runners.append(runner)
            wait_until(partial(at_least_waiting, count), 60, f"{count} to wait")
    for runner in runners:
        runner.join(timeout=120)

    assert failures == []
    assert outcomes == {"once": ([accepted.pk], False), "new": "refused"}
    assert list(Job.objects.values_list("pk", flat=True)) == [accepted.pk]
    assert FairShareAccount.objects.get(user=gus).queued_count == 1
    assert find_violations() == []
