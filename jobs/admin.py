"""The admin: users with weights, jobs, and the fair-share bookkeeping.

The admin never changes queue state behind `jobs.queue`'s back (issue 12): a job's
status, attempts, lease, charge, owner, pool and size and the fair-share bookkeeping
(pools, accounts) are read-only here, since a hand-edited row would leave the counters
unequal to the jobs they count. Jobs are not added here (that bypasses `submit_jobs`),
and queued or running jobs are never deleted (nor users who have some, nor accounts or
pools): operators cancel queued jobs (`cancel_job`) and requeue running ones
(`release_job`) with the actions, which take the queue's locks. Weights stay editable;
a queued job's priority too, written with a compare-and-set on its status.

The operators' dashboard is a page of the same admin site (`jobs.monitoring.admin_site`,
`jobs.monitoring.dashboard`). The list filters here never ask the jobs table for its distinct
values (a full scan with millions of jobs): pools, kinds, users and devices are listed
from their own small tables.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin
from django.db.models import Count, Q, QuerySet, Sum
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponseRedirect
from django.urls import reverse

from jobs.handlers import known_kinds
from jobs.models import FINAL_STATUSES, FairPool, FairShareAccount, Job, JobStatus, User
from jobs.monitoring.stats import device_states
from jobs.queue import cancel_job, release_job

LISTED_CHOICES = 50
LIVE_STATUSES = [JobStatus.QUEUED, JobStatus.RUNNING]


@admin.register(User)
class ZypherUserAdmin(UserAdmin):
    list_display = [
        "username",
        "weight",
        "queued",
        "running",
        "device_seconds",
        "is_active",
        "is_staff",
        "date_joined",
    ]
    list_editable = ["weight"]  # takes effect at the user's next dispatch
    # django-stubs types UserAdmin.fieldsets as ModelAdmin's Optional; Django's UserAdmin sets it.
    fieldsets = [*UserAdmin.fieldsets, ("Fair share", {"fields": ["weight"]})]  # type: ignore[misc]
    actions = ["remove_from_queue"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[User]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                queued_jobs=Sum("accounts__queued_count"),
                running_jobs=Sum("accounts__running_count"),
                served_seconds=Sum("accounts__served_seconds"),
            )
        )

    @admin.display(description="queued", ordering="queued_jobs")
    def queued(self, user: Any) -> int:
        return user.queued_jobs or 0

    @admin.display(description="running", ordering="running_jobs")
    def running(self, user: Any) -> int:
        return user.running_jobs or 0

    @admin.display(description="device time served (s)", ordering="served_seconds")
    def device_seconds(self, user: Any) -> str:
        return f"{user.served_seconds or 0.0:.1f}"

    def get_deleted_objects(
        self, objs: Any, request: HttpRequest
    ) -> tuple[list[Any], dict[str, int], set[str], list[str]]:
        """A user goes with their accounts and ended jobs; one with queued or running
        jobs is refused (remove them from the queue first)."""
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        # The job and account admins refuse deletes one by one; with their user, ended
        # jobs and accounts that count nothing may go (the model permissions still apply).
        for model in (Job, FairShareAccount):
            codename = f"{model._meta.app_label}.delete_{model._meta.model_name}"
            if request.user.has_perm(codename):
                perms_needed.discard(str(model._meta.verbose_name))
        live = (
            Job.objects.filter(owner__in=list(objs), status__in=LIVE_STATUSES)
            .values("owner__username")
            .annotate(live=Count("id"))
            .order_by("owner__username")
        )
        for row in live:
            protected.append(
                f"{row['owner__username']}: {row['live']} queued or running job(s); "
                "remove the user from the queue first"
            )
        return deleted, counts, perms_needed, protected

    @admin.action(description="Remove selected users from the queue…")
    def remove_from_queue(
        self, request: HttpRequest, queryset: QuerySet[User]
    ) -> HttpResponseRedirect:
        """Off to the confirmation page (cancel queued jobs, optionally deactivate and stop)."""
        ids = ",".join(str(pk) for pk in queryset.values_list("pk", flat=True))
        back = reverse("admin:jobs_user_changelist")
        target = reverse("admin:dashboard-remove-from-queue")
        return HttpResponseRedirect(f"{target}?users={ids}&next={back}")


class PoolFilter(admin.SimpleListFilter):
    title = "pool"
    parameter_name = "pool"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        pools = FairPool.objects.order_by("device_type").values_list("device_type", flat=True)
        return [(pool, pool) for pool in pools[:LISTED_CHOICES]]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Job]) -> QuerySet[Job]:
        return queryset.filter(device_type=self.value()) if self.value() else queryset


class KindFilter(admin.SimpleListFilter):
    title = "kind"
    parameter_name = "kind"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(kind, kind) for kind in sorted(known_kinds())]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Job]) -> QuerySet[Job]:
        return queryset.filter(kind=self.value()) if self.value() else queryset


class UserFilter(admin.SimpleListFilter):
    """Users with work queued or running first (any name works in the URL: `?user=`)."""

    title = "user"
    parameter_name = "user"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        names = (
            FairShareAccount.objects.values("user__username")
            .annotate(backlog=Sum("queued_count") + Sum("running_count"))
            .order_by("-backlog", "user__username")
            .values_list("user__username", flat=True)
        )
        return [(name, name) for name in names[:LISTED_CHOICES]]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Job]) -> QuerySet[Job]:
        return queryset.filter(owner__username=self.value()) if self.value() else queryset


class DeviceFilter(admin.SimpleListFilter):
    """Registered devices (from the app that provides them to the dashboard, through
    `device_states()`) and those running a job now."""

    title = "device"
    parameter_name = "device"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        names = set(
            Job.objects.filter(status=JobStatus.RUNNING)
            .exclude(device="")
            .values_list("device", flat=True)[:LISTED_CHOICES]
        )
        names |= {state["device"] for state in device_states()[:LISTED_CHOICES]}
        return [(name, name) for name in sorted(names)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Job]) -> QuerySet[Job]:
        return queryset.filter(device=self.value()) if self.value() else queryset


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = [
        "public_id",
        "owner",
        "kind",
        "device_type",
        "priority",
        "status",
        "device",
        "created_at",
        "finished_at",
        "duration",
        "cancelled_by",
    ]
    list_filter = ["status", KindFilter, PoolFilter, UserFilter, DeviceFilter]
    # Exact matches only (see get_search_results): a job id or a user name.
    search_fields = ["public_id", "owner__username"]
    search_help_text = "A job id, or a user name (exact)."
    list_select_related = ["owner"]
    ordering = ["-id"]
    show_full_result_count = False
    actions = ["cancel_selected", "requeue_selected"]
    editable_while_queued = ["priority"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # jobs are submitted through the API (`submit_jobs` counts them)

    def has_delete_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        # Ended jobs may go (retention); queued and running ones are cancelled or requeued.
        allowed = super().has_delete_permission(request, obj)
        return allowed and (obj is None or obj.status in FINAL_STATUSES)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        # Re-checked in the statement: a job may have been requeued since the confirmation.
        queryset.filter(status__in=list(FINAL_STATUSES)).delete()

    def get_readonly_fields(self, request: HttpRequest, obj: Job | None = None) -> list[str]:
        fields = [field.name for field in Job._meta.fields]
        if obj is not None and obj.status == JobStatus.QUEUED:
            return [name for name in fields if name not in self.editable_while_queued]
        return fields

    def save_model(self, request: HttpRequest, obj: Job, form: ModelForm, change: bool) -> None:
        """Write only the fields the operator may change, and only while still queued
        (`obj.save()` would write back every column as read, over a claim)."""
        changed = {name: getattr(obj, name) for name in form.changed_data}
        changed = {k: v for k, v in changed.items() if k in self.editable_while_queued}
        if not changed:
            return
        updated = Job.objects.filter(pk=obj.pk, status=JobStatus.QUEUED).update(**changed)
        if not updated:
            self.message_user(
                request,
                f"Job {obj.public_id} is no longer queued: nothing changed.",
                messages.ERROR,
            )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Job], search_term: str
    ) -> tuple[QuerySet[Job], bool]:
        """An id or a user name, matched exactly through an index (a substring search
        would read every job)."""
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            return queryset.filter(public_id=uuid.UUID(term)), False
        except ValueError:
            return queryset.filter(Q(owner__username=term)), False

    @admin.action(description="Cancel selected queued jobs")
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        cancelled = sum(
            cancel_job(job, cancelled_by=request.user.get_username())
            for job in queryset.filter(status=JobStatus.QUEUED)
        )
        self.message_user(request, f"Cancelled {cancelled} queued job(s).", messages.SUCCESS)

    @admin.action(description="Requeue selected running jobs")
    def requeue_selected(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        """Give running jobs back to the queue (their dispatcher sees the lease gone and
        stops the device); a job out of attempts fails instead, as after any release."""
        reason = f"requeued by operator {request.user.get_username()}"
        running = queryset.filter(status=JobStatus.RUNNING).order_by("id")
        outcomes = [
            release_job(job_id, attempts, reason)
            for job_id, attempts in running.values_list("id", "attempts")
        ]
        requeued = outcomes.count(JobStatus.QUEUED)
        failed = outcomes.count(JobStatus.FAILED)
        text = f"Requeued {requeued} running job(s)."
        if failed:
            text += f" {failed} had used all their attempts and failed."
        self.message_user(request, text, messages.SUCCESS)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Shown, never written: the queue's bookkeeping changes only through jobs.queue."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(FairPool)
class FairPoolAdmin(ReadOnlyAdmin):
    # Pool rows are the scheduler's clock; processes cache their ids.
    list_display = ["device_type", "virtual_time", "cost_estimate"]


@admin.register(FairShareAccount)
class FairShareAccountAdmin(ReadOnlyAdmin):
    list_display = [
        "user",
        "pool",
        "virtual_time",
        "queued_count",
        "running_count",
        "served_seconds",
    ]
    list_filter = ["pool"]
    list_select_related = ["user", "pool"]
