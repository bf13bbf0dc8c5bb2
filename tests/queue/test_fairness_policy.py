"""The fair-share policy on its own: `jobs.fairshare.FairQueue`, no Django, no database.

Each test states one property of weighted start-time fair queueing as the policy module
documents it. The property test at the end checks the SFQ bound from the module docstring
on random traces run on a simulated one-at-a-time device:

    | W_i / w_i  -  W_j / w_j |  <=  C_max / w_i  +  C_max / w_j

and a sanity test shows that the same checker rejects FIFO and weight-blind schedules, so
a pass means something.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict, deque
from collections.abc import Hashable
from dataclasses import dataclass
from itertools import combinations
from typing import Protocol

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.fairshare import Dispatch, FairQueue

pytestmark = pytest.mark.one_pass

# --- Single-user order: exactly a priority queue -------------------------------------


class Opaque:
    """An item with no ordering at all: comparing two of them raises TypeError."""

    __hash__ = None  # type: ignore[assignment]  # unhashable too, like a dict

    def __init__(self, label: int) -> None:
        self.label = label


def opaque_item(label: int) -> object:
    # Alternate two kinds of unorderable item: a dict and an object without __lt__.
    return {"label": label} if label % 2 else Opaque(label)


@given(priorities=st.lists(st.integers(-100, 100), max_size=80))
def test_one_user_pops_highest_priority_first_then_oldest_first(priorities: list[int]) -> None:
    queue: FairQueue[object] = FairQueue()
    items = [opaque_item(label) for label in range(len(priorities))]
    for item, priority in zip(items, priorities, strict=True):
        queue.push("solo", item, priority=priority)

    popped = [queue.pop().item for _ in items]

    expected = sorted(range(len(items)), key=lambda label: (-priorities[label], label))
    assert [id(item) for item in popped] == [id(items[label]) for label in expected]
    assert len(queue) == 0


@given(
    operations=st.lists(
        st.one_of(st.integers(-100, 100), st.just("pop")),
        max_size=120,
    )
)
def test_one_user_interleaving_pushes_and_pops_behaves_as_a_priority_queue(
    operations: list[int | str],
) -> None:
    queue: FairQueue[object] = FairQueue()
    reference: list[tuple[int, int, object]] = []  # (-priority, age, item), sorted on pop
    for age, operation in enumerate(operations):
        if operation == "pop":
            if not reference:
                with pytest.raises(IndexError):
                    queue.pop()
                continue
            reference.sort(key=lambda entry: entry[:2])
            _, _, expected = reference.pop(0)
            assert queue.pop().item is expected
        else:
            assert isinstance(operation, int)
            item = opaque_item(age)
            queue.push("solo", item, priority=operation)
            reference.append((-operation, age, item))
        assert len(queue) == len(reference)


def test_a_dispatch_reports_the_priority_and_age_of_the_item() -> None:
    queue: FairQueue[str] = FairQueue()
    old = queue.push("solo", "old", priority=5)
    new = queue.push("solo", "new", priority=5)
    assert old < new
    first = queue.pop()
    assert (first.item, first.priority, first.sequence) == ("old", 5, old)


# --- Between users: weights, idleness, ties -------------------------------------------


def serve(queue: FairQueue[float], dispatches: int, *, estimate: float = 1.0) -> list[Hashable]:
    """Run `dispatches` items one at a time; each item is its own duration. Return who ran."""
    users = []
    for _ in range(dispatches):
        dispatch = queue.pop(cost=estimate)
        queue.settle(dispatch, dispatch.item)
        users.append(dispatch.user)
    return users


def test_weights_one_to_three_split_device_time_a_quarter_to_three_quarters() -> None:
    rng = random.Random(2024)
    queue: FairQueue[float] = FairQueue()
    for _ in range(2000):  # far more than is served: both stay backlogged throughout
        queue.push("light", rng.uniform(0.1, 3.0), weight=1)
        queue.push("heavy", rng.uniform(0.1, 3.0), weight=3)

    device_time: defaultdict[Hashable, float] = defaultdict(float)  # seconds, not counts
    for _ in range(1000):
        dispatch = queue.pop(cost=1.0)
        queue.settle(dispatch, dispatch.item)
        device_time[dispatch.user] += dispatch.item

    total = device_time["light"] + device_time["heavy"]
    assert device_time["light"] / total == pytest.approx(0.25, abs=0.005)
    assert device_time["heavy"] / total == pytest.approx(0.75, abs=0.005)


@pytest.mark.parametrize(("busy_weight", "returning_weight"), [(1, 1), (1, 3), (3, 1)])
def test_a_user_idle_while_another_is_served_banks_no_credit(
    busy_weight: int, returning_weight: int
) -> None:
    """After `returning` comes back, every prefix of the dispatches is within one job of
    the weighted split: it does not get a catch-up run for the time it was away."""
    queue: FairQueue[float] = FairQueue()
    for _ in range(1000):
        queue.push("busy", 1.0, weight=busy_weight)
    queue.push("returning", 1.0, weight=returning_weight)
    assert serve(queue, 2).count("returning") == 1  # it was served once, then went idle
    assert set(serve(queue, 300)) == {"busy"}  # a long stretch with "returning" idle

    for _ in range(100):
        queue.push("returning", 1.0, weight=returning_weight)
    after_return = serve(queue, 40)

    share = returning_weight / (busy_weight + returning_weight)
    for served in range(1, len(after_return) + 1):
        received = after_return[:served].count("returning")
        assert abs(received - served * share) <= 1, (served, after_return)


def test_users_with_equal_virtual_time_go_in_the_order_they_first_queued() -> None:
    queue: FairQueue[float] = FairQueue()
    queue.push("zed", 1.0)  # queued first, although its name sorts last
    queue.push("abe", 1.0)
    queue.push("abe", 1.0)
    queue.push("zed", 1.0)
    assert serve(queue, 4) == ["zed", "abe", "zed", "abe"]

    # Both idle now, with equal virtual time. The rank is the first queueing in this pool,
    # so "abe" queueing first this time does not let it jump ahead on the tie.
    queue.push("abe", 1.0)
    queue.push("zed", 1.0)
    assert queue.user_virtual_time("abe") == queue.user_virtual_time("zed")
    assert serve(queue, 2) == ["zed", "abe"]


def test_a_high_priority_does_not_buy_a_larger_share_between_users() -> None:
    queue: FairQueue[float] = FairQueue()
    for _ in range(50):
        queue.push("pushy", 1.0, priority=100)
        queue.push("modest", 1.0, priority=-100)
    assert Counter(serve(queue, 40)) == {"pushy": 20, "modest": 20}


# --- Several devices: estimate charged at pop, settled to the actual ------------------


def test_two_devices_popping_before_any_settle_go_to_two_different_users() -> None:
    queue: FairQueue[float] = FairQueue()
    for _ in range(10):
        queue.push("a", 1.0)
        queue.push("b", 1.0)
    first, second = queue.pop(cost=5.0), queue.pop(cost=5.0)
    assert {first.user, second.user} == {"a", "b"}


def test_settled_virtual_time_is_actual_device_time_over_weight_whatever_the_estimate() -> None:
    """Two devices, estimates wrong by a factor of up to 100, settled out of order."""
    rng = random.Random(7)
    weights = {"a": 1.0, "b": 2.0, "c": 5.0}
    queue: FairQueue[float] = FairQueue()
    for _ in range(500):  # more than is served: no user ever empties, so no lift applies
        for user, weight in weights.items():
            queue.push(user, rng.expovariate(1.0), weight=weight)

    device_time: defaultdict[Hashable, float] = defaultdict(float)  # seconds, not counts
    in_flight: list[Dispatch[float]] = []
    for _ in range(600):
        while len(in_flight) < 2:
            in_flight.append(queue.pop(cost=rng.choice([0.01, 1.0, 100.0])))
        done = in_flight.pop(rng.randrange(2))
        queue.settle(done, done.item)
        device_time[done.user] += done.item
    for done in in_flight:
        queue.settle(done, done.item)
        device_time[done.user] += done.item

    for user, weight in weights.items():
        assert queue.user_virtual_time(user) == pytest.approx(device_time[user] / weight)


# --- Requeue and removal --------------------------------------------------------------


def test_requeue_refunds_the_charge_and_the_item_is_next_for_its_user_again() -> None:
    queue: FairQueue[str] = FairQueue()
    queue.push("a", "a-1", weight=2)
    queue.push("a", "a-2", weight=2)
    queue.push("b", "b-1")
    lost = queue.pop(cost=4.0)
    assert (lost.user, lost.item) == ("a", "a-1")
    assert queue.user_virtual_time("a") == 2.0

    queue.requeue(lost)

    assert queue.user_virtual_time("a") == 0.0
    assert queue.queued("a") == 2
    # Without the refund "a" would sit at 2.0 and "b" (at 0.0) would go next.
    again = queue.pop(cost=4.0)
    assert (again.user, again.item, again.sequence) == ("a", "a-1", lost.sequence)


def test_remove_user_returns_its_items_in_pop_order_and_they_never_come_out() -> None:
    queue: FairQueue[str] = FairQueue()
    queue.push("gone", "g-low", priority=-1)
    queue.push("gone", "g-first", priority=3)
    queue.push("stays", "s-1")
    queue.push("gone", "g-second", priority=3)
    queue.push("stays", "s-2")

    assert queue.remove_user("gone") == ["g-first", "g-second", "g-low"]
    assert queue.queued("gone") == 0
    assert len(queue) == 2
    assert [queue.pop().item for _ in range(2)] == ["s-1", "s-2"]
    with pytest.raises(IndexError):
        queue.pop()
    assert queue.remove_user("never-seen") == []


# --- The SFQ bound on random traces ---------------------------------------------------


@dataclass(frozen=True)
class Job:
    index: int  # position in the trace: identifies the job
    user: int
    arrival: float
    duration: float
    priority: int = 0


@dataclass(frozen=True)
class Trace:
    weights: dict[int, float]
    jobs: list[Job]  # sorted by arrival; equal arrivals keep trace order


@dataclass(frozen=True)
class Schedule:
    """What happened on the device, one entry per dispatch k (jobs run back to back)."""

    dispatched: list[Job]
    # The users with at least one job queued (arrived, not yet dispatched) at the instant
    # dispatch k starts, arrivals at that instant included.
    queued_at_dispatch: list[frozenset[int]]
    # True when the device stood idle (nothing queued at all) just before dispatch k.
    idle_before: list[bool]


class Scheduler(Protocol):
    def push(self, job: Job, weight: float) -> None: ...
    def pop(self) -> Job: ...
    def finished(self, job: Job) -> None: ...


class FairScheduler:
    """FairQueue as a device sees it: charge an estimate at pop, settle the actual at the end."""

    def __init__(self, estimate: float = 1.0) -> None:
        self.queue: FairQueue[Job] = FairQueue()
        self.estimate = estimate
        self.running: Dispatch[Job] | None = None

    def push(self, job: Job, weight: float) -> None:
        self.queue.push(job.user, job, weight=weight, priority=job.priority)

    def pop(self) -> Job:
        self.running = self.queue.pop(cost=self.estimate)
        return self.running.item

    def finished(self, job: Job) -> None:
        assert self.running is not None and self.running.item is job
        self.queue.settle(self.running, job.duration)


class SizedFairScheduler(FairScheduler):
    """FairQueue behind one device of size CAPACITY, with users ahead of everyone whose
    jobs fit no device: queued before the trace starts, never charged, never served."""

    CAPACITY = 5

    def __init__(self, estimate: float = 1.0, blocking_users: int = 60) -> None:
        super().__init__(estimate)
        for user in range(-blocking_users, 0):
            too_big = Job(index=user, user=user, arrival=0.0, duration=1.0)
            self.queue.push(user, too_big, size=self.CAPACITY + 1 + user % 3)

    def push(self, job: Job, weight: float) -> None:
        size = job.index % (self.CAPACITY + 1)  # every size the device can run
        self.queue.push(job.user, job, weight=weight, priority=job.priority, size=size)

    def pop(self) -> Job:
        self.running = self.queue.pop(cost=self.estimate, capacity=self.CAPACITY)
        return self.running.item


class FifoScheduler:
    """First come, first served: what the checker must reject."""

    def __init__(self) -> None:
        self.waiting: deque[Job] = deque()

    def push(self, job: Job, weight: float) -> None:
        self.waiting.append(job)

    def pop(self) -> Job:
        return self.waiting.popleft()

    def finished(self, job: Job) -> None:
        pass


class RoundRobinScheduler:
    """One job per user in turn, ignoring weights: also unfair when weights differ."""

    def __init__(self) -> None:
        self.waiting: dict[int, deque[Job]] = {}
        self.turns: deque[int] = deque()

    def push(self, job: Job, weight: float) -> None:
        if job.user not in self.waiting:
            self.waiting[job.user] = deque()
            self.turns.append(job.user)
        self.waiting[job.user].append(job)

    def pop(self) -> Job:
        while not self.waiting[self.turns[0]]:
            self.turns.rotate(-1)
        user = self.turns[0]
        self.turns.rotate(-1)
        return self.waiting[user].popleft()

    def finished(self, job: Job) -> None:
        pass


def simulate(trace: Trace, scheduler: Scheduler) -> Schedule:
    """Run the trace on one device that runs one job at a time.

    Each step: pop, run for the job's duration, tell the scheduler it finished (FairQueue:
    settle with the actual duration) and only then push the jobs that arrived up to that
    instant. With nothing queued the clock jumps to the next arrival.
    """
    arrivals = deque(trace.jobs)
    queued: Counter[int] = Counter()
    clock = 0.0
    dispatched: list[Job] = []
    queued_at_dispatch: list[frozenset[int]] = []
    idle_before: list[bool] = []

    def admit_arrivals_up_to(instant: float) -> None:
        while arrivals and arrivals[0].arrival <= instant:
            job = arrivals.popleft()
            scheduler.push(job, trace.weights[job.user])
            queued[job.user] += 1

    admit_arrivals_up_to(clock)
    while arrivals or +queued:
        idle = not +queued
        if idle:
            clock = max(clock, arrivals[0].arrival)
            admit_arrivals_up_to(clock)
        queued_at_dispatch.append(frozenset(user for user, count in queued.items() if count))
        idle_before.append(idle)
        job = scheduler.pop()
        queued[job.user] -= 1
        dispatched.append(job)
        clock += job.duration
        scheduler.finished(job)
        admit_arrivals_up_to(clock)
    return Schedule(dispatched, queued_at_dispatch, idle_before)


def backlogged_stretches(schedule: Schedule, user: int) -> list[tuple[int, int]]:
    """Maximal ranges [p, q) of dispatches over which `user` is continuously backlogged.

    The user has a job queued when each of dispatches p..q-1 starts and the device is not
    idle in between, so from the start of dispatch p to the end of dispatch q-1 the user
    always has a job queued or running.
    """
    stretches: list[tuple[int, int]] = []
    start: int | None = None
    for k, queued in enumerate(schedule.queued_at_dispatch):
        if start is not None and (user not in queued or schedule.idle_before[k]):
            stretches.append((start, k))
            start = None
        if start is None and user in queued:
            start = k
    if start is not None:
        stretches.append((start, len(schedule.dispatched)))
    return stretches


def overlaps(first: list[tuple[int, int]], second: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Non-empty intersections of two sorted lists of disjoint ranges [p, q)."""
    found: list[tuple[int, int]] = []
    a = b = 0
    while a < len(first) and b < len(second):
        start = max(first[a][0], second[b][0])
        end = min(first[a][1], second[b][1])
        if start < end:
            found.append((start, end))
        if first[a][1] < second[b][1]:
            a += 1
        else:
            b += 1
    return found


