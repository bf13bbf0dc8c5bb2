"""Reconcile a run: what clients were told against the jobs table and the handler's log.

Shared by the short soak and fault tests and by bench/soak.py and bench/faults.py. The
promise checked is the one the README makes: an accepted job is never lost, never
recorded as finished twice, and nothing is left `running`. The `sleep` test handler
(tests/support/handlers.py) appends a job's tag to an execution log when it completes, so the
log is the devices' own account of what ran, independent of the database.

A job can legitimately *execute* more than once: when its worker or dispatcher dies
after the handler returned but before the result was committed, the job is requeued
and runs again (at-least-once execution, exactly-once recording). `strict` (no faults)
requires the log to match the succeeded jobs one for one; otherwise a repeated execution
is accepted only for a job that was claimed more than once (`attempts > 1`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

FINAL = {"succeeded", "failed", "cancelled"}


@dataclass(frozen=True)
class JobRow:
    public_id: str
    tag: str
    owner: str
    weight: int
    status: str
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration: float | None  # device seconds, as the handler's run was timed

    @property
    def ran_from(self) -> datetime | None:
        """When the handler's run began: its end minus its duration (the claim's
        `started_at` also counts the wait for a worker that is still starting)."""
        if self.finished_at is None or self.duration is None:
            return None
        return self.finished_at - timedelta(seconds=self.duration)


def load_job_rows() -> list[JobRow]:
    """Every job of the `sleep` handler in the database (Django must be set up)."""
    from jobs.models import Job

    rows = Job.objects.filter(kind="sleep").values_list(
        "public_id",
        "input",
        "owner__username",
        "owner__weight",
        "status",
        "attempts",
        "created_at",
        "started_at",
        "finished_at",
        "duration",
    )
    return [
        JobRow(str(pid), str((data or {}).get("tag", "")), owner, weight, *rest)
        for pid, data, owner, weight, *rest in rows
    ]


def read_executions(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@dataclass
class Reconciliation:
    accepted: int
    by_status: dict[str, int]
    executions: int
    missing: list[str] = field(default_factory=list)  # accepted, not in the database
    not_final: list[str] = field(default_factory=list)  # still queued or running
    duplicate_rows: list[str] = field(default_factory=list)  # one tag, several jobs
    unacknowledged: list[str] = field(default_factory=list)  # stored, client never told
    succeeded_not_executed: list[str] = field(default_factory=list)
    executed_not_succeeded: list[str] = field(default_factory=list)
    executed_again: dict[str, int] = field(default_factory=dict)  # tag -> executions
    executed_again_unexplained: list[str] = field(default_factory=list)  # attempts == 1

    def problems(self, *, strict: bool) -> list[str]:
        """What breaks the promise; empty when the run reconciles."""
        found = []
        for name in (
            "missing",
            "not_final",
            "duplicate_rows",
            "succeeded_not_executed",
            "executed_not_succeeded",
            "executed_again_unexplained",
        ):
            if items := getattr(self, name):
                found.append(f"{name}: {len(items)} e.g. {list(items)[:5]}")
        if strict and self.executed_again:
            found.append(f"executed_again: {dict(list(self.executed_again.items())[:5])}")
        return found

    def summary(self) -> dict[str, object]:
        return {
            "accepted": self.accepted,
            "by_status": self.by_status,
            "handler_executions": self.executions,
            "missing": len(self.missing),
            "not_final": len(self.not_final),
            "duplicate_rows": len(self.duplicate_rows),
            "unacknowledged": len(self.unacknowledged),
            "succeeded_not_executed": len(self.succeeded_not_executed),
            "executed_not_succeeded": len(self.executed_not_succeeded),
            "executed_again": len(self.executed_again),
            "executed_again_unexplained": len(self.executed_again_unexplained),
        }


def reconcile(
    accepted: dict[str, str], rows: list[JobRow], executions: list[str]
) -> Reconciliation:
    """`accepted`: tag -> public id as the clients were told; `rows`: the jobs table;
    `executions`: the handler's log (one tag per completed run)."""
    by_tag: dict[str, list[JobRow]] = {}
    for row in rows:
        by_tag.setdefault(row.tag, []).append(row)
    by_id = {row.public_id: row for row in rows}
    ran = Counter(executions)
    result = Reconciliation(
        accepted=len(accepted),
        by_status=dict(Counter(row.status for row in rows)),
        executions=len(executions),
    )
    result.missing = [tag for tag, pid in accepted.items() if pid not in by_id]
    result.not_final = [row.tag for row in rows if row.status not in FINAL]
    result.duplicate_rows = [tag for tag, found in by_tag.items() if len(found) > 1]
    result.unacknowledged = [row.tag for row in rows if row.tag not in accepted]
    for row in rows:
        count = ran.get(row.tag, 0)
        if row.status == "succeeded" and count == 0:
            result.succeeded_not_executed.append(row.tag)
        if row.status != "succeeded" and count > 0:
            result.executed_not_succeeded.append(row.tag)
        if count > 1:
            result.executed_again[row.tag] = count
            if row.attempts < 2:
                result.executed_again_unexplained.append(row.tag)
    return result


