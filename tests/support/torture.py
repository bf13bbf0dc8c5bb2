"""The queue's concurrency torture: many processes change queue state at once, then drain.

Shared by tests/reliability/test_queue_torture.py (a bounded run in `make test`) and
bench/torture.py (a long run in `make reliability`). PostgreSQL only: the processes are
real OS processes (multiprocessing, spawn context) each with its own connection, calling
the functions of `jobs.queue` directly, with random small sleeps between steps:

- submitters: single, bulk (over several pools) and keyed submits whose idempotency keys
  repeat, so that two processes race on one key;
- an operator: `cancel_job` on random queued jobs (as their owners would) and
  `remove_user_from_queue`, with and without `stop_running`;
- dispatchers: `claim_next`, `finish_job`, `finish_and_claim_next`, `release_job`, now
  and then a claim dropped on the floor, so that its (short) lease runs out, and
  `requeue_expired_leases` between steps, as `run_dispatcher` does;
- the parent watches meanwhile: it samples every pool's virtual time (it must never go
  back) and looks for negative counters.

Few processes, since each costs a Django start-up (about 1.5 s of CPU) on a small machine.

Every process writes what it did to its own JSON-lines log: each job it created, each
ending it caused (a finish, a cancel, a release that gave up) and every exception. After
the run the queue is checked while quiet, drained, and checked again, with plain SQL,
independent of the queue's own checker: the counters of each (user, pool) account equal
its queued and running jobs, nothing is left queued or running, every job ended exactly
once and its row agrees with that ending, no process saw a database error (a deadlock,
SQLSTATE 40P01, above all) and no pool's virtual time went back.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import random
import signal
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

DEADLOCK = "40P01"
POOLS = ("cpu", "gpu", "qpu")
RELEASE_REASON = "torture: released"
OWNER_CANCEL = "owner-via-"  # cancelled_by of a cancel_job, as against a removal


@dataclass(frozen=True)
class TortureConfig:
    """The shape of one run. `env` is the children's environment (DATABASE_URL, lease)."""

    seconds: float
    log_dir: str
    env: dict[str, str]
    users: int = 16
    pools: tuple[str, ...] = POOLS
    submitters: int = 2
    dispatchers: int = 3
    max_backlog: int = 400  # submitters pause above this many queued jobs: drains stay short
    lease_seconds: float = 1.0
    removals: bool = True  # False: a baseline without remove_user_from_queue
    seed: int = 0

    def roles(self) -> list[tuple[str, int]]:
        roles = [("submitter", n) for n in range(self.submitters)]
        roles += [("dispatcher", n) for n in range(self.dispatchers)]
        return roles + [("operator", 0)]


def user_names(config: TortureConfig) -> dict[str, float]:
    """The users and their weights (0.5 to 4): different shares, so the order matters."""
    return {f"torture{n:02d}": (0.5, 1.0, 2.0, 3.0, 4.0)[n % 5] for n in range(config.users)}


def child_env(database_url: str, lease_seconds: float = 1.0, **extra: str) -> dict[str, str]:
    return {
        "DJANGO_SETTINGS_MODULE": "zypher.settings",
        "DATABASE_URL": database_url,
        "ZYPHER_LEASE_SECONDS": str(lease_seconds),
        "ZYPHER_MAX_ATTEMPTS": "3",
        **extra,
    }


# --- in the child processes --------------------------------------------------------------


