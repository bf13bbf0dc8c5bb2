"""The queue's tables: users with weights, jobs, and the fair-share bookkeeping.

Claiming the next job must stay a few index lookups whatever the backlog, so the
scheduler does not look at the jobs table to choose a user: it reads `FairShareAccount`
(one row per user and pool, only the backlogged ones indexed by virtual time) and then
the head of that user's queue through the partial index `job_queue_head`.
"""

from __future__ import annotations

import uuid
from typing import Self

from django.contrib.auth.models import AbstractUser
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from jobs.progress import PROGRESS_MESSAGE_LENGTH

# Weights are bounded: a tiny weight divides a charge into a virtual time that runs away
# for good, a huge one lets a user outrun everyone else's start tags (issue 13).
MIN_WEIGHT = 0.001
MAX_WEIGHT = 1000.0


class User(AbstractUser):
    """An account of the gateway. Its weight is its share of device time."""

    weight = models.FloatField(
        default=1.0,
        validators=[MinValueValidator(MIN_WEIGHT), MaxValueValidator(MAX_WEIGHT)],
        help_text=f"Share of device time relative to others ({MIN_WEIGHT:g} to {MAX_WEIGHT:g}).",
    )

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(weight__gte=MIN_WEIGHT) & Q(weight__lte=MAX_WEIGHT),
                name="user_weight_range",
            )
        ]
        # Operators' rights (issue 17), checked by jobs.api.access and the admin instead
        # of `is_staff`; the `operator` group holds them (jobs/migrations/*_operator_permissions).
        permissions = [
            ("remove_from_queue", "Can remove users from the queue"),
            ("change_weight", "Can change users' weights"),
            ("view_dashboard", "Can read the operators' dashboard"),
            ("act_for_users", "Can submit jobs for any user (an application backend)"),
        ]

    def __str__(self) -> str:
        return self.username


class JobStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class OwnedQuerySet(models.QuerySet):
    """Rows with an `owner`: jobs and programs."""

    def visible_to(self, reader: User | None) -> Self:
        """What `reader` may see: their own rows; every row for None (staff, or anyone in
        open mode, which `jobs.api.access.reader_of` decides)."""
        return self if reader is None else self.filter(owner=reader)


