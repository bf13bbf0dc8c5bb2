"""The device pool's state changes: register, remove, dispatch to, settle reports from.

Every change of a device's job goes through the queue (`jobs.queue`): a job handed to a
remote device is claimed with `claim_next` (so remote devices follow the same fair-share
policy as local ones), settled with `finish_job`, and given back with `release_job`. The
claim's fencing token travels with the job to the agent and back in its report, so a
late report from a device that lost its claim is refused.

Execution is at least once: a job whose result the agent holds but cannot deliver keeps
its lease for ZYPHER_DEVICE_UNREPORTED_SECONDS after it ended, then goes back to the queue
and may run again; the first run's report, if it comes later, is refused.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any
from urllib.parse import urlparse

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from devices import protocol
from devices.models import Device, SeenNonce
from jobs.models import Job, JobStatus
from jobs.queue import (
    ClaimedJob,
    claim_next,
    finish_job,
    pool_id_for,
    release_job,
    renew_leases,
    wake_dispatchers,
)
from jobs.results import settle_outcome, storable_result

log = logging.getLogger("zypher.devices")


def kind_for_url(url: str) -> str:
    """An http(s) URL is an agent; anything else (the exercise's `addr1`) is simulated."""
    scheme = urlparse(url).scheme
    return Device.Kind.REMOTE if scheme in ("http", "https") else Device.Kind.SIMULATED


class LocalDeviceId(Exception):
    """A registration named a dispatcher's local worker: it never becomes remote."""


def register_device(name: str, device_type: str, size: int, url: str) -> tuple[Device, bool]:
    """Register a device, or update it if its id is known; returns it (with a new secret)
    and whether it is new. A job the old registration was running goes back to the queue:
    an agent that registers again has restarted and lost it. LocalDeviceId if `name` is a
    local worker's (its jobs would go to whoever registered it, issue 17)."""
    kind = kind_for_url(url)
    with transaction.atomic():
        device = _lock_device(name)
        created = device is None
        if device is not None and device.kind == Device.Kind.LOCAL:
            raise LocalDeviceId(
                f"Device {name!r} is a local worker of a dispatcher: its id cannot be registered."
            )
        if device is None:
            device = Device(name=name)
        elif (held := held_claim(device)) is not None:
            _release(device, held, "device registered again (restarted) while running it")
        device.device_type = device_type
        device.size = size
        device.url = url
        device.kind = kind
        # An agent starts unready until an operator starts it; a simulated device has no
        # operator console, so it is ready at once.
        device.state = Device.State.READY if kind == Device.Kind.SIMULATED else Device.State.UNREADY
        device.current_job = None
        device.fencing_token = None
        device.secret = protocol.new_secret()
        device.last_seen = timezone.now()
        device.missed_pings = 0
        device.save()
        wake_dispatchers(device_type)
    log.info("device %s registered (%s, type %s, size %s, %s)", name, kind, device_type, size, url)
    return device, created


def remove_device(name: str) -> bool:
    """Remove a device; the job it was running goes back to the queue. False if unknown."""
    with transaction.atomic():
        device = _lock_device(name)
        if device is None:
            return False
        if (held := held_claim(device)) is not None:
            _release(device, held, f"device {name} was removed while running it")
        device.delete()
    log.info("device %s removed", name)
    return True


def held_claim(device: Device) -> tuple[int, int] | None:
    """(job id, fencing token) of the claim the device holds, or None if it holds none
    (the two are set and cleared together)."""
    if device.current_job_id is None or device.fencing_token is None:
        return None
    return device.current_job_id, device.fencing_token


def _release(device: Device, held: tuple[int, int], reason: str) -> str | None:
    job_id, fencing_token = held
    status = release_job(job_id, fencing_token, reason)
    log.warning("job %s on device %s: %s; now %s", job_id, device, reason, status)
    return status


# --- local devices: the worker processes of a dispatcher, shown in the pool ---


def register_local_devices(dispatcher: str, names_and_types: list[tuple[str, str]]) -> None:
    now = timezone.now()
    for name, device_type in names_and_types:
        Device.objects.update_or_create(
            name=name,
            defaults={
                "device_type": device_type,
                "kind": Device.Kind.LOCAL,
                "url": "",
                "state": Device.State.READY,
                "dispatcher": dispatcher,
                "last_seen": now,
                "current_job": None,
                "fencing_token": None,
            },
        )


def touch_local_devices(names: list[str]) -> None:
    Device.objects.filter(name__in=names, kind=Device.Kind.LOCAL).update(last_seen=timezone.now())


def unregister_local_devices(names: list[str]) -> None:
    Device.objects.filter(name__in=names, kind=Device.Kind.LOCAL).delete()


def local_device_is_stale(device: Device) -> bool:
    """A local device whose dispatcher stopped heartbeating (killed) is shown offline."""
    if device.last_seen is None:
        return True
    return timezone.now() - device.last_seen > timedelta(seconds=3 * settings.ZYPHER_LEASE_SECONDS)


# --- dispatching to remote and simulated devices ---


def claimed_job_from_row(job: Job, fencing_token: int) -> ClaimedJob:
    """The queue's claim for a job row, so that a remote report settles through finish_job."""
    return ClaimedJob(
        id=job.pk,
        public_id=str(job.public_id),
        owner_id=job.owner_id,
        owner=job.owner.username,
        kind=job.kind,
        input=job.input,
        device_type=job.device_type,
        pool_id=pool_id_for(job.device_type),
        fencing_token=fencing_token,
        charged_cost=job.charged_cost,
        charged_weight=job.charged_weight,
    )


def idle_devices() -> list[Device]:
    """Remote and simulated devices that are ready and hold no job."""
    return list(
        Device.objects.filter(state=Device.State.READY, current_job__isnull=True)
        .exclude(kind=Device.Kind.LOCAL)
        .order_by("device_type", "name")
    )


def claim_for_device(name: str) -> tuple[Device, ClaimedJob] | None:
    """Claim the next fitting job for an idle device and mark it busy, in one transaction.

    The device row is locked first, so two dispatchers never hand it two jobs.
    """
    with transaction.atomic():
        device = (
            Device.objects.select_for_update(no_key=True)
            .filter(name=name, state=Device.State.READY, current_job__isnull=True)
            .exclude(kind=Device.Kind.LOCAL)
            .first()
        )
        if device is None:
            return None
        claim = claim_next(device.device_type, device.name, device.size)
        if claim is None:
            return None
        device.state = Device.State.BUSY
        device.current_job_id = claim.id
        device.fencing_token = claim.fencing_token
        device.save(update_fields=["state", "current_job", "fencing_token"])
    return device, claim


def give_back(
    device_name: str, claim: ClaimedJob, reason: str, next_state: str = Device.State.READY
) -> str | None:
    """A job the device did not take or did not finish here: requeue it and set the
    device's state (if it still holds that claim)."""
    return release_on_device(device_name, claim.id, claim.fencing_token, reason, next_state)


def release_on_device(
    device_name: str, job_id: int, fencing_token: int, reason: str, next_state: str
) -> str | None:
    """Give a device's job back to the queue (requeued, or failed after too many
    attempts) and free the device if it still holds that claim. The device row is
    locked first: the lock order is device, pool, account, job (`jobs.queue`)."""
    with transaction.atomic():
        _lock_device(device_name)
        status = release_job(job_id, fencing_token, reason)
        free_device(device_name, job_id, fencing_token, next_state)
    return status


def _lock_device(name: str) -> Device | None:
    """Take the device's row lock before the queue's locks (pool, account, job), on every
    path: freeing a device only after settling its job would take it last, and deadlock
    against mark_offline and remove_device, which lock the device and then release."""
    return Device.objects.select_for_update(no_key=True).filter(name=name).first()


def settle_on_device(
    device_name: str,
    claim: ClaimedJob,
    *,
    succeeded: bool,
    duration: float,
    result: Any = None,
    error: str = "",
    next_state: str = Device.State.READY,
) -> bool:
    """Record a job's outcome and free its device; False if the claim was fenced off."""
    with transaction.atomic():
        _lock_device(device_name)  # the device before the queue's rows (the lock order)
        accepted = finish_job(
            claim, succeeded=succeeded, duration=duration, result=result, error=error
        )
        free_device(device_name, claim.id, claim.fencing_token, next_state)
    return accepted


def free_device(device_name: str, job_id: int, fencing_token: int, next_state: str) -> None:
    Device.objects.filter(
        name=device_name, current_job_id=job_id, fencing_token=fencing_token
    ).update(current_job=None, fencing_token=None, state=next_state)


def mark_offline(name: str, reason: str) -> str | None:
    """A device that stopped answering: offline, and its job back to the queue."""
    with transaction.atomic():
        device = _lock_device(name)
        if device is None:
            return None
        status = None
        if (held := held_claim(device)) is not None:
            status = _release(device, held, f"device {name} went offline: {reason}")
        device.state = Device.State.OFFLINE
        device.current_job = None
        device.fencing_token = None
        device.save(update_fields=["state", "current_job", "fencing_token"])
    log.warning("device %s offline: %s", name, reason)
    return status


def record_missed_ping(name: str) -> int:
    with transaction.atomic():
        device = _lock_device(name)
        if device is None:
            return 0
        device.missed_pings += 1
        device.save(update_fields=["missed_pings"])
        return device.missed_pings


def devices_to_check() -> list[Device]:
    return list(Device.objects.exclude(kind=Device.Kind.LOCAL).order_by("name"))


def _job_held(held: tuple[int, int]) -> bool:
    """Is the job still running under this claim (its attempt is the fencing token)?"""
    job_id, fencing_token = held
    return Job.objects.filter(pk=job_id, status=JobStatus.RUNNING, attempts=fencing_token).exists()


def reconcile_simulated(device: Device, running_here: set[str]) -> bool:
    """Free a simulated device whose job is no longer running under its claim (its
    dispatcher died and the lease ran out). True if it was freed."""
    held = held_claim(device)
    if held is None or device.name in running_here or _job_held(held):
        return False
    free_device(device.name, *held, Device.State.READY)
    return True


def after_health_check(name: str, agent_state: str, status: dict[str, Any]) -> bool:
    """An agent answered `status`: record it, renew its job's lease while the agent runs
    that job, or for ZYPHER_DEVICE_UNREPORTED_SECONDS after it finished while its report
    is undelivered (then requeue it), and free the device when its job ended elsewhere.
    True if the device became idle."""
    Device.objects.filter(name=name).update(last_seen=timezone.now(), missed_pings=0)
    device = Device.objects.filter(name=name).select_related("current_job__owner").first()
    if device is None:
        return False
    agent_job = status.get("job") if isinstance(status.get("job"), dict) else None
    # What the device is doing as far as dispatch goes: busy while its agent runs anything.
    effective = Device.State.BUSY if agent_job else agent_state
    held = held_claim(device)
    if held is None:
        if device.state != effective:
            Device.objects.filter(pk=device.pk, current_job__isnull=True).update(state=effective)
            return effective == Device.State.READY
        return False
    fencing_token = held[1]
    job = device.current_job
    runs_it = (
        job is not None
        and agent_job is not None
        and agent_job.get("job_id") == str(job.public_id)
        and agent_job.get("fencing_token") == fencing_token
    )
    unreported = status.get("unreported")
    holds_result = (
        job is not None
        and isinstance(unreported, list)
        and str(job.public_id) in unreported
        and not runs_it
    )
    if holds_result:
        assert job is not None
        waited = _unreported_seconds(status, job)
        bound = settings.ZYPHER_DEVICE_UNREPORTED_SECONDS
        if waited <= bound:
            renew_leases([claimed_job_from_row(job, fencing_token)])
            return False
        # The agent could not deliver the result in time: at least once, so run it again.
        reason = f"device {name} did not deliver the result within {bound:g}s of the job's end"
        next_state = agent_state if agent_state in _AGENT_STATES else Device.State.UNREADY
        released = release_on_device(name, job.pk, fencing_token, reason, next_state)
        log.warning("job %s on device %s: %s; now %s", job.public_id, name, reason, released)
        return next_state == Device.State.READY
    if runs_it:
        assert job is not None
        renew_leases([claimed_job_from_row(job, fencing_token)])
        return False
    if _job_held(held):
        return False  # not renewed: its lease runs out and it is requeued, then freed here
    next_state = Device.State.BUSY if agent_job else agent_state
    free_device(name, *held, next_state)
    return next_state == Device.State.READY


_AGENT_STATES = (Device.State.READY, Device.State.UNREADY)


def _unreported_seconds(status: dict[str, Any], job: Job) -> float:
    """How long ago the agent says `job` ended. An agent that does not say (older than
    issue 12), or says something that is not a number, is timed from the job's start."""
    seconds = status.get("unreported_seconds")
    value = seconds.get(str(job.public_id)) if isinstance(seconds, dict) else None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return max(float(value), 0.0)
    if job.started_at is None:
        return math.inf
    return (timezone.now() - job.started_at).total_seconds()


# --- reports from agents ---


class DatabaseNonceStore:
    """Report nonces in the database: shared by every web process."""

    def __init__(self, device_name: str, max_age: float) -> None:
        self.device_name = device_name
        self.max_age = max_age

    def remember(self, nonce: str, timestamp: float) -> bool:
        cutoff = timezone.now() - timedelta(seconds=2 * self.max_age)
        SeenNonce.objects.filter(seen_at__lt=cutoff).delete()
        try:
            with transaction.atomic():
                SeenNonce.objects.create(device_name=self.device_name, nonce=nonce)
        except IntegrityError:
            return False
        return True


@dataclass(frozen=True)
class ReportAnswer:
    status: int
    body: dict[str, Any]


def apply_report(device: Device, report: dict[str, Any]) -> ReportAnswer:
    """Act on a verified, schema-checked report from `device`'s agent."""
    Device.objects.filter(pk=device.pk).update(last_seen=timezone.now(), missed_pings=0)
    kind = report["report"]
    if kind == "state":
        Device.objects.filter(pk=device.pk, current_job__isnull=True).update(state=report["state"])
        wake_dispatchers(device.device_type)
        Device.objects.filter(pk=device.pk, current_job__isnull=False).exclude(
            state=Device.State.BUSY
        ).update(state=Device.State.BUSY)
        return ReportAnswer(200, {"ok": True})
    job = Job.objects.select_related("owner").filter(public_id=report["job_id"]).first()
    token = report["fencing_token"]
    if job is None or job.device != device.name:
        return ReportAnswer(409, {"ok": False, "error": "this device does not hold that job"})
    claim = claimed_job_from_row(job, token)
    if kind == "job_returned":
        reason = f"device {device.name}: {report['reason']}"
        status = release_on_device(device.name, job.pk, token, reason, Device.State.UNREADY)
        if status is None:
            return ReportAnswer(409, {"ok": False, "error": "claim no longer held (fenced off)"})
        return ReportAnswer(200, {"ok": True, "status": status})
    succeeded = bool(report["succeeded"])
    result = report.get("result") if succeeded else None
    # Said in the answer too, so that the agent's log shows why its job failed here.
    why_not_stored = (storable_result(result, protocol.MAX_RESULT_BYTES) or "") if succeeded else ""
    if why_not_stored:
        succeeded, result = False, None
    duration = report["duration"]
    if not math.isfinite(duration):
        # NaN or Infinity would poison the user's virtual time for good: time it here.
        started = job.started_at or timezone.now()
        duration = max((timezone.now() - started).total_seconds(), 0.0)
    record = partial(
        settle_on_device, device.name, claim, next_state=report.get("state", Device.State.READY)
    )
    accepted = settle_outcome(
        record,
        succeeded=succeeded,
        duration=duration,
        result=result,
        error=why_not_stored or report.get("error", ""),
    )
    if not accepted:
        log.warning(
            "late report for job %s from %s refused (token %s)", job.public_id, device, token
        )
        return ReportAnswer(
            409, {"ok": False, "error": "result refused: the claim was lost (stale fencing token)"}
        )
    wake_dispatchers(device.device_type)
    log.info("job %s settled by report from device %s", job.public_id, device)
    if why_not_stored:
        return ReportAnswer(200, {"ok": True, "status": JobStatus.FAILED, "error": why_not_stored})
    return ReportAnswer(200, {"ok": True})
