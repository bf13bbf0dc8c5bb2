from django.apps import AppConfig


class SplinesConfig(AppConfig):
    name = "splines"
    verbose_name = "Splines: B-spline curves drawn on images"
