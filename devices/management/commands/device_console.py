"""`python manage.py device_console qpu-1`: the operator's terminal for one device."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from devices.console import DeviceConsole
from devices.models import Device


class Command(BaseCommand):
    help = "Send commands to a device (start, stop, ping, calculate, terminate, status) and print its answers."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("device_id", help="the device's id, e.g. qpu-1")

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["device_id"]
        if not Device.objects.filter(name=name).exists():
            raise CommandError(f"device {name!r} is not registered")
        # sys.stdout, not self.stdout: the prompt must not end with a newline.
        DeviceConsole(name, sys.stdin, sys.stdout).loop()
