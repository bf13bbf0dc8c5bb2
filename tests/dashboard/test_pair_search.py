"""The dashboard's fast pair searches against brute force on random traces: the pair
check (`stats._pair_gaps`: only heavy stretches paired, common stretches pruned by their
ends and by two grids before the exact evaluation) against `jobs.fairshare.pairwise_gaps`,
which tries every pair at every change point; and the largest normalised gap
(`stats._max_normalised_gap`) against every pair tried in plain Python. Traces long
enough that users come and go (many stretches each, few of them heavy), with jobs of very
different lengths, so the pruning has something to cut."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.fairshare import JobSpan, most_at_once, pairwise_gaps
from jobs.monitoring import stats
from tests.dashboard.test_fluid_fairness import MANY_WEIGHTS, pair_sweep, serve_in_any_order

comings_and_goings = st.tuples(
    st.lists(
        st.tuples(
            st.integers(0, 9),  # ten users of weights 0.25 to 4
            st.floats(0, 120, allow_nan=False),
            st.sampled_from([0.05, 0.3, 1.0, 4.0]),  # short jobs beside a few long ones
            st.floats(0, 1, allow_nan=False),
        ),
        min_size=10,
        max_size=70,
    ),
    st.integers(1, 3),
    st.permutations(list(range(10))),
    st.booleans(),
    st.sampled_from([0.0, 0.5]),
    st.sets(st.integers(0, 9)),
    st.sampled_from([0.5, 3.0, 10.0]),  # how strict the order of users is
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(comings_and_goings)
def test_the_pair_check_finds_every_users_worst_pair_as_brute_force(trace) -> None:
    jobs, devices, users_order, by_user, slack, suspects, noise = trace
    if by_user:  # a scheduler that serves users in an order, more or less strict
        jobs = [
            (owner, at, run, users_order.index(owner) + rank * noise)
            for owner, at, run, rank in jobs
        ]
    spans: list[JobSpan] = serve_in_any_order(jobs, devices)
    end = max(span.left for span in spans) + 1.0
    at_once = most_at_once(spans, 0.0, end)
    reference = pairwise_gaps(spans, MANY_WEIGHTS, 0.0, end, devices=at_once, slack=slack)
    clear = {owner for owner, gap in reference.items() if abs(gap.excess) > 1e-6}
    for wanted in (None, suspects):
        found_devices, found = pair_sweep(spans, MANY_WEIGHTS, end, slack=slack, suspects=wanted)
        assert found_devices == at_once
        among = clear if wanted is None else clear & wanted
        assert set(found) & among == {owner for owner in among if reference[owner].excess > 0}
        assert wanted is None or set(found) <= wanted
        for owner in set(found) & among:
            worst = reference[owner]
            assert found[owner].seconds - found[owner].bound == pytest.approx(
                worst.excess, abs=1e-6
            )
            assert found[owner].bound == pytest.approx(worst.bound)


stays_and_runs = st.tuples(
    st.lists(  # each user's longest stay in the system: start and length
        st.tuples(st.floats(0, 80, allow_nan=False), st.floats(0, 40, allow_nan=False)),
        min_size=2,
        max_size=24,
    ),
    st.lists(  # runs: owner (an index into the users), start, length
        st.tuples(
            st.integers(0, 23),
            st.floats(-5, 100, allow_nan=False),
            st.floats(0, 10, allow_nan=False),
        ),
        max_size=80,
    ),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stays_and_runs)
def test_the_largest_normalised_gap_is_the_largest_over_every_pair(trace) -> None:
    stays, runs = trace
    end = 120.0
    ids = list(range(len(stays)))
    users = {
        pk: stats._Waiting(MANY_WEIGHTS[pk % 10], longest=(start, min(start + length, end)))
        for pk, (start, length) in zip(ids, stays, strict=True)
    }
    runs = [(owner, start, start + length) for owner, start, length in runs if owner < len(ids)]
    owner = np.array([run[0] for run in runs], dtype=np.int64)
    start = np.array([run[1] for run in runs], dtype=float)
    stop = np.array([run[2] for run in runs], dtype=float)
    service = stats._service_by_user(
        (owner, np.clip(start, 0.0, end), np.clip(stop, 0.0, end)), np.array(ids), end
    )
    found = stats._max_normalised_gap(users, {pk: f"u{pk}" for pk in ids}, 2.0, service)

    def normalised(pk: int, low: float, high: float) -> float:
        received = sum(
            max(0.0, min(run_stop, high) - max(run_start, low))
            for run_owner, run_start, run_stop in runs
            if run_owner == pk
        )
        return received / users[pk].weight

    gaps = {}
    for first in ids:
        for second in ids[first + 1 :]:
            low = max(users[first].longest[0], users[second].longest[0])
            high = min(users[first].longest[1], users[second].longest[1])
            if high > low:
                gaps[(first, second)] = abs(
                    normalised(first, low, high) - normalised(second, low, high)
                )
    if not gaps:
        assert found is None
        return
    assert found is not None
    assert found["seconds"] == pytest.approx(max(gaps.values()), abs=1e-9)
    first, second = (int(name[1:]) for name in found["users"])
    assert gaps[(first, second)] == pytest.approx(found["seconds"], abs=1e-9)
    assert found["bound_seconds"] == pytest.approx(
        2.0 / users[first].weight + 2.0 / users[second].weight
    )