@dataclass
class UserShare:
    user: str
    weight: int
    device_seconds: float
    share: float
    entitled: float

    @property
    def relative_error(self) -> float:
        return abs(self.share - self.entitled) / self.entitled


@dataclass
class Fairness:
    """Device time per user over the window in which every user was backlogged."""

    window_start: datetime | None
    window_end: datetime | None
    users: list[UserShare]

    @property
    def window_seconds(self) -> float:
        if self.window_start is None or self.window_end is None:
            return 0.0
        return max(0.0, (self.window_end - self.window_start).total_seconds())

    @property
    def max_normalised_gap(self) -> float:
        """max over user pairs of |W_i/w_i - W_j/w_j| in device seconds: the quantity the
        policy bounds (jobs/fairshare.py) by C_max/w_i + C_max/w_j on one device."""
        normalised = [u.device_seconds / u.weight for u in self.users]
        return max(normalised) - min(normalised) if normalised else 0.0

    @property
    def worst(self) -> UserShare | None:
        return max(self.users, key=lambda u: u.relative_error, default=None)

    def summary(self) -> dict[str, object]:
        worst = self.worst
        return {
            "window_seconds": round(self.window_seconds, 3),
            "users": len(self.users),
            "worst_relative_error": round(worst.relative_error, 4) if worst else None,
            "max_normalised_gap_s": round(self.max_normalised_gap, 4),
            "worst_user": worst.user if worst else None,
            "worst_weight": worst.weight if worst else None,
            "mean_relative_error": (
                round(sum(u.relative_error for u in self.users) / len(self.users), 4)
                if self.users
                else None
            ),
        }


def fairness(rows: list[JobRow]) -> Fairness:
    """Shares of device time while every user was continuously backlogged.

    No job is created after the window opens (the last submission), so each user's
    queue only shrinks from then on, and the user stays backlogged until its last job
    starts. The window therefore runs from the last submission to the earliest "last
    start" over all users; inside it every user is backlogged, which is when the
    policy's guarantee applies. Device time is each run's [finished - duration, finished]
    clipped to the window; the entitled share is weight / sum of weights.
    """
    done = [r for r in rows if r.status == "succeeded" and r.started_at and r.ran_from]
    if not done:
        return Fairness(None, None, [])
    window_start = max(r.created_at for r in rows)
    last_start: dict[str, datetime] = {}
    weights: dict[str, int] = {}
    for row in done:
        assert row.started_at is not None  # `done` holds only runs that started
        weights[row.owner] = row.weight
        if row.owner not in last_start or row.started_at > last_start[row.owner]:
            last_start[row.owner] = row.started_at
    window_end = min(last_start.values())
    if window_end <= window_start:
        return Fairness(window_start, window_end, [])
    seconds: dict[str, float] = dict.fromkeys(weights, 0.0)
    for row in done:
        ran_from, finished_at = row.ran_from, row.finished_at
        assert ran_from is not None and finished_at is not None  # ran_from needs both ends
        start, end = max(ran_from, window_start), min(finished_at, window_end)
        if end > start:
            seconds[row.owner] += (end - start).total_seconds()
    total = sum(seconds.values())
    weight_sum = sum(weights.values())
    if total <= 0:
        return Fairness(window_start, window_end, [])
    users = [
        UserShare(
            user, weights[user], seconds[user], seconds[user] / total, weights[user] / weight_sum
        )
        for user in sorted(weights)
    ]
    return Fairness(window_start, window_end, users)