class EventLog:
    """One process's JSON-lines log: what it did and every exception it saw."""

    def __init__(self, path: Path) -> None:
        self._file: TextIO = open(path, "a", buffering=1)  # noqa: SIM115 - closed in close()

    def write(self, event: str, **fields: Any) -> None:
        self._file.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\n")

    def close(self) -> None:
        self._file.close()


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error (Django wraps psycopg's in `__cause__`)."""
    for candidate in (exc, exc.__cause__, exc.__context__):
        code = getattr(candidate, "sqlstate", None)
        if code:
            return str(code)
    return None


@contextlib.contextmanager
def logged_errors(log: EventLog, step: str) -> Iterator[None]:
    """Any exception of one step is logged (the parent fails the run on it), not raised:
    the process goes on, as a dispatcher would."""
    from django.db import DatabaseError, connection

    try:
        yield
    except DatabaseError as exc:
        log.write(
            "db_error",
            step=step,
            sqlstate=sqlstate(exc),
            type=type(exc.__cause__ or exc).__name__,
            message=str(exc)[:500],
        )
        # Outside an atomic block the connection is usable again; make sure of it.
        if connection.in_atomic_block:
            connection.close()
    except Exception as exc:
        log.write("error", step=step, type=type(exc).__name__, message=str(exc)[:500])
        log.write("traceback", step=step, text=traceback.format_exc()[-2000:])


def _die_with_parent() -> None:
    """A killed test run takes its torture processes with it (Linux parent-death signal)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def child_main(role: str, index: int, config: TortureConfig, start: Any, started_at: Any) -> None:
    """Entry point of one torture process (spawn context: a fresh interpreter)."""
    _die_with_parent()
    os.environ.update(config.env)
    import django

    django.setup()
    from django.db import connection

    name = f"{role}{index}"
    log = EventLog(Path(config.log_dir) / f"{name}.jsonl")
    rng = random.Random(f"{config.seed}-{name}")
    try:
        with logged_errors(log, "setup"):
            connection.ensure_connection()
        start.wait(120)
        deadline = started_at.value + config.seconds
        ROLES[role](name, config, log, rng, deadline)
    except BaseException as exc:  # the role loop itself broke: the parent must hear of it
        log.write("error", step="role", type=type(exc).__name__, message=str(exc)[:500])
        log.write("traceback", step="role", text=traceback.format_exc()[-2000:])
        raise
    finally:
        log.write("exit")
        log.close()
        connection.close()


def _pause(rng: random.Random, longest: float = 0.02) -> None:
    time.sleep(rng.uniform(0, longest))


def submitter(
    name: str, config: TortureConfig, log: EventLog, rng: random.Random, deadline: float
) -> None:
    from jobs.models import Job, User
    from jobs.queue import JobSpec, submit_jobs

    users = list(User.objects.filter(username__in=user_names(config)))
    steps = 0
    while time.time() < deadline:
        steps += 1
        if steps % 10 == 0:
            with logged_errors(log, "backlog"):
                while (
                    time.time() < deadline
                    and Job.objects.filter(status="queued").count() > config.max_backlog
                ):
                    time.sleep(0.1)
        user = rng.choice(users)
        shape = rng.random()
        key = None
        if shape < 0.35:
            # A small key space per user, shared by all submitters: retries and races.
            # The key fixes the request (count and pools), as a client's retry would.
            n = rng.randrange(12)
            key = f"key{n}"
            specs = [
                JobSpec(kind="noop", input=n, device_type=config.pools[(n + i) % len(config.pools)])
                for i in range(1 + n % 3)
            ]
        elif shape < 0.75:
            specs = [JobSpec(kind="noop", input=steps, device_type=rng.choice(config.pools))]
        else:
            pools = config.pools if rng.random() < 0.5 else (rng.choice(config.pools),)
            specs = [
                JobSpec(kind="noop", input=i, device_type=rng.choice(pools), priority=i % 3)
                for i in range(rng.randint(2, 12))
            ]
        with logged_errors(log, "submit"):
            jobs, created = submit_jobs(user, specs, idempotency_key=key)
            log.write(
                "submitted",
                user=user.username,
                key=key,
                created=created,
                ids=[job.pk for job in jobs],
            )
        _pause(rng, 0.03)


def operator(
    name: str, config: TortureConfig, log: EventLog, rng: random.Random, deadline: float
) -> None:
    """Cancels random queued jobs (as their owners do) and removes random users from the
    queue, with and without stopping their running jobs (as an operator does)."""
    from jobs.models import Job, User
    from jobs.queue import cancel_job, remove_user_from_queue

    users = list(User.objects.filter(username__in=user_names(config)))
    next_removal = time.time() + rng.uniform(0, 0.6)
    while time.time() < deadline:
        with logged_errors(log, "cancel"):
            newest = Job.objects.order_by("-id").values_list("id", flat=True).first() or 0
            job = (
                Job.objects.filter(status="queued", id__gte=rng.randint(0, newest))
                .order_by("id")
                .only("id", "owner_id", "device_type", "public_id")
                .first()
            )
            if job is not None and cancel_job(job, cancelled_by=OWNER_CANCEL + name):
                log.write("ended", how="cancel", job=job.pk)
        if config.removals and time.time() >= next_removal:
            next_removal = time.time() + rng.uniform(0, 0.6)
            user = rng.choice(users)
            stop_running = rng.random() < 0.5
            with logged_errors(log, "remove"):
                count = remove_user_from_queue(user, removed_by=name, stop_running=stop_running)
                log.write("removed", user=user.username, stop_running=stop_running, count=count)
        _pause(rng, 0.05)


@dataclass
class Dispatcher:
    """One process's device: holds at most one claim and settles it in one of many ways."""

    name: str
    log: EventLog
    rng: random.Random
    pools: tuple[str, ...]
    claim: Any = None
    counts: Counter[str] = field(default_factory=Counter)

    def claim_one(self) -> None:
        from jobs.queue import claim_next

        with logged_errors(self.log, "claim"):
            self.claim = claim_next(self.rng.choice(self.pools), self.name)
            self.counts["claimed" if self.claim else "empty"] += 1

    def settle(self) -> None:
        from jobs.queue import finish_and_claim_next, finish_job, release_job

        claim, self.claim = self.claim, None  # on any error the lease hands it back
        roll = self.rng.random()
        succeeded = self.rng.random() < 0.85
        duration = round(self.rng.uniform(0.001, 0.05), 6)
        outcome = {"job": claim.id, "token": claim.fencing_token}
        outcome |= {"succeeded": succeeded, "duration": duration}
        if roll < 0.04:
            self.counts["abandoned"] += 1  # a dispatcher that hung: the reaper requeues
            return
        if roll < 0.12:
            with logged_errors(self.log, "release"):
                status = release_job(claim.id, claim.fencing_token, RELEASE_REASON)
                self.counts[f"release_{status}"] += 1
                if status == "failed":
                    self.log.write("ended", how="release", job=claim.id)
            return
        if roll < 0.55:
            with logged_errors(self.log, "finish_and_claim"):
                accepted, self.claim = finish_and_claim_next(
                    claim, self.name, succeeded=succeeded, duration=duration, error="torture"
                )
                self._finished(accepted, outcome)
                self.counts["claimed" if self.claim else "empty"] += 1
            return
        with logged_errors(self.log, "finish"):
            accepted = finish_job(
                claim, succeeded=succeeded, duration=duration, result=claim.id, error="torture"
            )
            self._finished(accepted, outcome)

    def _finished(self, accepted: bool, outcome: dict[str, Any]) -> None:
        self.counts["finished" if accepted else "fenced"] += 1
        if accepted:
            self.log.write("ended", how="finish", **outcome)

    def step(self) -> None:
        if self.claim is None:
            self.claim_one()
        else:
            self.settle()


def dispatcher(
    name: str, config: TortureConfig, log: EventLog, rng: random.Random, deadline: float
) -> None:
    from jobs.queue import requeue_expired_leases

    device = Dispatcher(f"{name}-device", log, rng, config.pools)
    next_reap = time.time()
    while time.time() < deadline:
        device.step()
        if time.time() >= next_reap:  # as run_dispatcher does, between its devices' work
            next_reap = time.time() + rng.uniform(0.1, 0.5)
            with logged_errors(log, "reap"):
                for public_id, status in requeue_expired_leases():
                    device.counts[f"reaped_{status}"] += 1
                    if status == "failed":
                        log.write("ended", how="reap", public_id=public_id)
        _pause(rng, 0.01 if device.claim else 0.03)
    log.write("counts", **device.counts)
    if device.claim is not None:
        log.write("holding", job=device.claim.id)  # its lease runs out: the drain reaps it


def watch(log: EventLog, running: Callable[[], bool]) -> None:
    """Invariants that hold at every instant of committed state, sampled while it changes
    (the parent does this while its children run)."""
    from django.db import connection

    last: dict[str, float] = {}
    samples = 0
    while running():
        with logged_errors(log, "watch"), connection.cursor() as cursor:
            cursor.execute("SELECT device_type, virtual_time FROM jobs_fairpool")
            for pool, virtual_time in cursor.fetchall():
                if virtual_time < last.get(pool, float("-inf")):
                    log.write(
                        "violation",
                        what=f"pool {pool} virtual time went back "
                        f"from {last[pool]!r} to {virtual_time!r}",
                    )
                last[pool] = virtual_time
            cursor.execute(
                "SELECT u.username, p.device_type, a.queued_count, a.running_count "
                "FROM jobs_fairshareaccount a JOIN jobs_user u ON u.id = a.user_id "
                "JOIN jobs_fairpool p ON p.id = a.pool_id "
                "WHERE a.queued_count < 0 OR a.running_count < 0"
            )
            for user, pool, queued, running in cursor.fetchall():
                log.write(
                    "violation",
                    what=f"{user} in {pool}: negative counter (queued {queued}, running {running})",
                )
            samples += 1
        time.sleep(0.05)
    log.write("counts", samples=samples, pools=last)


ROLES: dict[str, Callable[[str, TortureConfig, EventLog, random.Random, float], None]] = {
    "submitter": submitter,
    "operator": operator,
    "dispatcher": dispatcher,
}


# --- in the parent ---------------------------------------------------------------------


@dataclass
class TortureReport:
    """What a run did and every way it broke the queue's promises (empty: it held)."""

    seconds: float
    problems: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)  # "step sqlstate type" -> count
    counts: Counter[str] = field(default_factory=Counter)
    jobs: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    drain_seconds: float = 0.0
    startup_seconds: float = 0.0

    @property
    def deadlocks(self) -> int:
        return sum(n for key, n in self.errors.items() if DEADLOCK in key)

    def summary(self) -> str:
        lines = [
            f"torture: {self.seconds:g}s, {self.jobs} jobs {self.statuses}, "
            f"processes started in {self.startup_seconds:.1f}s, drained in {self.drain_seconds:.1f}s",
            "  did: " + ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())),
            f"  database errors: {sum(self.errors.values())} (deadlocks {self.deadlocks})",
            *(f"    {n} x {key}" for key, n in self.errors.most_common()),
            f"  problems: {len(self.problems)}",
            *(f"    {p}" for p in self.problems[:40]),
        ]
        if len(self.problems) > 40:
            lines.append(f"    ... and {len(self.problems) - 40} more")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it rebuilds a Counter from (key, value) pairs, counting them.
        return {
            "seconds": self.seconds,
            "jobs": self.jobs,
            "statuses": self.statuses,
            "deadlocks": self.deadlocks,
            "errors": dict(self.errors),
            "counts": dict(self.counts),
            "problems": self.problems,
            "startup_seconds": self.startup_seconds,
            "drain_seconds": self.drain_seconds,
        }


