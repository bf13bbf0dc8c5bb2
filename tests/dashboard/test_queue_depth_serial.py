"""The queue depth's GROUP BY runs without parallel workers on PostgreSQL: their start-up
cost more than they saved (`stats._without_parallel_workers`), and only for that query."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection

from jobs.monitoring import stats
from jobs.queue import JobSpec, NamedUser, submit_jobs


def show_parallel_workers() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW max_parallel_workers_per_gather")
        return str(cursor.fetchone()[0])


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_queue_depth_is_counted_by_one_backend_and_the_setting_ends_with_it() -> None:
    submit_jobs(NamedUser("ann"), [JobSpec("noop", 1, priority=5)] * 2)
    submit_jobs(NamedUser("bo"), [JobSpec("noop", 1, device_type="gpu")])
    default = show_parallel_workers()
    seen: list[str] = []

    def note_the_setting(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if "GROUP BY" in sql and '"priority"' in sql:
            with context["connection"].connection.cursor() as raw:
                seen.append(str(raw.execute("SHOW max_parallel_workers_per_gather").fetchone()[0]))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(note_the_setting):
        depth = stats.queue_depth()

    assert seen == ["0"]
    assert default != "0" and show_parallel_workers() == default  # SET LOCAL: this query only
    assert depth["total"] == 3
    assert depth["by_pool"] == [
        {"pool": "cpu", "queued": 2, "running": 0},
        {"pool": "gpu", "queued": 1, "running": 0},
    ]
    assert depth["by_priority"] == [{"priority": 5, "queued": 2}, {"priority": 0, "queued": 1}]