@dataclass(frozen=True)
class Violation:
    user_i: int
    user_j: int
    dispatches: tuple[int, int]  # [p, q): the jobs dispatched in the unfair interval
    gap: float  # | W_i / w_i - W_j / w_j |
    bound: float  # C_max / w_i + C_max / w_j


def sfq_violation(schedule: Schedule, weights: dict[int, float]) -> Violation | None:
    """The worst breach of the start-time fair queueing bound, or None if it holds.

    Intervals: for every pair of users i, j and every pair of dispatch boundaries p < q
    such that both users are continuously backlogged (see `backlogged_stretches`) from
    the start of dispatch p to the end of dispatch q-1, W_u is the total duration of u's
    jobs among dispatches p..q-1: whole jobs, the interval begins as one starts and ends
    as one ends, so nothing is clipped. C_max is the longest job of the whole trace.

    Why this holds for SFQ with costs settled before the next pop: a backlogged user's
    virtual time lies in [v, v + C_max / w] at every dispatch (v: the start tag being
    dispatched, non-decreasing) and grows by exactly W / w across the interval, so
    W_i / w_i and W_j / w_j both lie within one job of the same v(q-1) - v(p).

    With D(k) = W_i[0, k) / w_i - W_j[0, k) / w_j, the gap over [p, q) is D(q) - D(p), so
    the largest gap within one common stretch is max(D) - min(D) over its boundaries:
    linear in the stretch, not quadratic.
    """
    jobs = schedule.dispatched
    c_max = max(job.duration for job in jobs)
    users = sorted({job.user for job in jobs})
    normalized_service: dict[int, list[float]] = {}
    for user in users:
        running_total, prefix = 0.0, [0.0]
        for job in jobs:
            if job.user == user:
                running_total += job.duration
            prefix.append(running_total / weights[user])
        normalized_service[user] = prefix
    stretches = {user: backlogged_stretches(schedule, user) for user in users}
    slack = 1e-9 * (c_max + sum(job.duration for job in jobs))  # float rounding only

    worst: Violation | None = None
    for i, j in combinations(users, 2):
        bound = c_max / weights[i] + c_max / weights[j]
        service_i, service_j = normalized_service[i], normalized_service[j]
        for p, q in overlaps(stretches[i], stretches[j]):
            lead = [service_i[k] - service_j[k] for k in range(p, q + 1)]
            low = min(range(len(lead)), key=lead.__getitem__)
            high = max(range(len(lead)), key=lead.__getitem__)
            gap = lead[high] - lead[low]
            if gap > bound + slack and (worst is None or gap - bound > worst.gap - worst.bound):
                first, last = sorted((p + low, p + high))
                worst = Violation(i, j, (first, last), gap, bound)
    return worst


