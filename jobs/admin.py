"""The admin: users with weights, jobs, and the fair-share bookkeeping."""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest

from jobs.models import FairPool, FairShareAccount, Job, JobStatus, User
from jobs.queue import cancel_job


@admin.register(User)
class ZypherUserAdmin(UserAdmin):
    list_display = ["username", "weight", "is_active", "is_staff", "date_joined"]
    list_editable = ["weight"]
    fieldsets = [*UserAdmin.fieldsets, ("Fair share", {"fields": ["weight"]})]


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
        "duration",
    ]
    list_filter = ["status", "kind", "device_type"]
    search_fields = ["public_id", "owner__username"]
    list_select_related = ["owner"]
    ordering = ["-id"]
    show_full_result_count = False
    raw_id_fields = ["owner"]
    actions = ["cancel_selected"]

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
