"""The admin: users with weights, jobs, and the fair-share bookkeeping.

The operators' dashboard is a page of the same admin site (`jobs.monitoring.admin_site`,
`jobs.monitoring.dashboard`). The list filters here never ask the jobs table for its distinct
values (a full scan with millions of jobs): pools, kinds, users and devices are listed
from their own small tables.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.apps import apps
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin
from django.db.models import Q, QuerySet, Sum
from django.http import HttpRequest, HttpResponseRedirect
from django.urls import reverse

from jobs.handlers import known_kinds
from jobs.models import FairPool, FairShareAccount, Job, JobStatus, User
from jobs.queue import cancel_job

LISTED_CHOICES = 50


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
    fieldsets = [*UserAdmin.fieldsets, ("Fair share", {"fields": ["weight"]})]
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
    """Registered devices (when the devices app has them) and those running a job now."""

    title = "device"
    parameter_name = "device"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        names = set(
            Job.objects.filter(status=JobStatus.RUNNING)
            .exclude(device="")
            .values_list("device", flat=True)[:LISTED_CHOICES]
        )
        try:
            device_model = apps.get_model("devices", "Device")
            names |= set(device_model.objects.values_list("name", flat=True)[:LISTED_CHOICES])
        except LookupError:
            pass
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
    raw_id_fields = ["owner"]
    actions = ["cancel_selected"]

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


@admin.register(FairPool)
class FairPoolAdmin(admin.ModelAdmin):
    list_display = ["device_type", "virtual_time", "cost_estimate"]

    def has_delete_permission(self, request: HttpRequest, obj: FairPool | None = None) -> bool:
        return False  # pool rows are the scheduler's clock; processes cache their ids


@admin.register(FairShareAccount)
class FairShareAccountAdmin(admin.ModelAdmin):
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