def crafted_trace(weights: dict[int, float], jobs_per_user: int) -> Trace:
    """Every user queues `jobs_per_user` one-second jobs at time 0, user 0 first."""
    jobs = [
        Job(index=user * jobs_per_user + n, user=user, arrival=0.0, duration=1.0)
        for user in weights
        for n in range(jobs_per_user)
    ]
    return Trace(weights, jobs)


def test_the_sfq_checker_rejects_a_fifo_schedule_and_accepts_the_fair_queue() -> None:
    trace = crafted_trace({0: 1.0, 1: 1.0}, jobs_per_user=10)

    violation = sfq_violation(simulate(trace, FifoScheduler()), trace.weights)

    # FIFO serves user 0's ten seconds while user 1 waits: gap 10 > 1 + 1.
    assert violation == Violation(0, 1, (0, 10), gap=10.0, bound=2.0)
    assert sfq_violation(simulate(trace, FairScheduler()), trace.weights) is None


def test_the_sfq_checker_rejects_a_schedule_that_ignores_weights() -> None:
    trace = crafted_trace({0: 1.0, 1: 9.0}, jobs_per_user=20)

    violation = sfq_violation(simulate(trace, RoundRobinScheduler()), trace.weights)

    assert violation is not None
    assert violation.gap > violation.bound
    assert sfq_violation(simulate(trace, FairScheduler()), trace.weights) is None


