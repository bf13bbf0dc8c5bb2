"""The operators' dashboard pages of the admin (routes in `jobs.monitoring.admin_site`).

The page is rendered once in full; its panels are then re-rendered by the server and swapped
in by a few lines of script, in two parts on two clocks: the queue as it stands every
`ZYPHER_DASHBOARD_REFRESH_SECONDS`, the last hour's figures (most of the cost: the fluid
fair schedule's sweep) every `ZYPHER_DASHBOARD_HOUR_REFRESH_SECONDS`. The page never
reloads and the charts stay server-side SVG (`jobs.monitoring.charts`). "Remove from
queue" (a button per user here, an action on the users' list) goes through one
confirmation page, which calls `jobs.queue.remove_user_from_queue`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db.models import Sum
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import mark_safe

from jobs.api.access import may_deactivate
from jobs.models import User
from jobs.monitoring import charts, stats
from jobs.queue import remove_user_from_queue

SHARES_SHOWN = 20  # users in the fairness chart and table (all of them: /api/stats/)


def human_seconds(seconds: float | None) -> str:
    """12.3 s, 4 min 05 s, 2 h 03 min; an em dash for none."""
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def panels_context(part: str | None = None, now: datetime | None = None) -> dict[str, Any]:
    """The figures of one part (`stats.STATS_PARTS`; both when None) at `now` (default: the
    clock), their charts (trusted SVG: every label is escaped in `jobs.monitoring.charts`)
    and their ages in words."""
    figures = stats.dashboard_stats(now, part)
    context: dict[str, Any] = {"stats": figures}
    if part != "hour":
        for row in figures["queued_by_user"]:
            row["oldest_queued_age"] = human_seconds(row["oldest_queued_age_seconds"])
        for job in figures["running"]:
            job["running_for"] = human_seconds(job["running_seconds"])
        context["oldest_queued_age"] = human_seconds(figures["oldest_queued_age_seconds"])
    if part != "live":
        for row in figures["shares"]:
            row["oldest_queued_age"] = human_seconds(row["oldest_queued_age_seconds"])
        idle_gap = figures["fairness"]["idle_gap"]
        # The users furthest from their entitlement either way, most owed first.
        shown = sorted(figures["shares"], key=lambda row: -abs(row["lag_seconds"]))[:SHARES_SHOWN]
        shown.sort(key=lambda row: (row["pool"], -row["lag_seconds"], row["user"]))
        context |= {
            "shares_shown": shown,
            "shares_hidden": len(figures["shares"]) - len(shown),
            "lag_slack_seconds": f"{settings.ZYPHER_DASHBOARD_LAG_SLACK_SECONDS:g}",
            "throughput_chart": mark_safe(
                charts.throughput_chart(figures["throughput"]["last_hour"])
            ),
            "share_chart": mark_safe(charts.share_chart(shown, limit=SHARES_SHOWN)),
            "idle_gap_chart": mark_safe(
                charts.histogram_chart(idle_gap["edges"], idle_gap["counts"])
            ),
        }
    return context


def dashboard_page(site: admin.AdminSite) -> Callable[[HttpRequest], HttpResponse]:
    def dashboard(request: HttpRequest) -> HttpResponse:
        context = {
            **site.each_context(request),
            "title": "Operators' dashboard",
            "refresh_seconds": f"{settings.ZYPHER_DASHBOARD_REFRESH_SECONDS:g}",
            "refresh_ms": int(settings.ZYPHER_DASHBOARD_REFRESH_SECONDS * 1000),
            "hour_refresh_seconds": f"{settings.ZYPHER_DASHBOARD_HOUR_REFRESH_SECONDS:g}",
            "hour_refresh_ms": int(settings.ZYPHER_DASHBOARD_HOUR_REFRESH_SECONDS * 1000),
            **panels_context(),
        }
        return TemplateResponse(request, "admin/zypher/dashboard.html", context)

    return dashboard


PART_TEMPLATES = {
    None: "admin/zypher/dashboard_panels.html",
    "live": "admin/zypher/dashboard_live.html",
    "hour": "admin/zypher/dashboard_hour.html",
}


def dashboard_panels(request: HttpRequest) -> HttpResponse:
    """The dashboard's panels alone, what the page fetches to refresh itself: `?part=live`
    (the queue) or `?part=hour` (the last hour's figures), both without."""
    part = request.GET.get("part")
    if part not in PART_TEMPLATES:
        return HttpResponseBadRequest(
            f"Unknown part; valid: {', '.join(stats.STATS_PARTS)}.", content_type="text/plain"
        )
    return TemplateResponse(request, PART_TEMPLATES[part], panels_context(part))


class RemoveFromQueueForm(forms.Form):
    users = forms.ModelMultipleChoiceField(
        queryset=User.objects.all(), widget=forms.MultipleHiddenInput
    )
    deactivate = forms.BooleanField(
        required=False, label="Also deactivate: their new submissions are refused (403)"
    )
    stop_running = forms.BooleanField(
        required=False, label="Also stop the jobs they are running now"
    )
    next = forms.CharField(required=False, widget=forms.HiddenInput)


def _user_ids(request: HttpRequest) -> list[int]:
    """`?users=3,5` or `?users=3&users=5`; anything that is not an id is ignored."""
    raw = ",".join(request.GET.getlist("users"))
    return [int(part) for part in raw.split(",") if part.strip().isdigit()]


def remove_from_queue_page(site: admin.AdminSite) -> Callable[[HttpRequest], HttpResponse]:
    def remove_from_queue(request: HttpRequest) -> HttpResponse:
        if request.method == "POST":
            form = RemoveFromQueueForm(request.POST)
            if form.is_valid() and form.cleaned_data["deactivate"]:
                for user in form.cleaned_data["users"]:
                    if not may_deactivate(request.user, user):
                        form.add_error(
                            None, f"Only a superuser may deactivate {user} (a superuser)."
                        )
            if form.is_valid():
                options = {
                    "deactivate": form.cleaned_data["deactivate"],
                    "stop_running": form.cleaned_data["stop_running"],
                }
                for user in form.cleaned_data["users"]:
                    cancelled = remove_user_from_queue(
                        user, removed_by=request.user.get_username(), **options
                    )
                    also = "; deactivated" if options["deactivate"] else ""
                    messages.success(
                        request,
                        f"Removed {user} from the queue: {cancelled} job(s) cancelled{also}.",
                    )
                target = form.cleaned_data["next"]
                if not url_has_allowed_host_and_scheme(
                    target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
                ):
                    target = reverse("admin:dashboard")
                return HttpResponseRedirect(target)
            ids = [user.pk for user in form.cleaned_data.get("users", [])]
        else:
            ids = _user_ids(request)
            form = RemoveFromQueueForm(initial={"users": ids, "next": request.GET.get("next", "")})
        users = (
            User.objects.filter(pk__in=ids)
            .annotate(queued=Sum("accounts__queued_count"), running=Sum("accounts__running_count"))
            .order_by("username")
        )
        context = {
            **site.each_context(request),
            "title": "Remove from the queue",
            "form": form,
            "users": users,
        }
        return TemplateResponse(request, "admin/zypher/remove_from_queue.html", context)

    return remove_from_queue
