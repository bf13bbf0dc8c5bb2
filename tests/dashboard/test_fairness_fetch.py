"""The fairness sweep's data fetch (`stats._fetch_intervals`): on PostgreSQL the window's
intervals come back as binary arrays of raw timestamps, one row per pool; every time
must be the same number of seconds as the row-by-row reading gives (date_part on
PostgreSQL, julianday on SQLite), NULLs where a time is missing."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest
from django.db import connection
from django.utils import timezone

from jobs.models import Job, JobRun, JobStatus, User
from jobs.monitoring import stats

pytestmark = pytest.mark.django_db


def reference_rows(t0: datetime, t1: datetime) -> dict[str, list[tuple[float, ...]]]:
    """The intervals as seconds after t0, read row by row with the database's own
    arithmetic (what the fetch replaced), sorted, per pool."""
    job, run = Job._meta.db_table, JobRun._meta.db_table
    seconds = stats._seconds_sql
    arrived = seconds("CASE WHEN started_at < created_at THEN started_at ELSE created_at END")
    sql = f"""
        SELECT device_type, owner_id, {arrived}, {seconds("started_at")},
               {seconds("finished_at")} FROM {job}
        WHERE finished_at > %(t0)s AND finished_at <= %(t1)s
        UNION ALL
        SELECT device_type, owner_id, {arrived}, {seconds("started_at")}, NULL FROM {job}
        WHERE status = 'running'
        UNION ALL
        SELECT device_type, owner_id, NULL, {seconds("started_at")}, {seconds("ended_at")}
        FROM {run} WHERE ended_at > %(t0)s AND started_at < %(t1)s
    """
    adapt = connection.ops.adapt_datetimefield_value
    with connection.cursor() as cursor:
        cursor.execute(sql, {"t0": adapt(t0), "t1": adapt(t1)})
        rows = cursor.fetchall()
    pools: dict[str, list[tuple[float, ...]]] = {}
    for pool, owner, *times in rows:
        pools.setdefault(pool, []).append(
            (float(owner), *(np.nan if at is None else float(at) for at in times))
        )
    return {pool: sorted(found) for pool, found in pools.items()}


def test_the_intervals_are_read_as_the_same_seconds_as_row_by_row(now: datetime) -> None:
    t0, t1 = now - stats.WINDOW, now
    a, b = User.objects.create(username="a"), User.objects.create(username="b")
    odd = timedelta(microseconds=123_457)
    # Ended in the window, created long before it (days: the arrival is clipped anyway).
    long_ago = Job.objects.create(
        owner=a,
        device_type="cpu",
        status=JobStatus.SUCCEEDED,
        started_at=t0 + timedelta(seconds=10) + odd,
        finished_at=t0 + timedelta(seconds=70, microseconds=999_999),
    )
    Job.objects.filter(pk=long_ago.pk).update(created_at=t0 - timedelta(days=3) + odd)
    # Started before it was created (a clock step): it arrived when it started.
    early = Job.objects.create(
        owner=b,
        device_type="gpu",
        status=JobStatus.FAILED,
        started_at=t0 + timedelta(seconds=100, microseconds=1),
        finished_at=t1 - timedelta(microseconds=1),
    )
    Job.objects.filter(pk=early.pk).update(created_at=t0 + timedelta(seconds=200))
    # Running (no end yet), and a requeued attempt of it (no arrival of its own).
    running = Job.objects.create(
        owner=b,
        device_type="cpu",
        status=JobStatus.RUNNING,
        started_at=t1 - timedelta(seconds=5) + odd,
    )
    Job.objects.filter(pk=running.pk).update(created_at=t0 - timedelta(seconds=30))
    JobRun.objects.create(
        job=running,
        owner=b,
        device_type="cpu",
        started_at=t0 - timedelta(seconds=20) + odd,
        ended_at=t0 + timedelta(seconds=40),
    )
    # Outside the window, or not in it at all: not read.
    Job.objects.create(owner=a, device_type="cpu", status=JobStatus.QUEUED)
    Job.objects.create(
        owner=a,
        device_type="cpu",
        status=JobStatus.SUCCEEDED,
        started_at=t0 - timedelta(seconds=9),
        finished_at=t0,
    )
    params = {
        "t0": connection.ops.adapt_datetimefield_value(t0),
        "t1": connection.ops.adapt_datetimefield_value(t1),
    }
    fetched = stats._fetch_intervals(params, t0)
    expected = reference_rows(t0, t1)
    assert sorted(fetched) == sorted(expected) == ["cpu", "gpu"]
    exact = connection.vendor == "postgresql"  # julianday is good to about 0.1 ms
    for pool, intervals in fetched.items():
        got = sorted(
            zip(
                intervals.owner.astype(float).tolist(),
                intervals.arrived.tolist(),
                intervals.started.tolist(),
                intervals.left.tolist(),
                strict=True,
            )
        )
        assert len(got) == len(expected[pool])
        for mine, theirs in zip(got, expected[pool], strict=True):
            for value, reference in zip(mine, theirs, strict=True):
                if np.isnan(reference):
                    assert np.isnan(value)
                elif exact and abs(reference) < 86_400:
                    assert value == reference  # the same double, bit for bit
                else:
                    assert value == pytest.approx(reference, abs=1e-3)


@pytest.fixture
def now() -> datetime:
    return timezone.now()