MAX_JOBS = 300


@st.composite
def traces(draw: st.DrawFn) -> Trace:
    """2..50 users with weights 1..10, each sending one to three bursts; Pareto durations.

    A user with several bursts at different times empties its queue and comes back later;
    bursts often share an arrival instant, which exercises the tie rule. The spread of
    arrival times ranges from all at once (everyone backlogged) to mostly idle.
    """
    user_count = draw(st.integers(2, 50))
    spread = draw(st.sampled_from([0, 30, 300, 3000]))
    # Pareto with shape 1.2 (heavy tail, finite mean), scale 1: 1 / u**(1/1.2), u in (0, 1],
    # cut at a longest job of 3, 30 or 300 s. The bound grows with C_max, so traces with a
    # short cap are the ones where an unfair policy cannot hide behind one huge job.
    longest = draw(st.sampled_from([3.0, 30.0, 300.0]))
    uniform = st.floats(min_value=longest**-1.2, max_value=1.0)
    weights: dict[int, float] = {}
    jobs: list[Job] = []
    for user in range(user_count):
        weights[user] = float(draw(st.integers(1, 10)))
        bursts = st.tuples(st.integers(0, spread), st.integers(1, 10))  # when, how many
        for arrival, size in draw(st.lists(bursts, min_size=1, max_size=3)):
            for _ in range(min(size, MAX_JOBS - len(jobs))):
                duration = 1.0 / draw(uniform) ** (1 / 1.2)
                priority = draw(st.integers(-2, 2))
                jobs.append(Job(len(jobs), user, float(arrival), duration, priority))
    jobs.sort(key=lambda job: job.arrival)  # stable: same-instant jobs keep trace order
    return Trace(weights, jobs)


