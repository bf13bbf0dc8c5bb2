"""The dashboard's fairness figures against the fluid fair schedule (issue 13): rows written
with explicit times, the database sweep compared with `jobs.fairshare.fluid_shares`, and
random traces served by `FairQueue` (the lag bound where it holds, see below)."""

from __future__ import annotations

import heapq
from datetime import datetime, timedelta

import numpy as np
import pytest
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.fairshare import (
    FairQueue,
    JobSpan,
    flagged_users,
    fluid_shares,
    lag_bound,
    most_at_once,
    pairwise_gaps,
)
from jobs.models import Job, JobStatus, User
from jobs.monitoring import stats
from jobs.queue import JobSpec, claim_next, release_job, submit_jobs

pytestmark = pytest.mark.django_db


def user(name: str, weight: float = 1.0) -> User:
    return User.objects.create(username=name, weight=weight)


def ended(
    owner: User,
    created: datetime,
    start: float,
    end: float,
    *,
    pool: str = "cpu",
    device: str = "d1",
) -> Job:
    """A job created at `created`, run on `device` from `start` to `end` seconds after it."""
    job = Job.objects.create(
        owner=owner,
        device_type=pool,
        status=JobStatus.SUCCEEDED,
        device=device,
        started_at=created + timedelta(seconds=start),
        finished_at=created + timedelta(seconds=end),
        duration=end - start,
        attempts=1,
    )
    Job.objects.filter(pk=job.pk).update(created_at=created)
    return job


def shares_by_user(now: datetime, pool: str = "cpu") -> dict[str, stats.UserShare]:
    return {row["user"]: row for row in stats.shares(now) if row["pool"] == pool}


@pytest.fixture
def now() -> datetime:
    return timezone.now().replace(microsecond=0) - timedelta(seconds=5)


