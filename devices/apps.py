from __future__ import annotations

from django.apps import AppConfig


class DevicesConfig(AppConfig):
    name = "devices"
    verbose_name = "Devices and dispatcher"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # `jobs` names no other app: devices hand it their handler and dashboard rows.
        from devices import access, monitoring
        from jobs.handlers import register_handlers
        from jobs.monitoring.stats import provide_device_states
        from jobs.queue import provide_pool_capacity

        register_handlers({"qpu": "devices.qpu.mock:qpu_handler"})
        provide_device_states(monitoring.device_states)
        provide_pool_capacity(monitoring.pool_capacity)
        access.grant_device_permissions()
