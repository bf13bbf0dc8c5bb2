"""The admin site with the operators' dashboard, installed as Django's default site.

`zypher.settings` lists `jobs.monitoring.admin_site.ZypherAdminConfig` instead of
`django.contrib.admin`, so `admin.site` (and every `@admin.register`) is a
`ZypherAdminSite`: the admin operators know, with the dashboard among its pages. This
module is imported while the app registry loads, so it imports no models itself.

The dashboard's pages need `jobs.view_dashboard`, its remove-from-queue page
`jobs.remove_from_queue` (issue 17): a staff account holding neither gets a 403.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, URLResolver, path

View = Callable[..., HttpResponse]


def needs(permission: str, view: View) -> View:
    """`view` for users holding `permission` (superusers hold all); others get a 403."""

    def checked(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.has_perm(permission):
            raise PermissionDenied
        return view(request, *args, **kwargs)

    return checked


class ZypherAdminSite(admin.AdminSite):
    site_header = "Zypher administration"
    site_title = "Zypher admin"
    index_template = "admin/zypher_index.html"

    def get_urls(self) -> list[URLPattern | URLResolver]:
        from jobs.monitoring import dashboard  # imports models: only once the app registry is ready

        return [
            path(
                "dashboard/",
                self.admin_view(needs("jobs.view_dashboard", dashboard.dashboard_page(self))),
                name="dashboard",
            ),
            path(
                "dashboard/panels/",
                self.admin_view(needs("jobs.view_dashboard", dashboard.dashboard_panels)),
                name="dashboard-panels",
            ),
            path(
                "dashboard/remove-from-queue/",
                self.admin_view(
                    needs("jobs.remove_from_queue", dashboard.remove_from_queue_page(self))
                ),
                name="dashboard-remove-from-queue",
            ),
            *super().get_urls(),
        ]


class ZypherAdminConfig(AdminConfig):
    default_site = "jobs.monitoring.admin_site.ZypherAdminSite"
