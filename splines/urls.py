"""Routes of the splines app, mounted at the site root by `zypher.urls`."""

from __future__ import annotations

from django.urls import path, re_path

from .handlers import OUTPUT_SUBDIRECTORY, media_url
from .views import FitView, RenderView, SplinePage, job_output

urlpatterns = [
    path("api/splines/render/", RenderView.as_view(), name="splines-render"),
    path("api/splines/fit/", FitView.as_view(), name="splines-fit"),
    path("splines/", SplinePage.as_view(), name="splines-page"),
    re_path(
        rf"^{media_url().strip('/')}/{OUTPUT_SUBDIRECTORY}/(?P<path>[0-9a-f]{{32}}\.[a-z]+)$",
        job_output,
        name="splines-output",
    ),
]
