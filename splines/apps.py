from __future__ import annotations

from django.apps import AppConfig


class SplinesConfig(AppConfig):
    name = "splines"
    verbose_name = "Splines: B-spline curves drawn on images"

    def ready(self) -> None:
        from jobs.handlers import register_handlers

        register_handlers({"spline": "splines.handlers:render_spline_job"})
