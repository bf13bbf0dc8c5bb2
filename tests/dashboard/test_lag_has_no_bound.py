"""Why the dashboard does not flag a lag alone (issue 13): measured against the fluid fair
schedule over the users actually waiting, a user's lag grows without bound under the real
policy (`jobs.fairshare.FairQueue`), while the pairwise SFQ guarantee holds throughout, so
a flag needs both (`jobs.fairshare.flagged_users`).

One device; b always has work queued; just before each of b's jobs ends a fresh user of
the same weight arrives with one job of the same length C. The policy lifts the newcomer
to the pool's virtual time, below b's, so it is served next. In the fluid schedule it
would share the device with b from its arrival to its end (C + delta), so b is entitled
to (C + delta)/2 of that and (C - delta) alone before it: (3C - delta)/2 per cycle of 2C,
while it receives C. b's lag grows by (C - delta)/2 every cycle, for ever: each
newcomer leaves with -(C - delta)/2 and nothing gives it back. Serving b first instead
leaves the newcomer waiting a whole job, and its lag (and b's, the other way) grows by
delta/2 a cycle; a scheduler that does not know C before it decides cannot avoid both.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.fairshare import (
    FairQueue,
    JobSpan,
    flagged_users,
    fluid_shares,
    lag_bound,
    pairwise_gaps,
)
from jobs.models import Job, JobStatus, User
from jobs.monitoring import stats

JOB = 10.0  # C: every job's length
DELTA = 2.0  # a newcomer arrives this long before b's job ends


def newcomers_trace(cycles: int) -> tuple[list[JobSpan], dict[str, float]]:
    """Serve the trace with `FairQueue` on one device (settled as each job ends, the next
    dispatched at once); newcomer k arrives DELTA before the end of b's k-th job."""
    queue: FairQueue[tuple[str, float]] = FairQueue()
    for _ in range(cycles + 1):
        queue.push("b", ("b", 0.0), weight=1.0)
    spans: list[JobSpan] = []
    clock, arrived = 0.0, 0
    while clock < 2 * cycles * JOB:
        dispatch = queue.pop(cost=JOB)
        owner, arrival = dispatch.item
        if owner == "b" and arrived < cycles:  # the next newcomer comes during this job
            arrived += 1
            newcomer = f"n{arrived}"
            queue.push(newcomer, (newcomer, clock + JOB - DELTA), weight=1.0)
        queue.settle(dispatch, JOB)
        spans.append(JobSpan(owner, arrival, clock + JOB, ((clock, clock + JOB),)))
        clock += JOB
    # b's jobs still queued at the end stay in the system.
    spans += [JobSpan("b", 0.0, float("inf")) for _ in range(queue.queued("b"))]
    return spans, {span.user: 1.0 for span in spans}


@pytest.mark.parametrize("cycles", [4, 16, 64])
def test_under_the_policy_the_lag_grows_with_every_cycle_while_the_pairwise_bound_holds(
    cycles: int,
) -> None:
    spans, weights = newcomers_trace(cycles)
    # The policy really served the newcomers next: b and a newcomer alternate.
    served = [span.user for span in sorted(spans, key=lambda span: span.left) if span.runs]
    assert served == [name for k in range(1, cycles + 1) for name in ("b", f"n{k}")]
    end = 2 * cycles * JOB
    shares = fluid_shares(spans, weights, 0.0, end)
    assert shares["b"].lag == pytest.approx(cycles * (JOB - DELTA) / 2)
    assert all(
        shares[f"n{k}"].lag == pytest.approx(-(JOB - DELTA) / 2) for k in range(1, cycles + 1)
    )
    if cycles >= 16:
        assert shares["b"].lag > 2 * lag_bound(JOB)  # far beyond any constant in C
    # The pairwise guarantee: b and a newcomer both have work queued only for DELTA.
    gaps = pairwise_gaps(spans, weights, 0.0, end)
    assert all(gap.seconds <= gap.bound for gap in gaps.values()), gaps
    assert gaps["b"].seconds == pytest.approx(DELTA)
    # So the flag (lag beyond its bound and a pair beyond its own) spares b.
    assert flagged_users(spans, weights, 0.0, end) == {}


@pytest.mark.django_db
def test_the_dashboard_shows_the_growing_lag_and_flags_nobody() -> None:
    # The same trace written as rows, 64 cycles (21 minutes): b's lag is 256 s, far
    # beyond twice the longest job, yet the policy was fair by the guarantee it gives.
    cycles = 64
    spans, _ = newcomers_trace(cycles)
    now = timezone.now().replace(microsecond=0)
    t0 = now - timedelta(seconds=2 * cycles * JOB + 60)
    owners = {name: User.objects.create(username=name) for name in {s.user for s in spans}}
    for span in spans:
        if not span.runs:
            job = Job.objects.create(owner=owners[span.user], device_type="cpu")
        else:
            ((start, stop),) = span.runs
            job = Job.objects.create(
                owner=owners[span.user],
                device_type="cpu",
                status=JobStatus.SUCCEEDED,
                device="d1",
                started_at=t0 + timedelta(seconds=start),
                finished_at=t0 + timedelta(seconds=stop),
                duration=stop - start,
                attempts=1,
            )
        Job.objects.filter(pk=job.pk).update(created_at=t0 + timedelta(seconds=span.arrived))
    (pool,) = stats.pool_fairness(now)
    rows = {row["user"]: row for row in pool["shares"]}
    # After the last cycle b is alone for the last 60 s and receives nothing: entitled
    # to none of that (nothing ran), so its lag is the cycles' sum.
    assert rows["b"]["lag_seconds"] == pytest.approx(cycles * (JOB - DELTA) / 2, abs=0.01)
    assert rows["b"]["lag_seconds"] > pool["lag_bound_seconds"]
    assert not any(row["flagged"] for row in rows.values())
    assert all(row["unfair_pair"] is None for row in rows.values())
