from django.apps import AppConfig


class DevicesConfig(AppConfig):
    name = "devices"
    verbose_name = "Devices and dispatcher"
    default_auto_field = "django.db.models.BigAutoField"
