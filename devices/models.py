"""The device pool: every device that can run jobs, local worker processes and remote agents.

A device's `state` is what the gateway last knew: `unready` (registered, not accepting
work), `ready` (idle, accepting work), `busy` (running `current_job`), `offline` (missed
its health checks; its job was given back to the queue). `current_job` and
`fencing_token` say which claim of which job the device holds; a report from the device
is accepted only for that claim.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from jobs.models import Job


class Device(models.Model):
    class State(models.TextChoices):
        UNREADY = "unready"
        READY = "ready"
        BUSY = "busy"
        OFFLINE = "offline"

    class Kind(models.TextChoices):
        LOCAL = "local"  # a worker process of a run_dispatcher
        REMOTE = "remote"  # an agent (run_device) at an http(s) URL
        SIMULATED = "simulated"  # an address that is not a URL: the dispatcher plays the QPU

    name = models.CharField(max_length=128, unique=True, help_text="The device's id.")
    device_type = models.CharField(max_length=64, help_text="The pool it serves.")
    size = models.PositiveIntegerField(default=0, help_text="E.g. qubits; fits jobs up to it.")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.REMOTE)
    url = models.CharField(max_length=2000, blank=True, default="")
    state = models.CharField(max_length=16, choices=State.choices, default=State.UNREADY)
    current_job = models.ForeignKey(
        Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    fencing_token = models.PositiveIntegerField(null=True, blank=True)
    # Signs commands and reports (devices.protocol); shown once, at registration.
    secret = models.CharField(max_length=128, blank=True, default="")
    registered_at = models.DateTimeField(auto_now_add=True)
    last_seen = models.DateTimeField(null=True, blank=True)
    missed_pings = models.PositiveIntegerField(default=0)
    dispatcher = models.CharField(
        max_length=128, blank=True, default="", help_text="Local devices: the dispatcher."
    )

    class Meta:
        indexes = [
            models.Index(
                fields=["device_type", "size"],
                condition=Q(state="ready", current_job__isnull=True),
                name="device_idle",
            )
        ]
        # Register, re-point, remove and command devices (issue 17): the `device
        # registrar` group holds it (devices/migrations/*_operator_permissions).
        permissions = [("manage_devices", "Can register, re-point, remove and command devices")]

    def __str__(self) -> str:
        return self.name

    @property
    def is_remote(self) -> bool:
        return self.kind == self.Kind.REMOTE


class SeenNonce(models.Model):
    """Nonces of signed reports seen within the freshness window (replay protection across
    all web processes). Rows older than twice the window are purged as reports arrive."""

    device_name = models.CharField(max_length=128)
    nonce = models.CharField(max_length=64)
    seen_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["device_name", "nonce"], name="nonce_once_per_device")
        ]

    def __str__(self) -> str:
        return f"{self.device_name} {self.nonce}"


class ClientProgramId(models.Model):
    """The compat adapter: a client's own `program_id` for a program (per user)."""

    program = models.OneToOneField("jobs.Program", on_delete=models.CASCADE, related_name="+")
    owner = models.ForeignKey("jobs.User", on_delete=models.CASCADE, related_name="+")
    client_id = models.CharField(max_length=255)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["owner", "client_id"], name="client_program_per_owner")
        ]

    def __str__(self) -> str:
        return self.client_id