def create_users(config: TortureConfig) -> None:
    from jobs.models import User

    User.objects.bulk_create(
        [User(username=name, weight=weight) for name, weight in user_names(config).items()]
    )


def run_torture(config: TortureConfig) -> TortureReport:
    """Run the processes for `config.seconds`, check while quiet, drain, check again.

    The caller has Django set up on the same (empty) PostgreSQL database as `config.env`.
    """
    from django.db import connection

    create_users(config)
    report = TortureReport(seconds=config.seconds)
    Path(config.log_dir).mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    started_at = context.Value("d", 0.0)
    processes = [
        context.Process(
            target=child_main,
            args=(role, index, config, start, started_at),
            name=f"{role}{index}",
            daemon=True,
        )
        for role, index in config.roles()
    ]
    connection.close()  # no connection held across the children's start
    try:
        began = time.monotonic()
        for process in processes:
            process.start()
        _wait_until_ready(config, processes)
        report.startup_seconds = time.monotonic() - began
        started_at.value = time.time()
        start.set()
        watch_log = EventLog(Path(config.log_dir) / "watcher.jsonl")
        try:
            watch_until = started_at.value + config.seconds + 30
            watch(
                watch_log,
                lambda: time.time() < watch_until and any(p.is_alive() for p in processes),
            )
        finally:
            watch_log.close()
        for process in processes:
            process.join(timeout=max(0.0, started_at.value + config.seconds + 30 - time.time()))
            if process.is_alive():
                report.problems.append(f"{process.name} still running 30 s after the deadline")
            elif process.exitcode:
                report.problems.append(f"{process.name} exited with status {process.exitcode}")
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join(5)
    report.problems += check_counters("after the run, quiet")
    drain_log = EventLog(Path(config.log_dir) / "drain.jsonl")
    try:
        began = time.monotonic()
        report.problems += drain(config, drain_log)
        report.drain_seconds = time.monotonic() - began
    finally:
        drain_log.close()
    report.problems += check_counters("after the drain")
    check_logs_and_jobs(config, report)
    return report


