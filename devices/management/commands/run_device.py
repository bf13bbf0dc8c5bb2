"""`python manage.py run_device --id qpu-1 --type qpu --size 20 --port 9001 --gateway URL`."""

from __future__ import annotations

import asyncio
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from devices.agent import AgentConfig, DeviceAgent
from devices.process_logging import log_to_stdout


class Command(BaseCommand):
    help = "Run a device agent: registers with the gateway and takes signed commands over HTTP."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--id", required=True, help="the device's id, e.g. qpu-1")
        parser.add_argument("--type", required=True, help="the pool it serves, e.g. qpu")
        parser.add_argument("--size", type=int, default=0, help="e.g. qubits (default 0)")
        parser.add_argument("--port", type=int, required=True, help="port to listen on")
        parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
        parser.add_argument(
            "--url",
            default="",
            help="the address the gateway reaches it at (default from host/port)",
        )
        parser.add_argument("--gateway", default="http://127.0.0.1:8080", help="the gateway's URL")
        parser.add_argument(
            "--token",
            default=settings.ZYPHER_DEVICE_TOKEN,
            help="registration token (default ZYPHER_DEVICE_TOKEN)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["size"] < 0:
            raise CommandError("--size must be 0 or more")
        log_to_stdout()
        config = AgentConfig(
            device_id=options["id"],
            device_type=options["type"],
            size=options["size"],
            host=options["host"],
            port=options["port"],
            url=options["url"],
            gateway=options["gateway"],
            token=options["token"],
            qpu_seconds=settings.ZYPHER_QPU_SECONDS,
            max_age=settings.ZYPHER_SIGNATURE_MAX_AGE_SECONDS,
            report_retry_seconds=settings.ZYPHER_DEVICE_REPORT_RETRY_SECONDS,
        )
        asyncio.run(DeviceAgent(config).run())