def test_a_fair_run_is_not_flagged_and_every_lag_is_within_two_job_lengths(now) -> None:
    # The run on one device: heavy users a and b each queue eight 0.4 s jobs at
    # t0, four light users one instant job each; the policy alternates a and b and slips
    # each light job in as it arrives.
    t0 = now - timedelta(seconds=60)
    heavy, light = [user("a"), user("b")], [user(f"light{i}") for i in range(4)]
    clock = 0.0
    for index in range(16):
        if index in (1, 4, 7, 10):
            owner = light[(index - 1) // 3]
            ended(owner, t0 + timedelta(seconds=clock - 0.01), 0.01, 0.011)
            clock += 0.001
        ended(heavy[index % 2], t0, clock, clock + 0.4)
        clock += 0.4
    rows = shares_by_user(now)
    assert set(rows) == {"a", "b", "light0", "light1", "light2", "light3"}
    assert not any(row["flagged"] for row in rows.values())
    assert all(abs(row["lag_seconds"]) <= 2 * 0.4 for row in rows.values())
    assert sum(row["lag_seconds"] for row in rows.values()) == pytest.approx(0, abs=1e-3)
    # The index no longer drops towards k/n: the heavy users got what they were entitled to.
    jain = stats.jain_index(list(rows.values()))
    assert jain is not None and jain > 0.99


def test_thirty_minutes_of_starvation_is_flagged_with_its_lag(now) -> None:
    # One device, equal weights: a and b both wait from -45 min; only a is served for
    # 30 minutes (ninety 20 s jobs), then b gets the device for 30 minutes too late.
    a, b = user("a"), user("b")
    start = now - timedelta(minutes=45)
    for index in range(90):
        ended(a, start, index * 20, index * 20 + 20)
    ended(b, start, 1800, 1820)
    rows = shares_by_user(now)
    # In the system together for 1800 s at one device: each entitled to 900 s of it; b
    # then alone for its own 20 s.
    assert rows["b"]["lag_seconds"] == pytest.approx(900, abs=0.1)
    assert rows["a"]["lag_seconds"] == pytest.approx(-900, abs=0.1)
    assert rows["a"]["flagged"] and rows["b"]["flagged"]
    # Why: while both had work queued (until a's last job started at 1780 s), a received
    # 1780 s and b nothing, far beyond 1 device x (20 s/1 + 20 s/1) + 1 s.
    pair = rows["b"]["unfair_pair"]
    assert pair is not None and pair["user"] == "a"
    assert pair["gap_seconds"] == pytest.approx(1780, abs=0.1)
    assert pair["bound_seconds"] == pytest.approx(41.0)
    assert pair["over_seconds"] == pytest.approx(1780, abs=0.1)
    (pool,) = stats.pool_fairness(now)
    assert pool["lag_bound_seconds"] == pytest.approx(41.0)
    gap = pool["max_normalised_gap"]
    assert gap is not None and gap["seconds"] > gap["bound_seconds"]


def test_each_pool_is_measured_on_its_own(now) -> None:
    # a runs alone on cpu; on gpu a and b (weight 3) share one device for 40 s.
    a, b = user("a"), user("b", 3)
    t0 = now - timedelta(minutes=10)
    ended(a, t0, 0, 100)
    ended(a, t0, 0, 10, pool="gpu", device="g1")
    ended(b, t0, 10, 40, pool="gpu", device="g1")
    Job.objects.filter(device_type="gpu").update(created_at=t0)
    cpu, gpu = shares_by_user(now, "cpu"), shares_by_user(now, "gpu")
    assert set(cpu) == {"a"} and cpu["a"]["lag_seconds"] == pytest.approx(0, abs=1e-3)
    # gpu: both wait [0, 10] (a entitled 2.5, b 7.5), then b alone [10, 40].
    assert gpu["a"]["entitled_seconds"] == pytest.approx(2.5, abs=1e-3)
    assert gpu["b"]["entitled_seconds"] == pytest.approx(37.5, abs=1e-3)
    assert gpu["a"]["lag_seconds"] == pytest.approx(-7.5, abs=1e-3)


def test_on_several_devices_a_user_is_entitled_to_no_more_devices_than_jobs(now) -> None:
    # Three devices; a has one 60 s job, b (same weight) three: a cannot use 1.5
    # devices, so the fair split is a 1, b 2, which is what ran.
    a, b = user("a"), user("b")
    t0 = now - timedelta(minutes=5)
    ended(a, t0, 0, 60, device="d1")
    ended(b, t0, 0, 60, device="d2")
    ended(b, t0, 0, 60, device="d3")
    ended(b, t0, 60, 120, device="d2")
    rows = shares_by_user(now)
    assert rows["a"]["entitled_seconds"] == pytest.approx(60, abs=1e-3)
    assert rows["b"]["entitled_seconds"] == pytest.approx(180, abs=1e-3)
    assert not rows["a"]["flagged"] and not rows["b"]["flagged"]


def test_a_requeued_attempt_counts_as_device_time_received() -> None:
    # a's job held d1 for 30 s, then its lease ran out and `release_job` requeued it
    # (the job row forgets that attempt): a received 30 s, and b, waiting beside it
    # all along, was owed half of it.
    a, b = user("a"), user("b")
    (job,), _ = submit_jobs(a, [JobSpec(kind="noop", input=None)])
    claim = claim_next("cpu", "d1")
    assert claim is not None and claim.id == job.pk
    held_from = timezone.now() - timedelta(seconds=30)
    Job.objects.filter(pk=job.pk).update(
        created_at=held_from - timedelta(seconds=10), started_at=held_from
    )
    waiting = Job.objects.create(owner=b, device_type="cpu")
    Job.objects.filter(pk=waiting.pk).update(created_at=held_from - timedelta(seconds=10))
    assert release_job(claim.id, claim.fencing_token, "lease expired") == JobStatus.QUEUED
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED and job.started_at is None
    rows = shares_by_user(timezone.now())
    assert rows["a"]["received_seconds"] == pytest.approx(30, abs=0.5)
    assert rows["b"]["entitled_seconds"] == pytest.approx(15, abs=0.5)
    assert rows["b"]["lag_seconds"] == pytest.approx(15, abs=0.5)


def test_job_counts_matter_early_and_only_presence_later(now) -> None:
    # Three devices: first a (one job) and b (three) alone, a capped by its one job;
    # from 200 s ten more users wait to the end, where nobody can be capped any more.
    # The database counts jobs over the first part only and must still match the
    # reference over the whole window.
    window = stats.WINDOW.total_seconds()
    t0 = now - stats.WINDOW
    a, b = user("a"), user("b", 2)
    spans = [JobSpan("a", 10, 70, ((10, 70),))]
    ended(a, t0 + timedelta(seconds=10), 0, 60, device="d1")
    for index, device in enumerate(("d2", "d3", "d2")):
        ended(
            b, t0 + timedelta(seconds=10), 60 * (index // 2), 60 * (index // 2) + 60, device=device
        )
        spans.append(
            JobSpan(
                "b", 10, 70 + 60 * (index // 2), ((10 + 60 * (index // 2), 70 + 60 * (index // 2)),)
            )
        )
    for index in range(10):
        waiting = user(f"w{index}")
        job = Job.objects.create(owner=waiting, device_type="cpu")
        Job.objects.filter(pk=job.pk).update(created_at=t0 + timedelta(seconds=200 + index))
        spans.append(JobSpan(f"w{index}", 200 + index, window + 1))
    ended(b, t0 + timedelta(seconds=300), 0, 100, device="d1")
    spans.append(JobSpan("b", 300, 400, ((300, 400),)))
    weights = {name: 1.0 for name in ["a"] + [f"w{index}" for index in range(10)]} | {"b": 2.0}
    reference = fluid_shares(spans, weights, 0.0, window)
    rows = shares_by_user(now)
    assert reference["a"].entitled == pytest.approx(60, abs=1e-6)  # capped by its one job
    for name, share in reference.items():
        assert rows[name]["entitled_seconds"] == pytest.approx(share.entitled, abs=1e-3), name
        assert rows[name]["received_seconds"] == pytest.approx(share.received, abs=1e-3), name


# --- random traces written as rows: the database against the reference ---------------------

row_traces = st.lists(
    st.tuples(
        st.sampled_from([0, 1, 2, 3]),
        st.floats(0, 200, allow_nan=False),  # arrival, from 100 s before the window
        st.floats(0, 40, allow_nan=False),  # wait before the run
        st.floats(0.5, 60, allow_nan=False),  # run length
        st.sampled_from(["succeeded", "succeeded", "queued", "running"]),
        st.sampled_from(["cpu", "cpu", "gpu"]),  # two pools, each measured on its own
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(row_traces)
def test_the_database_computes_the_reference_figures_on_several_devices(jobs) -> None:
    # Runs overlap freely (several devices, users capped by their job count), queued
    # and running jobs stay to the end, some jobs began before the window; two pools.
    Job.objects.all().delete()
    User.objects.all().delete()
    owners = {index: user(f"u{index}", WEIGHTS[index]) for index in WEIGHTS}
    now = timezone.now().replace(microsecond=0)
    window = stats.WINDOW.total_seconds()
    base = now - timedelta(seconds=window + 100)  # the window starts at 100 s
    spans: dict[str, list[JobSpan]] = {"cpu": [], "gpu": []}
    for owner, arrival, wait, duration, status, pool in jobs:
        start = arrival + wait
        job = Job.objects.create(
            owner=owners[owner],
            device_type=pool,
            status=status,
            started_at=None if status == "queued" else base + timedelta(seconds=start),
            finished_at=base + timedelta(seconds=start + duration)
            if status == "succeeded"
            else None,
            duration=duration if status == "succeeded" else None,
        )
        Job.objects.filter(pk=job.pk).update(created_at=base + timedelta(seconds=arrival))
        left = start + duration if status == "succeeded" else window + 1000
        runs = () if status == "queued" else ((start, min(left, window + 100)),)
        spans[pool].append(JobSpan(owner, arrival, left, runs))
    rows = {(row["pool"], row["user"]): row for row in stats.shares(now)}
    for pool, spans_of_pool in spans.items():
        reference = fluid_shares(spans_of_pool, WEIGHTS, 100.0, window + 100)
        for owner, share in reference.items():
            key = (pool, f"u{owner}")
            if share.entitled < 1e-6 and share.received < 1e-6 and key not in rows:
                continue
            assert rows[key]["entitled_seconds"] == pytest.approx(share.entitled, abs=0.02)
            assert rows[key]["received_seconds"] == pytest.approx(share.received, abs=0.02)
        # The flags: the same users as the reference's rule, |lag| beyond the lag bound
        # and a pair beyond its bound (margins over a millisecond on both: SQLite's
        # julianday() is exact to about 0.1 ms).
        devices = most_at_once(spans_of_pool, 100.0, window + 100)
        gaps = pairwise_gaps(
            spans_of_pool, WEIGHTS, 100.0, window + 100, devices=devices, slack=1.0
        )
        flagged_by_reference = flagged_users(
            spans_of_pool, WEIGHTS, 100.0, window + 100, devices=devices, slack=1.0
        )
        longest = max(
            (stop - start for span in spans_of_pool for start, stop in span.runs if stop > 100.0),
            default=0.0,
        )
        for owner, gap in gaps.items():
            lag_margin = (
                abs(reference[owner].lag) - lag_bound(longest, 1.0) if owner in reference else -1.0
            )
            if abs(gap.excess) > 1e-3 and abs(lag_margin) > 1e-3:
                flagged = (pool, f"u{owner}") in rows and rows[pool, f"u{owner}"]["flagged"]
                assert flagged == (owner in flagged_by_reference), (owner, gap, lag_margin)


# --- random traces served by the policy -------------------------------------------------------


def serve(
    jobs: list[tuple[int, float, float]], weights: dict[int, float] | None = None
) -> list[JobSpan]:
    """Serve (user, arrival, duration) jobs on one device by `FairQueue`, settled at once."""
    weights = WEIGHTS if weights is None else weights
    pending = sorted(jobs, key=lambda job: job[1])
    queue: FairQueue[tuple[int, float, float]] = FairQueue()
    spans: list[JobSpan] = []
    clock, index = 0.0, 0
    while index < len(pending) or len(queue):
        while index < len(pending) and pending[index][1] <= clock:
            queue.push(pending[index][0], pending[index], weight=weights[pending[index][0]])
            index += 1
        if not len(queue):
            clock = pending[index][1]
            continue
        dispatch = queue.pop(cost=dispatch_cost(queue))
        owner, arrival, duration = dispatch.item
        queue.settle(dispatch, duration)
        spans.append(JobSpan(owner, arrival, clock + duration, ((clock, clock + duration),)))
        clock += duration
    return spans


def dispatch_cost(queue: FairQueue) -> float:
    return 1.0  # an estimate, replaced by the real cost at once (`settle`)


WEIGHTS = {0: 1.0, 1: 2.0, 2: 1.0, 3: 0.5}

traces = st.lists(
    st.tuples(
        st.sampled_from(sorted(WEIGHTS)),
        st.floats(0, 50, allow_nan=False),
        st.floats(0.01, 3, allow_nan=False),
    ),
    min_size=1,
    max_size=40,
)


def sweep(
    spans: list[JobSpan], end: float, weights: dict[int, float] | None = None
) -> dict[int, tuple[float, float]]:
    """The dashboard's sweep (`stats._sweep_pool`) over the same spans: E_u, and R_u
    from the runs as the database sums them."""
    weights = WEIGHTS if weights is None else weights
    moves: dict[tuple[float, int], int] = {}
    busy: dict[float, int] = {}
    for span in spans:
        for at, dn in ((span.arrived, 1), (span.left, -1)):
            moves[at, span.user] = moves.get((at, span.user), 0) + dn
        for start, stop in span.runs:
            busy[start] = busy.get(start, 0) + 1
            busy[stop] = busy.get(stop, 0) - 1
    counts: dict[int, int] = {}
    changes = []
    for (at, owner), dn in sorted(moves.items()):
        counts[owner] = counts.get(owner, 0) + dn
        changes.append((owner, at, counts[owner]))
    timeline = stats._Busy.from_changes(sorted(busy.items()), end)
    swept = stats._sweep_pool(changes, timeline, weights, end)
    received = {
        owner: sum(
            stop - start for span in spans if span.user == owner for start, stop in span.runs
        )
        for owner in swept
    }
    return {owner: (state.entitled, received[owner]) for owner, state in swept.items()}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces)
def test_traces_served_by_the_policy_sum_to_zero_and_the_sweep_matches_the_reference(jobs) -> None:
    spans = serve(jobs)
    end = max(span.left for span in spans)
    reference = fluid_shares(spans, WEIGHTS, 0.0, end)
    assert sum(share.lag for share in reference.values()) == pytest.approx(0, abs=1e-6)
    # The dashboard's sweep computes the same figures as the plain reference.
    swept = sweep(spans, end)
    for owner, share in reference.items():
        assert swept[owner][0] == pytest.approx(share.entitled, abs=1e-6)
        assert swept[owner][1] == pytest.approx(share.received, abs=1e-6)


# Where `lag_bound` (two of the longest jobs) holds for start-time fair queueing: users of
# one weight, each arriving once with all its work. It does not hold in general: with
# unequal weights a heavy user waits one job of every lighter user that arrived with it
# (SFQ's delay grows with the number of users), and a user who comes back now and then is
# served at once while the fluid schedule, taken over its actual presence, spreads its job
# out; random traces of both kinds reached about 3.7 job lengths (README, "Operators'
# dashboard"). The pairwise bound (`tests/queue/test_fairness_policy.py`) holds for all.
arrivals_at_once = st.lists(
    st.tuples(
        st.floats(0, 30, allow_nan=False), st.lists(st.floats(0.01, 3), min_size=1, max_size=10)
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrivals_at_once)
def test_users_of_one_weight_arriving_with_their_work_stay_within_the_lag_bound(users) -> None:
    weights = {index: 1.0 for index in range(len(users))}
    jobs = [
        (index, arrival, duration)
        for index, (arrival, durations) in enumerate(users)
        for duration in durations
    ]
    spans = serve(jobs, weights)
    reference = fluid_shares(spans, weights, 0.0, max(span.left for span in spans))
    bound = lag_bound(max(duration for _, _, duration in jobs))
    assert all(abs(share.lag) <= bound for share in reference.values()), reference


# Many users in each segment on several devices: some capped by their job count, some not,
# so the vectorised water-filling runs over many segments at once.
MANY_WEIGHTS = {index: weight for index, weight in enumerate([1, 2, 0.5, 3, 1, 1.5, 4, 0.25, 1, 2])}

crowded = st.lists(
    st.tuples(
        st.sampled_from(sorted(MANY_WEIGHTS)),
        st.floats(0, 30, allow_nan=False),  # arrival
        st.floats(0, 10, allow_nan=False),  # wait before its run
        st.floats(0.01, 20, allow_nan=False),  # run length
        st.floats(0, 5, allow_nan=False),  # stays in the system after its run
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(crowded)
def test_the_sweep_water_fills_crowded_segments_on_several_devices_as_the_reference(
    jobs,
) -> None:
    spans = [
        JobSpan(
            owner, arrival, arrival + wait + run + after, ((arrival + wait, arrival + wait + run),)
        )
        for owner, arrival, wait, run, after in jobs
    ]
    end = max(span.left for span in spans) + 1.0
    reference = fluid_shares(spans, MANY_WEIGHTS, 0.0, end)
    swept = sweep(spans, end, MANY_WEIGHTS)
    assert swept.keys() == reference.keys()
    for owner, share in reference.items():
        assert swept[owner][0] == pytest.approx(share.entitled, abs=1e-6)
        assert swept[owner][1] == pytest.approx(share.received, abs=1e-6)


# --- the flag: the pairwise SFQ bound, scaled by the pool's devices --------------------------


def serve_on_devices(
    jobs: list[tuple[int, float, float, int]],
    weights: dict[int, float],
    capacities: tuple[int | None, ...],
    estimate: float,
) -> list[JobSpan]:
    """Serve (user, arrival, duration, size) jobs by `FairQueue` on devices of `capacities`
    (None: unsized), as the dispatcher does: charge `estimate` at dispatch, settle the
    real duration as the job ends; at each instant the ended jobs are settled first, then
    the arrivals queued, then the free devices filled in order."""
    pending = sorted(jobs, key=lambda job: job[1])
    queue: FairQueue[tuple[int, float, float, int]] = FairQueue()
    free = list(range(len(capacities)))
    running: list[tuple[float, int, int, object, float]] = []  # end, order, device, dispatch, start
    spans: list[JobSpan] = []
    clock, index, order = 0.0, 0, 0
    while True:
        while running and running[0][0] <= clock:
            stop, _, device, dispatch, start = heapq.heappop(running)
            queue.settle(dispatch, stop - start)  # type: ignore[arg-type]
            owner, arrival, _, _ = dispatch.item  # type: ignore[attr-defined]
            spans.append(JobSpan(owner, arrival, stop, ((start, stop),)))
            free.append(device)
        while index < len(pending) and pending[index][1] <= clock:
            owner, _, _, size = pending[index]
            queue.push(owner, pending[index], weight=weights[owner], size=size)
            index += 1
        for device in sorted(free):
            if queue.next_user(capacities[device]) is None:
                continue
            dispatch = queue.pop(cost=estimate, capacity=capacities[device])
            free.remove(device)
            order += 1
            heapq.heappush(running, (clock + dispatch.item[2], order, device, dispatch, clock))
        upcoming = [running[0][0]] if running else []
        upcoming += [pending[index][1]] if index < len(pending) else []
        if not upcoming:
            return spans
        clock = max(clock, min(upcoming))


def pair_sweep(
    spans: list[JobSpan],
    weights: dict[int, float],
    end: float,
    slack: float = 0.0,
    suspects: set[int] | None = None,
) -> tuple[int, dict[int, stats._PairGap]]:
    """The dashboard's pair check (`stats._pair_gaps`) over spans of one run at most, as
    the database rows would give them: spans with a run as intervals (still running at
    `end`: no end), the others as queued jobs; for `suspects` only (None: everyone)."""
    ran = [span for span in spans if span.runs]
    waiting = [span for span in spans if not span.runs]
    intervals = stats._PoolIntervals(
        np.array([span.user for span in ran], dtype=np.int64),
        np.array([span.arrived for span in ran], dtype=float),
        np.array([span.runs[0][0] for span in ran], dtype=float),
        np.array([span.left if span.left < end else np.nan for span in ran], dtype=float),
    )
    queued = (
        np.array([span.user for span in waiting], dtype=np.int64),
        np.array([span.arrived for span in waiting], dtype=float),
    )
    longest = max((stop - start for span in ran for start, stop in span.runs), default=0.0)
    return stats._pair_gaps(intervals, queued, weights, end, longest, slack, suspects)


DEVICE_SETS = [(None,), (None, None), (None, None, None), (None,) * 5, (3, None), (1, 2, None)]

device_traces = st.tuples(
    st.lists(
        st.tuples(
            st.sampled_from(sorted(MANY_WEIGHTS)),
            st.floats(0, 60, allow_nan=False),  # each job on its own: users come and go
            st.floats(0.01, 3, allow_nan=False),
            st.integers(0, 3),  # the device size it needs
        ),
        min_size=1,
        max_size=50,
    ),
    st.sampled_from(DEVICE_SETS),
    st.sampled_from([0.0, 0.5, 1.0, 3.0]),  # the estimate charged at dispatch
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(device_traces)
def test_the_policy_on_several_and_sized_devices_keeps_every_pair_within_the_flag_bound(
    trace,
) -> None:
    # Unequal weights (0.25 to 4), users arriving job by job, one to five devices, some
    # sized: nobody is ever flagged, by the reference or by the dashboard's arrays.
    jobs, capacities, estimate = trace
    spans = serve_on_devices(jobs, MANY_WEIGHTS, capacities, estimate)
    assert len(spans) == len(jobs)
    end = max(span.left for span in spans)
    devices = most_at_once(spans, 0.0, end)
    gaps = pairwise_gaps(spans, MANY_WEIGHTS, 0.0, end, devices=devices)
    assert all(gap.excess <= 1e-9 for gap in gaps.values()), gaps
    swept_devices, flagged = pair_sweep(spans, MANY_WEIGHTS, end)
    assert swept_devices == devices
    assert not flagged


def test_on_two_devices_the_unscaled_pairwise_bound_does_not_hold() -> None:
    # Found (and shrunk) by a search like the property test above, with the bound left
    # unscaled: three users of one weight queue at once for two devices; while 0 and 2
    # both wait, 0 receives 7 s more than 2, beyond C_max/w_0 + C_max/w_2 = 6 s, within
    # the scaled 2 * 6 s. (Random searches reached 1.75 times the unscaled bound on two
    # devices and 1.9 on three, never the number of devices.)
    jobs = [(0, 0.0, 1.0, 0), (0, 0.0, 3.0, 0), (1, 0.0, 3.0, 0), (0, 0.0, 1.0, 0)]
    jobs += [(2, 0.0, duration, 0) for duration in (1.0, 1.0, 3.0, 2.0, 1.0)]
    weights = {0: 1.0, 1: 1.0, 2: 1.0}
    spans = serve_on_devices(jobs, weights, (None, None), 0.0)
    end = max(span.left for span in spans)
    unscaled = pairwise_gaps(spans, weights, 0.0, end, devices=1)
    assert unscaled[0].partner == 2 and unscaled[0].seconds == pytest.approx(7.0)
    assert unscaled[0].bound == pytest.approx(6.0)
    assert most_at_once(spans, 0.0, end) == 2
    scaled = pairwise_gaps(spans, weights, 0.0, end, devices=2)
    assert all(gap.excess <= 0 for gap in scaled.values())


def serve_in_any_order(jobs: list[tuple[int, float, float, float]], devices: int) -> list[JobSpan]:
    """Serve (user, arrival, duration, rank) jobs on `devices` devices, each free device
    taking the queued job of least rank: any non-preemptive schedule, fair or not."""
    pending = sorted(jobs, key=lambda job: job[1])
    waiting: list[tuple[float, int, tuple[int, float, float, float]]] = []
    free_at = [0.0] * devices
    spans: list[JobSpan] = []
    index = 0
    while index < len(pending) or waiting:
        device = min(range(devices), key=free_at.__getitem__)
        clock = free_at[device]
        if not waiting and pending[index][1] > clock:
            clock = pending[index][1]
        while index < len(pending) and pending[index][1] <= clock:
            heapq.heappush(waiting, (pending[index][3], index, pending[index]))
            index += 1
        _, _, (owner, arrival, duration, _) = heapq.heappop(waiting)
        spans.append(JobSpan(owner, arrival, clock + duration, ((clock, clock + duration),)))
        free_at[device] = clock + duration
    return spans


any_order = st.tuples(
    st.lists(
        st.tuples(
            st.sampled_from([0, 1, 2, 3]),  # weights 1, 2, 0.5 and 3
            st.floats(0, 5, allow_nan=False),
            st.floats(0.2, 1, allow_nan=False),
            st.floats(0, 1, allow_nan=False),
        ),
        min_size=20,
        max_size=60,
    ),
    st.integers(1, 2),
    st.permutations([0, 1, 2, 3]),
    st.booleans(),
)


def ranked(trace) -> tuple[list[tuple[int, float, float, float]], int]:
    """The jobs of an `any_order` trace with their rank: their own draw, or their user's
    place in a strict order of users (a scheduler that starves the ones at the end)."""
    jobs, devices, users_order, by_user = trace
    if by_user:
        jobs = [
            (user, arrival, run, users_order.index(user) + rank / 2)
            for user, arrival, run, rank in jobs
        ]
    return jobs, devices


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_order)
def test_the_dashboard_flags_the_same_pairs_as_the_reference_on_any_schedule(trace) -> None:
    # Jobs served in an arbitrary order on one or two devices, often a strict order of
    # users (most of these traces have a flagged pair): the same users flagged, each
    # with a worst pair exceeding its bound by the same amount.
    spans = serve_in_any_order(*ranked(trace))
    end = max(span.left for span in spans) + 1.0
    devices = most_at_once(spans, 0.0, end)
    reference = pairwise_gaps(spans, MANY_WEIGHTS, 0.0, end, devices=devices, slack=0.5)
    swept_devices, flagged = pair_sweep(spans, MANY_WEIGHTS, end, slack=0.5)
    assert swept_devices == devices
    clear = {user for user, gap in reference.items() if abs(gap.excess) > 1e-6}
    assert {user for user in clear if reference[user].excess > 0} == set(flagged) & clear
    for user in set(flagged) & clear:
        found = flagged[user]
        assert found.seconds - found.bound == pytest.approx(reference[user].excess, abs=1e-6)
        assert found.bound == pytest.approx(reference[user].bound)
    # The flag itself: the pair check run only for the users whose |lag| is beyond the
    # lag bound (as the dashboard does) flags the users `flagged_users` flags.
    shares = fluid_shares(spans, MANY_WEIGHTS, 0.0, end)
    limit = lag_bound(max(stop - start for span in spans for start, stop in span.runs), 0.5)
    suspects = {user for user, share in shares.items() if abs(share.lag) > limit}
    _, suspected = pair_sweep(spans, MANY_WEIGHTS, end, slack=0.5, suspects=suspects)
    expected = flagged_users(spans, MANY_WEIGHTS, 0.0, end, devices=devices, slack=0.5)
    assert set(suspected) <= suspects
    assert set(expected) & clear == set(suspected) & clear
    for user in set(suspected) & clear:
        found = suspected[user]
        assert found.seconds - found.bound == pytest.approx(reference[user].excess, abs=1e-6)
