from django.apps import AppConfig


class SplinesConfig(AppConfig):
    name = "splines"
