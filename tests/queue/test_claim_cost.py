"""The claim stays a few index lookups whatever the backlog (PostgreSQL EXPLAIN)."""

from __future__ import annotations

import pytest
from django.db import connection

from jobs.models import Job, User
from jobs.queue import claim_next, pool_id_for

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def fill_backlog(users: int, jobs: int) -> None:
    """100,000 queued jobs over `users` users, and their accounts, each written with one
    INSERT ... SELECT (one submit per user made these accounts in 1,000 round trips; the
    plans read the tables as they end up, not how they were filled)."""
    User.objects.bulk_create(User(username=f"bulk{i}") for i in range(users))
    owners = list(User.objects.filter(username__startswith="bulk").order_by("id"))
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO jobs_fairshareaccount
                (pool_id, user_id, virtual_time, queued_count, running_count, served_seconds)
            SELECT %s, u, 0, 0, 0, 0 FROM unnest(%s::bigint[]) AS u
            """,
            [pool_id_for("cpu"), [o.pk for o in owners]],
        )
        cursor.execute(
            """
            INSERT INTO jobs_job (public_id, owner_id, kind, input, device_type, priority, status,
                                  error, created_at, device, attempts, charged_cost, charged_weight,
                                  cancelled_by, size)
            SELECT gen_random_uuid(), (%s::bigint[])[1 + g %% %s], 'noop', '0'::jsonb, 'cpu', (g %% 7) - 3,
                   'queued', '', now(), '', 0, 0, 1, '', 0
            FROM generate_series(1, %s) AS g
            """,
            [[o.pk for o in owners], users, jobs],
        )
        cursor.execute(
            "UPDATE jobs_fairshareaccount SET queued_count = c.n FROM "
            "(SELECT owner_id, count(*) AS n FROM jobs_job WHERE status = 'queued' GROUP BY owner_id) c "
            "WHERE c.owner_id = user_id"
        )
        cursor.execute("ANALYZE jobs_job; ANALYZE jobs_fairshareaccount")


def explain(sql: str, params: list) -> str:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql, params)
        return "\n".join(row[0] for row in cursor.fetchall())


def test_the_claim_queries_use_indexes_not_a_scan_of_100000_queued_jobs():
    fill_backlog(users=1000, jobs=100_000)
    assert Job.objects.filter(status="queued").count() >= 100_000
    pool_id = pool_id_for("cpu")
    account_plan = explain(
        "SELECT id, user_id FROM jobs_fairshareaccount WHERE pool_id = %s AND queued_count > 0 "
        "ORDER BY virtual_time, id LIMIT 1",
        [pool_id],
    )
    owner = User.objects.get(username="bulk7")
    head_plan = explain(
        "SELECT id FROM jobs_job WHERE device_type = 'cpu' AND owner_id = %s AND status = 'queued' "
        "ORDER BY priority DESC, id LIMIT 1 FOR UPDATE SKIP LOCKED",
        [owner.pk],
    )
    assert "account_backlogged" in account_plan, account_plan
    assert "job_queue_head" in head_plan, head_plan
    assert "Seq Scan on jobs_job" not in head_plan
    assert "Sort" not in head_plan

    # The statements the claim really runs (inside zypher_claim), as auto_explain logs
    # them to this session: none scans or sorts the jobs table.
    plans: list[str] = []
    raw = connection.connection
    raw.add_notice_handler(lambda diagnostic: plans.append(diagnostic.message_primary or ""))
    with connection.cursor() as cursor:
        cursor.execute("LOAD 'auto_explain'")
        cursor.execute("SET auto_explain.log_min_duration = 0")
        cursor.execute("SET auto_explain.log_nested_statements = on")
        cursor.execute("SET client_min_messages = log")
    try:
        claim = claim_next("cpu", "device")
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SET client_min_messages = notice")
    assert claim is not None
    nested = [plan for plan in plans if "jobs_job" in plan]
    assert any("job_queue_head" in plan for plan in nested), plans
    for plan in nested:
        assert "Seq Scan on jobs_job" not in plan, plan
        assert "Sort" not in plan, plan