class CallbackDelivery(models.TextChoices):
    """Where a program's or a job's callback stands (delivered by `jobs.programs`)."""

    NONE = "none"  # no callback_url
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class Program(models.Model):
    """A group of jobs submitted together (e.g. a QPU exercise's circuits), whose results go back to
    the user at `callback_url` when every job has ended."""

    Delivery = CallbackDelivery

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    owner = models.ForeignKey("User", on_delete=models.CASCADE, related_name="programs")
    priority = models.SmallIntegerField(default=0)
    device_type = models.CharField(max_length=64)
    callback_url = models.URLField(max_length=2000, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    callback_status = models.CharField(
        max_length=16, choices=Delivery.choices, default=Delivery.NONE
    )
    callback_attempts = models.PositiveIntegerField(default=0)
    callback_error = models.TextField(blank=True, default="")
    delivered_at = models.DateTimeField(null=True, blank=True)

    objects = OwnedQuerySet.as_manager()

    def __str__(self) -> str:
        return f"program {self.public_id}"


class Job(models.Model):
    """One unit of work for one device. `public_id` is what users see: unguessable."""

    # The integer key orders jobs by age (cheap, monotone); it is never shown to users.
    id = models.BigAutoField(primary_key=True)
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    owner = models.ForeignKey(User, on_delete=models.CASCADE, related_name="jobs")
    kind = models.CharField(max_length=64, default="limited_f")
    input = models.JSONField(null=True)
    device_type = models.CharField(max_length=64, default="cpu")
    priority = models.SmallIntegerField(default=0)
    status = models.CharField(
        max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED, db_index=False
    )
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    device = models.CharField(
        max_length=128, blank=True, default="", help_text="Device that ran it."
    )
    # Claim bookkeeping: `attempts` doubles as the fencing token of the current claim.
    attempts = models.PositiveIntegerField(default=0)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    charged_cost = models.FloatField(default=0.0)
    charged_weight = models.FloatField(default=1.0)
    duration = models.FloatField(null=True, blank=True, help_text="Device seconds used.")
    # NULL, not "": jobs without a key must not collide in the per-owner unique constraint.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    cancelled_by = models.CharField(max_length=150, blank=True, default="")
    # The device size the job needs (e.g. qubits): it runs only on a device at least this big.
    size = models.PositiveIntegerField(default=0)
    program = models.ForeignKey(
        Program, null=True, blank=True, on_delete=models.CASCADE, related_name="jobs"
    )
    # What the handler last reported (`jobs.handlers.report_progress`), written coalesced
    # by the device's dispatcher (`jobs.progress`); NULL until the first report.
    progress = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="How far the running handler says it has got, 0 to 1.",
    )
    # db_default too: the PL/pgSQL submit (jobs/sql/submit.sql) inserts rows itself.
    progress_message = models.CharField(
        max_length=PROGRESS_MESSAGE_LENGTH, blank=True, default="", db_default=""
    )
    # A job's own callback (issue 14): POSTed its representation once when it ends, by a
    # dispatcher (`jobs.programs.CallbackCourier`), as a program's is. db_default too.
    callback_url = models.URLField(max_length=2000, blank=True, default="", db_default="")
    callback_status = models.CharField(
        max_length=16,
        choices=CallbackDelivery.choices,
        default=CallbackDelivery.NONE,
        db_default=CallbackDelivery.NONE,
    )
    callback_attempts = models.PositiveIntegerField(default=0, db_default=0)
    callback_error = models.TextField(blank=True, default="", db_default="")
    callback_delivered_at = models.DateTimeField(null=True, blank=True)

    objects = OwnedQuerySet.as_manager()

    class Meta:
        indexes = [
            # The head of each user's queue in a pool: priority first, then age.
            models.Index(
                "device_type",
                "owner",
                models.F("priority").desc(),
                "id",
                condition=Q(status="queued"),
                name="job_queue_head",
            ),
            # Sized devices: a user's smallest queued size is the first entry of its range
            # (one probe says whether anything fits), and each size's head follows it.
            models.Index(
                "device_type",
                "owner",
                "size",
                models.F("priority").desc(),
                "id",
                condition=Q(status="queued"),
                name="job_queued_fit",
            ),
            models.Index(
                fields=["lease_expires_at"],
                condition=Q(status="running"),
                name="job_running_lease",
            ),
            models.Index(fields=["owner", "-id"], name="job_owner_newest"),
            models.Index(fields=["status", "-id"], name="job_status_newest"),
            models.Index(fields=["finished_at"], name="job_finished_at"),
            # The callbacks still to deliver: a handful among millions of jobs.
            models.Index(
                fields=["id"], condition=Q(callback_status="pending"), name="job_callback_pending"
            ),
            # Each user's oldest queued job in one probe (the dashboard's oldest-queued age).
            models.Index(
                fields=["owner", "id"], condition=Q(status="queued"), name="job_queued_oldest"
            ),
            # The dashboard's fairness window: each user's first queued arrival per pool and
            # the queued jobs that arrived before an instant, read from the index alone.
            models.Index(
                fields=["device_type", "owner", "created_at"],
                condition=Q(status="queued"),
                name="job_queued_arrival",
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="job_idempotency_key_per_owner",
            ),
            models.CheckConstraint(
                condition=Q(priority__gte=-100) & Q(priority__lte=100), name="job_priority_range"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.public_id} ({self.status})"


class JobRun(models.Model):
    """A requeued attempt of a job: the device time it held before it was given back.

    Requeueing (`jobs.queue.release_job`) is the only path that erases a run from the job
    row (it resets `started_at`); every other attempt (finished, failed, given up,
    stopped) stays on the row itself, so the dashboard's received device time
    (`jobs.monitoring.stats`) reads the job rows and these. Written once, closed.
    """

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="runs")
    owner = models.ForeignKey(User, on_delete=models.CASCADE, related_name="runs")
    device_type = models.CharField(max_length=64)  # the pool
    device = models.CharField(max_length=128, blank=True, default="")
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["ended_at"], name="jobrun_ended_at")]  # the window

    def __str__(self) -> str:
        return f"run of job {self.job_id} on {self.device or '?'} from {self.started_at}"


class FairPool(models.Model):
    """Scheduler state of one device pool (all devices of one `device_type`)."""

    device_type = models.CharField(max_length=64, unique=True)
    # The largest start tag dispatched so far: where a returning user starts.
    virtual_time = models.FloatField(default=0.0)
    # Running mean of job durations: the cost charged at dispatch, settled at the end.
    cost_estimate = models.FloatField(default=1.0)

    def __str__(self) -> str:
        return self.device_type


class FairShareAccount(models.Model):
    """One user's standing in one pool: virtual time and counts of its work there."""

    pool = models.ForeignKey(FairPool, on_delete=models.CASCADE, related_name="accounts")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="accounts")
    virtual_time = models.FloatField(default=0.0)
    queued_count = models.IntegerField(default=0)
    running_count = models.IntegerField(default=0)
    served_seconds = models.FloatField(default=0.0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["pool", "user"], name="account_pool_user"),
        ]
        indexes = [
            # Only backlogged users are in this index: the claim reads its first entry.
            models.Index(
                fields=["pool", "virtual_time", "id"],
                condition=Q(queued_count__gt=0),
                name="account_backlogged",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.pool}"


class QueueRepair(models.Model):
    """A drift of the queue's bookkeeping that a checker found and fixed (`jobs.invariants`).

    Kept in the database so that drift is seen, not guessed: `/metrics` counts these rows
    and the dashboard lists the latest, whichever process repaired them.
    """

    repaired_at = models.DateTimeField(default=timezone.now, db_index=True)
    kind = models.CharField(max_length=40)  # which invariant: queued_count, running_count, …
    subject = models.CharField(max_length=200)  # e.g. "account alice in cpu"
    detail = models.TextField()  # what was found and what it was set to
    repaired_by = models.CharField(max_length=150)  # "check_queue", "dispatcher d1", "claim"

    def __str__(self) -> str:
        return f"{self.kind}: {self.subject}"