def worst_excess_interval_by_interval(schedule: Schedule, weights: dict[int, float]) -> float:
    """The same check as `sfq_violation`, straight from the definition: every pair of
    users, every interval [p, q) over which both are backlogged, summed one by one.
    Returns max(gap - bound) (negative when the bound holds everywhere)."""
    jobs = schedule.dispatched
    c_max = max(job.duration for job in jobs)
    worst = float("-inf")
    for i, j in combinations(sorted({job.user for job in jobs}), 2):
        bound = c_max / weights[i] + c_max / weights[j]
        for p in range(len(jobs)):
            service = {i: 0.0, j: 0.0}
            for k in range(p, len(jobs)):
                both_queued = {i, j} <= schedule.queued_at_dispatch[k]
                if not both_queued or (k > p and schedule.idle_before[k]):
                    break
                if jobs[k].user in service:
                    service[jobs[k].user] += jobs[k].duration
                gap = abs(service[i] / weights[i] - service[j] / weights[j])
                worst = max(worst, gap - bound)
    return worst


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    trace=traces(),
    make_scheduler=st.sampled_from([FairScheduler, FifoScheduler, RoundRobinScheduler]),
)
def test_the_sfq_checker_finds_exactly_the_violations_of_the_interval_by_interval_check(
    trace: Trace, make_scheduler: type[Scheduler]
) -> None:
    small = Trace(trace.weights, trace.jobs[:25])
    schedule = simulate(small, make_scheduler())

    violation = sfq_violation(schedule, small.weights)
    worst_excess = worst_excess_interval_by_interval(schedule, small.weights)

    if violation is None:
        assert worst_excess <= 1e-9 * sum(job.duration for job in small.jobs)
    else:
        assert violation.gap - violation.bound == pytest.approx(worst_excess)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trace=traces(), estimate=st.sampled_from([0.0, 1.0, 3.0, 250.0]))