def _wait_until_ready(config: TortureConfig, processes: list[Any]) -> None:
    """Start together: each child logs nothing before `start`, so wait for connections."""
    from django.db import connection

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )
            (connected,) = cursor.fetchone()
        dead = [p.name for p in processes if not p.is_alive()]
        if dead:
            raise RuntimeError(f"torture processes died while starting: {dead}")
        if connected >= len(processes):
            return
        time.sleep(0.2)
    raise RuntimeError("torture processes did not connect within 120 s")


def drain(config: TortureConfig, log: EventLog) -> list[str]:
    """Claim and finish until nothing is queued or running; reap expired leases meanwhile.

    Returns a problem when queued jobs stay unclaimable (stranded under a wrong counter)
    or running jobs never come back.
    """
    from django.db.models import Count

    from jobs.models import Job
    from jobs.queue import claim_next, finish_job, requeue_expired_leases

    idle_since = time.monotonic()
    patience = config.lease_seconds * 3 + 3
    while True:
        progress = False
        for public_id, status in requeue_expired_leases(limit=1000):
            progress = True
            if status == "failed":
                log.write("ended", how="reap", public_id=public_id)
        for pool in config.pools:
            while (claim := claim_next(pool, "drain-device")) is not None:
                progress = True
                if finish_job(claim, succeeded=True, duration=0.001, result=claim.id):
                    log.write(
                        "ended",
                        how="finish",
                        job=claim.id,
                        token=claim.fencing_token,
                        succeeded=True,
                        duration=0.001,
                    )
        left = dict(
            Job.objects.filter(status__in=["queued", "running"])
            .values("status")
            .annotate(n=Count("id"))
            .values_list("status", "n")
        )
        if not left:
            return []
        if progress:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > patience:
            return [f"drain stuck: {left} jobs can never be claimed or reaped (stranded)"]
        time.sleep(0.1)


