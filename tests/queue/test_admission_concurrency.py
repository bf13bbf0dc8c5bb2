"""Submits of one user at once, on PostgreSQL: the per-user cap is exact and a user named
for the first time by two submits at once is created once.

Each submit runs in a session of its own (tests.support.sessions). A third session holds
a lock the submits need until both wait on a lock, so they overlap for certain; what is
asserted is what was queued.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connection, transaction

from jobs.invariants import find_violations
from jobs.models import FairShareAccount, Job, User
from jobs.queue import JobSpec, NamedUser, QueueLimitReached, submit_jobs
from tests.support.processes import wait_until
from tests.support.sessions import run_at_once, sessions_waiting_on_locks

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

CAP = 3


def submit_twice_at_once(owner: User | NamedUser, hold: str, params: list[Any]) -> list[str]:
    """Two sessions submit one job each for `owner` while this one holds `hold` (SQL run in
    a transaction); released when both wait on a lock. Returns their outcomes."""
    outcomes: list[str] = []

    def submitter() -> None:
        try:
            submit_jobs(owner, [JobSpec("noop", 1)])
            outcomes.append("queued")
        except QueueLimitReached:
            outcomes.append("refused")

    failures: list[BaseException] = []
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(hold, params)
        runner = threading.Thread(
            target=lambda: failures.extend(run_at_once([submitter, submitter]))
        )
        runner.start()
        try:
            wait_until(lambda: sessions_waiting_on_locks() >= 2, 60, "both submits to wait")
        finally:
            transaction.set_rollback(True)  # release whatever `hold` took or wrote
    runner.join(timeout=120)
    assert failures == []
    return sorted(outcomes)


def test_two_submits_of_one_user_at_the_cap_at_once_never_pass_it(settings: Any) -> None:
    settings.ZYPHER_MAX_QUEUED_PER_USER = CAP
    carol = User.objects.create(username="carol")
    submit_jobs(carol, [JobSpec("noop", 1) for _ in range(CAP - 1)])  # room for one more

    outcomes = submit_twice_at_once(
        carol,
        "SELECT 1 FROM jobs_fairshareaccount WHERE user_id = %s FOR UPDATE",
        [carol.pk],
    )

    assert outcomes == ["queued", "refused"]
    assert Job.objects.filter(owner=carol).count() == CAP
    assert FairShareAccount.objects.get(user=carol).queued_count == CAP
    assert find_violations() == []


def test_two_first_submits_naming_one_new_user_create_it_once(settings: Any) -> None:
    settings.ZYPHER_MAX_QUEUED_PER_USER = CAP
    # An uncommitted row of the same name: both submits find no user, and both inserts
    # wait on it; when it is rolled back, one creates the user and the other finds it.
    outcomes = submit_twice_at_once(
        NamedUser("dave"),
        "INSERT INTO jobs_user (password, is_superuser, username, first_name, last_name, "
        "email, is_staff, is_active, date_joined, weight) "
        "VALUES ('', false, %s, '', '', '', false, true, now(), 1)",
        ["dave"],
    )

    assert outcomes == ["queued", "queued"]
    dave = User.objects.get(username="dave")
    assert Job.objects.filter(owner=dave).count() == 2
    assert FairShareAccount.objects.get(user=dave).queued_count == 2
    assert find_violations() == []