def test_any_two_users_backlogged_over_an_interval_get_service_within_the_sfq_bound(
    trace: Trace, estimate: float
) -> None:
    """|W_i/w_i - W_j/w_j| <= C_max/w_i + C_max/w_j: the intervals are the ones defined
    in `sfq_violation` (both users backlogged, endpoints at job boundaries)."""
    schedule = simulate(trace, FairScheduler(estimate))

    assert sorted(job.index for job in schedule.dispatched) == list(range(len(trace.jobs)))
    assert sfq_violation(schedule, trace.weights) is None


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trace=traces(), estimate=st.sampled_from([0.0, 1.0, 250.0]))
def test_on_a_sized_device_the_sfq_bound_holds_among_the_users_with_work_that_fits(
    trace: Trace, estimate: float
) -> None:
    """Sixty users whose jobs fit no device wait ahead of everyone in the fair order: the
    device still serves every job it can run, and the bound holds among their users."""
    schedule = simulate(trace, SizedFairScheduler(estimate))

    assert sorted(job.index for job in schedule.dispatched) == list(range(len(trace.jobs)))
    assert sfq_violation(schedule, trace.weights) is None


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trace=traces())
def test_the_same_trace_twice_gives_the_same_dispatch_order(trace: Trace) -> None:
    first = simulate(trace, FairScheduler())
    second = simulate(trace, FairScheduler())
    assert [job.index for job in first.dispatched] == [job.index for job in second.dispatched]


def test_a_user_whose_queued_work_fit_no_device_banks_no_credit_while_it_waited() -> None:
    """`parked` waits with a job too big for the device while `busy` is served: it had
    no work the device could run, so when it queues some it joins like a user that was
    idle, not with ten dispatches of credit (the SFQ bound among users with work that
    fits, from the moment both have some)."""
    queue: FairQueue[str] = FairQueue()
    queue.push("parked", "too big", size=10)
    for index in range(20):
        queue.push("busy", f"busy {index}", size=1)
    assert {queue.pop(cost=1.0, capacity=5).user for _ in range(10)} == {"busy"}

    for index in range(10):
        queue.push("parked", f"parked {index}", size=1)
    served = [queue.pop(cost=1.0, capacity=5).user for _ in range(10)]

    for prefix in range(1, len(served) + 1):
        received = served[:prefix].count("parked")
        assert abs(received - prefix / 2) <= 1, served