_ACCOUNTS_VS_JOBS = """
WITH actual AS (
    SELECT owner_id, device_type,
           count(*) FILTER (WHERE status = 'queued') AS queued,
           count(*) FILTER (WHERE status = 'running') AS running
    FROM jobs_job WHERE status IN ('queued', 'running')
    GROUP BY owner_id, device_type
)
SELECT u.username, COALESCE(p.device_type, actual.device_type),
       COALESCE(a.queued_count, 0), COALESCE(actual.queued, 0),
       COALESCE(a.running_count, 0), COALESCE(actual.running, 0)
FROM jobs_fairshareaccount a
JOIN jobs_fairpool p ON p.id = a.pool_id
FULL OUTER JOIN actual ON actual.owner_id = a.user_id AND actual.device_type = p.device_type
JOIN jobs_user u ON u.id = COALESCE(a.user_id, actual.owner_id)
WHERE COALESCE(a.queued_count, 0) <> COALESCE(actual.queued, 0)
   OR COALESCE(a.running_count, 0) <> COALESCE(actual.running, 0)
ORDER BY 1, 2
"""


def check_counters(when: str) -> list[str]:
    """Each (user, pool) account's counters against its queued and running jobs."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(_ACCOUNTS_VS_JOBS)
        rows = cursor.fetchall()
    return [
        f"{when}: {user} in {pool}: queued_count {queued_count} but {queued} queued, "
        f"running_count {running_count} but {running} running"
        for user, pool, queued_count, queued, running_count, running in rows
    ]


def read_logs(log_dir: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(log_dir.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                yield path.stem, json.loads(line)


def check_logs_and_jobs(config: TortureConfig, report: TortureReport) -> None:
    """Every job ended exactly once, as its row says; no process saw an error."""
    from jobs.models import Job

    rows = {
        row["id"]: row
        for row in Job.objects.values(
            "id",
            "public_id",
            "status",
            "finished_at",
            "duration",
            "cancelled_by",
            "owner__username",
            "idempotency_key",
        )
    }
    by_public_id = {str(row["public_id"]): job_id for job_id, row in rows.items()}
    report.jobs = len(rows)
    report.statuses = dict(Counter(row["status"] for row in rows.values()))
    endings: dict[int, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    created: set[int] = set()
    answers: dict[tuple[str, str], set[tuple[int, ...]]] = defaultdict(set)
    exited: set[str] = set()
    for process, event in read_logs(Path(config.log_dir)):
        kind = event["event"]
        if kind == "ended":
            job_id = event.get("job") or by_public_id.get(event.get("public_id", ""))
            if job_id is None:
                report.problems.append(f"{process} ended a job that is not in the table: {event}")
                continue
            endings[job_id].append((process, event))
            report.counts[f"ended by {event['how']}"] += 1
        elif kind == "submitted":
            report.counts["submits"] += 1
            if event["created"]:
                created.update(event["ids"])
            if event["key"] is not None:
                answers[(event["user"], event["key"])].add(tuple(event["ids"]))
        elif kind in ("db_error", "error"):
            key = f"{process.rstrip('0123456789')} {event['step']}: "
            key += f"{event.get('sqlstate') or '-'} {event['type']}"
            report.errors[key] += 1
        elif kind == "traceback" and len(report.problems) < 200:
            report.problems.append(f"{process}: {event['text'].splitlines()[-1]}")
        elif kind == "violation":
            report.problems.append(f"{process}: {event['what']}")
        elif kind == "removed":
            report.counts["removals"] += 1
        elif kind == "exit":
            exited.add(process)
        elif kind == "counts":
            for name, value in event.items():
                if isinstance(value, int):
                    report.counts[name] += value
    for role, index in config.roles():
        if f"{role}{index}" not in exited:
            report.problems.append(f"{role}{index} never finished its run (no exit in its log)")
    if report.errors:
        report.problems.append(
            f"{sum(report.errors.values())} database or other errors in the processes' logs "
            f"({report.deadlocks} deadlocks, SQLSTATE {DEADLOCK}): {dict(report.errors)}"
        )
    if lost := created - rows.keys():
        report.problems.append(f"{len(lost)} jobs acknowledged as created are missing")
    if unknown := rows.keys() - created:
        report.problems.append(f"{len(unknown)} jobs in the table no submit acknowledged")
    for (user, key), seen in sorted(answers.items()):
        if len(seen) > 1:
            report.problems.append(f"{user} key {key!r}: different answers {sorted(seen)}")
    for job_id, row in sorted(rows.items()):
        report.problems += _check_ending(job_id, row, endings.get(job_id, []))


def _check_ending(job_id: int, row: Mapping[str, Any], endings: list[Any]) -> list[str]:
    status = row["status"]
    hows = sorted(event["how"] for _, event in endings)
    where = f"job {job_id} ({status}, cancelled_by {row['cancelled_by']!r})"
    if status in ("queued", "running"):
        return [f"{where}: left {status}"]
    if row["finished_at"] is None:
        return [f"{where}: ended without finished_at"]
    if status == "cancelled":
        by_owner = row["cancelled_by"].startswith(OWNER_CANCEL)
        expected = ["cancel"] if by_owner else []
        if hows != expected:
            return [f"{where}: ended by {hows}, expected {expected}"]
        if by_owner and OWNER_CANCEL + endings[0][0] != row["cancelled_by"]:
            return [f"{where}: cancel accepted by {endings[0][0]}"]
        return []
    if len(endings) != 1:
        return [f"{where}: ended {len(endings)} times ({hows}), not exactly once"]
    _, event = endings[0]
    if event["how"] == "finish":
        recorded = "succeeded" if event["succeeded"] else "failed"
        if status != recorded or row["duration"] != event["duration"]:
            return [
                f"{where}: finish accepted as {recorded} in {event['duration']} s, "
                f"row says {status} in {row['duration']} s"
            ]
    elif status != "failed":
        return [f"{where}: a release that gave up, yet {status}"]
    return []
