"""The admin: users with weights, jobs, and the fair-share bookkeeping.

The admin never changes queue state behind `jobs.queue`'s back (issue 12): a job's
status, attempts, lease, charge, owner, pool and size and the fair-share bookkeeping
(pools, accounts) are read-only here, since a hand-edited row would leave the counters
unequal to the jobs they count. Jobs are not added here (that bypasses `submit_jobs`),
and queued or running jobs are never deleted (nor users who have some, nor accounts or
pools): operators cancel queued jobs (`cancel_job`) and requeue running ones
(`release_job`) with the actions, which take the queue's locks. Weights stay editable;
a queued job's priority too, written with a compare-and-set on its status.

Operators' rights are permissions (issue 17; `jobs.api.access` names them): a weight is
edited with `jobs.change_weight` (which alone makes every other field read-only), the
queue actions need `jobs.remove_from_queue`. Only a superuser edits a staff or superuser
account (its flags, groups, permissions, password, its deletion) or hands out staff,
superuser, groups and permissions: an operator cannot promote themselves or lock out
those above them.

The operators' dashboard is a page of the same admin site (`jobs.monitoring.admin_site`,
`jobs.monitoring.dashboard`). The list filters here never ask the jobs table for its distinct
values (a full scan with millions of jobs): pools, kinds, users and devices are listed
from their own small tables.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import flatten_fieldsets, unquote
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth.admin import UserAdmin
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, QuerySet, Sum
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse

from jobs.api.access import CHANGE_WEIGHT, REMOVE_FROM_QUEUE, holds
from jobs.handlers import known_kinds
from jobs.models import FINAL_STATUSES, FairPool, FairShareAccount, Job, JobStatus, User
from jobs.monitoring.stats import device_states
from jobs.queue import cancel_job, delete_users, release_job

LISTED_CHOICES = 50
LIVE_STATUSES = [JobStatus.QUEUED, JobStatus.RUNNING]
# What only a superuser changes on an account.
PRIVILEGE_FIELDS = ["is_staff", "is_superuser", "groups", "user_permissions"]


def above(request: HttpRequest, account: User | None) -> bool:
    """Whether `account` is beyond what the request's (non-superuser) user may edit: a
    staff or superuser account, or one holding a role or permission (an API-only
    operator or registrar need not be staff), whose password or flags would be a way up."""
    if account is None or getattr(request.user, "is_superuser", False):
        return False
    return (
        account.is_staff
        or account.is_superuser
        or account.groups.exists()
        or account.user_permissions.exists()
    )


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

    def may_edit_account(self, request: HttpRequest, obj: User | None = None) -> bool:
        """Every field (Django's `jobs.change_user`), not only the weight."""
        return super().has_change_permission(request, obj) and not above(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.may_edit_account(request, obj) or holds(request.user, CHANGE_WEIGHT)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_delete_permission(request, obj) and not above(request, obj)

    def has_remove_from_queue_permission(self, request: HttpRequest) -> bool:
        return holds(request.user, REMOVE_FROM_QUEUE)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None and not self.may_edit_account(request, obj):
            # The weight alone (an operator): the password's own widget links to a view
            # that checks for itself (user_change_password).
            shown = flatten_fieldsets(self.get_fieldsets(request, obj))
            fields += [name for name in shown if name not in ("weight", "password")]
        elif not getattr(request.user, "is_superuser", False):
            fields += PRIVILEGE_FIELDS
        if not holds(request.user, CHANGE_WEIGHT):
            fields.append("weight")
        return list(dict.fromkeys(fields))

    def get_changelist_instance(self, request: HttpRequest) -> ChangeList:
        changelist = super().get_changelist_instance(request)
        if not holds(request.user, CHANGE_WEIGHT):
            changelist.list_editable = ()  # the weight column is the only editable one
        return changelist

    def user_change_password(
        self, request: HttpRequest, id: str, form_url: str = ""
    ) -> HttpResponse:
        account = self.get_object(request, unquote(id))
        if account is not None and not self.may_edit_account(request, account):
            raise PermissionDenied
        return super().user_change_password(request, id, form_url)

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
        for account in objs:
            if above(request, account):
                protected.append(
                    f"{account}: a staff or role-holding account (a superuser's to delete)"
                )
        return deleted, counts, perms_needed, protected

    def delete_model(self, request: HttpRequest, obj: User) -> None:
        self.delete_queryset(request, User.objects.filter(pk=obj.pk))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        """Through `delete_users`: each user's row is locked before their accounts (a
        submit's order), and one whose submit landed since the confirmation is kept."""
        kept = delete_users(list(queryset.values_list("pk", flat=True)))
        if kept:
            self.message_user(
                request,
                f"Not deleted (queued or running jobs; remove them from the queue first): "
                f"{', '.join(kept)}",
                messages.WARNING,
            )

    @admin.action(
        description="Remove selected users from the queue…", permissions=["remove_from_queue"]
    )
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

    def has_remove_from_queue_permission(self, request: HttpRequest) -> bool:
        return holds(request.user, REMOVE_FROM_QUEUE)

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

    @admin.action(description="Cancel selected queued jobs", permissions=["remove_from_queue"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        cancelled = sum(
            cancel_job(job, cancelled_by=request.user.get_username())
            for job in queryset.filter(status=JobStatus.QUEUED)
        )
        self.message_user(request, f"Cancelled {cancelled} queued job(s).", messages.SUCCESS)

    @admin.action(description="Requeue selected running jobs", permissions=["remove_from_queue"])
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
