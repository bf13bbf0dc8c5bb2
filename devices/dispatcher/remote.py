"""The dispatcher's side of remote and simulated devices.

* Dispatch: for every ready, idle remote or simulated device, claim the next job that
  fits it (`claim_next(type, name, size)`, the same fair-share policy as local devices)
  and mark the device busy in the same transaction; then POST a signed `run` to its agent
  (or, for a simulated device, run the mock QPU here). The agent reports the result to
  the gateway's API, which settles the job (`devices.pool.apply_report`).
* Health: every ZYPHER_DEVICE_PING_SECONDS, a signed `status` to every remote device.
  While the agent says it runs (or has yet to report) the device's job, its lease is
  renewed; after ZYPHER_DEVICE_MISSED_PINGS unanswered checks in a row the device is
  marked offline and its job requeued (`release_job`: attempts + 1 at its next claim).
  A job the agent no longer has is not renewed, so its lease runs out and it is requeued.
  Answers are believed only when signed with the device's secret (`protocol.verify_answer`):
  an unsigned or badly signed one counts as no answer, logged (issue 17).
* Progress: an agent's `status` answer carries its job's latest progress, and a simulated
  device's handler reports here; both go to the dispatcher's `ProgressBuffer`, written
  coalesced (`jobs.progress`).

Several dispatchers may run: the device row is locked while a job is claimed for it, and
every settle or release carries the claim's fencing token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import aiohttp
from django.conf import settings

from devices import pool, protocol
from devices.commands import COMMAND_PATH
from devices.dispatcher.worker import JobOrder, JobOutcome, log_job_start, run_order
from devices.models import Device
from devices.qpu.mock import QpuInputError, run_mock_qpu
from jobs.progress import ProgressBuffer, ProgressReporter, normalised, reporting
from jobs.queue import ClaimedJob, renew_leases
from jobs.results import settle_outcome

log = logging.getLogger("zypher.dispatcher")

# Runs a function in the dispatcher's database thread (retrying while the database is away).
DatabaseRunner = Callable[..., Awaitable[Any]]


class RemoteDevices:
    """Given what it needs from the dispatcher, not the dispatcher: its database runner,
    its stop event and the lease length."""

    def __init__(
        self,
        db: DatabaseRunner,
        stop_requested: asyncio.Event,
        lease_seconds: float,
        progress: ProgressBuffer | None = None,
    ) -> None:
        self.db = db
        self.progress = progress or ProgressBuffer()
        self.stop_requested = stop_requested
        self.lease_seconds = lease_seconds
        self.wake = asyncio.Event()
        self.session: aiohttp.ClientSession | None = None
        # Simulated devices whose job runs in this dispatcher: name → (claim, task).
        self.simulated: dict[str, tuple[ClaimedJob, asyncio.Task[None]]] = {}
        self.sending: set[asyncio.Task[None]] = set()

    # --- the loops, each run (and restarted) by the dispatcher's supervisor ---

    def start(self) -> None:
        self.session = aiohttp.ClientSession()

    def tasks(self) -> dict[str, Callable[[], Awaitable[None]]]:
        return {
            "remote-dispatch": self.dispatch_loop,
            "health-checks": self.health_loop,
            "simulated-leases": self.keep_simulated_leases,
        }

    async def dispatch_loop(self) -> None:
        while True:
            if not self.stop_requested.is_set():
                try:
                    await self.dispatch_to_idle_devices()
                except Exception:  # a bad row must not end the loop
                    log.exception("dispatch to remote devices failed")
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that races with the wake-up, and the loop would never end.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.ZYPHER_IDLE_POLL_SECONDS):
                    await self.wake.wait()
            self.wake.clear()

    async def dispatch_to_idle_devices(self) -> None:
        # A (type, size) that found nothing: devices of that type no bigger find nothing either.
        nothing_fits: dict[str, int] = {}
        for device in await self.db(pool.idle_devices):
            if nothing_fits.get(device.device_type, -1) >= device.size:
                continue
            claimed = await self.db(pool.claim_for_device, device.name)
            if claimed is None:
                nothing_fits[device.device_type] = device.size
                continue
            device, claim = claimed
            log_job_start(log, claim, device.name)
            if device.kind == Device.Kind.SIMULATED:
                task = asyncio.create_task(self.run_simulated(device, claim))
                self.simulated[device.name] = (claim, task)
            else:
                task = asyncio.create_task(self.send_run(device, claim))
                self.sending.add(task)
                task.add_done_callback(self.sending.discard)

    async def post_command(
        self, device: Device, command: str, args: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        """A signed command to an agent; (status, its signed answer). Raises on no answer,
        and ProtocolError on an answer not signed with the device's secret."""
        assert self.session is not None
        body = protocol.encode({"command": command, "args": args})
        headers = protocol.sign(device.secret, "POST", COMMAND_PATH, body)
        timeout = aiohttp.ClientTimeout(total=settings.ZYPHER_DEVICE_TIMEOUT_SECONDS)
        async with self.session.post(
            device.url.rstrip("/") + COMMAND_PATH, data=body, headers=headers, timeout=timeout
        ) as response:
            raw = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                raw += chunk
                if len(raw) > protocol.MAX_ANSWER_BYTES:
                    break  # refused by verify_answer for its size
            answer = protocol.verify_answer(
                device.secret,
                headers[protocol.NONCE_HEADER],
                response.status,
                bytes(raw),
                response.headers,
                max_age=settings.ZYPHER_SIGNATURE_MAX_AGE_SECONDS,
            )
            return response.status, answer

    async def send_run(self, device: Device, claim: ClaimedJob) -> None:
        try:
            await self._send_run(device, claim)
        except asyncio.CancelledError:
            raise
        except Exception:  # its lease runs out and the reaper requeues it
            log.exception("job %s: sending it to device %s failed", claim.public_id, device.name)

    async def _send_run(self, device: Device, claim: ClaimedJob) -> None:
        args = {
            "job_id": claim.public_id,
            "fencing_token": claim.fencing_token,
            "kind": claim.kind,
            "input": claim.input,
            "size": device.size,
        }
        try:
            status, answer = await self.post_command(device, "run", args)
        except (aiohttp.ClientError, TimeoutError, protocol.ProtocolError) as exc:
            # A forged answer is no answer: whoever sent it may not hold the job.
            reason = f"device {device.name} did not take the job: {exc or type(exc).__name__}"
            job_status = await self.db(
                pool.give_back, device.name, claim, reason, Device.State.OFFLINE
            )
            log.warning("job %s: %s; now %s", claim.public_id, reason, job_status)
            return
        if status != 200:
            reason = f"device {device.name} refused the job: {answer.get('error', status)}"
            next_state = answer.get("state") if answer.get("state") == "unready" else "busy"
            job_status = await self.db(pool.give_back, device.name, claim, reason, next_state)
            log.warning("job %s: %s; now %s", claim.public_id, reason, job_status)

    async def run_simulated(self, device: Device, claim: ClaimedJob) -> None:
        """A simulated device: the mock QPU (or the job's handler) runs here and the outcome
        is settled like a local worker's (`jobs.results.settle_outcome`)."""
        try:
            outcome = await self._simulate(device, claim)
            self.simulated.pop(device.name, None)
            accepted = await self.db(
                partial(
                    settle_outcome,
                    partial(pool.settle_on_device, device.name, claim),
                    succeeded=outcome.succeeded,
                    duration=outcome.duration,
                    result=outcome.result,
                    error=outcome.error,
                )
            )
        except asyncio.CancelledError:
            raise
        except Exception:  # not settled: its lease runs out and the reaper requeues it
            self.simulated.pop(device.name, None)
            log.exception("job %s on simulated %s not settled", claim.public_id, device.name)
            return
        log.info(
            "end job %s device=%s duration=%.3fs %s",
            claim.public_id,
            device.name,
            outcome.duration,
            ("succeeded" if outcome.succeeded else f"failed ({outcome.error[:200]})")
            if accepted
            else "result refused: claim lost",
        )
        self.wake.set()

    async def _simulate(self, device: Device, claim: ClaimedJob) -> JobOutcome:
        key = (claim.public_id, claim.fencing_token, device.name)
        reporter = ProgressReporter()
        self.progress.watch(key, reporter)
        try:
            return await self._simulate_reporting(device, claim, reporter)
        finally:
            self.progress.unwatch(key)

    async def _simulate_reporting(
        self, device: Device, claim: ClaimedJob, reporter: ProgressReporter
    ) -> JobOutcome:
        order = JobOrder(claim.id, claim.fencing_token, claim.kind, claim.input)
        if not (claim.kind == "qpu" or device.device_type == "qpu"):
            return await asyncio.to_thread(run_order, order, reporter)
        started = time.monotonic()
        try:
            with reporting(reporter):
                result = await run_mock_qpu(claim.input, device.size, settings.ZYPHER_QPU_SECONDS)
            succeeded, error = True, ""
        except (QpuInputError, Exception) as exc:
            result, succeeded, error = None, False, f"{type(exc).__name__}: {exc}"
        duration = time.monotonic() - started
        return JobOutcome(claim.id, claim.fencing_token, succeeded, result, error, duration)

    async def keep_simulated_leases(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            if not self.simulated:
                continue
            running = dict(self.simulated)
            held = await self.db(renew_leases, [claim for claim, _ in running.values()])
            for name, (claim, task) in running.items():
                if claim.id not in held:
                    log.warning(
                        "job %s no longer held; stopping simulated %s", claim.public_id, name
                    )
                    task.cancel()
                    self.simulated.pop(name, None)
                    await self.db(pool.free_device, name, claim.id, claim.fencing_token, "ready")

    async def health_loop(self) -> None:
        while True:
            try:
                devices = await self.db(pool.devices_to_check)
                await asyncio.gather(*(self.check(device) for device in devices))
            except Exception:
                log.exception("health checks failed")
            await asyncio.sleep(settings.ZYPHER_DEVICE_PING_SECONDS)

    async def check(self, device: Device) -> None:
        """One health check: renew the device's job lease, or count a missed ping."""
        if device.kind == Device.Kind.SIMULATED:
            await self.db(pool.reconcile_simulated, device, set(self.simulated))
            return
        try:
            status, answer = await self.post_command(device, "status", {})
        except (aiohttp.ClientError, TimeoutError, protocol.ProtocolError) as exc:
            if isinstance(exc, protocol.ProtocolError):
                # Not the agent that holds the secret: its answer must not renew leases.
                log.warning(
                    "device %s: health check answer %s; counted as unanswered",
                    device.name,
                    exc.message,
                )
            missed = await self.db(pool.record_missed_ping, device.name)
            if missed >= settings.ZYPHER_DEVICE_MISSED_PINGS and device.state != "offline":
                reason = f"{missed} health checks unanswered ({exc or type(exc).__name__})"
                await self.db(pool.mark_offline, device.name, reason)
                self.wake.set()
            return
        if status != 200 or not isinstance(answer.get("result"), dict):
            log.warning("device %s answered its health check with %s: %s", device, status, answer)
            return
        freed = await self.db(
            pool.after_health_check, device.name, answer["state"], answer["result"]
        )
        self.record_progress(device.name, answer["result"])
        if freed:
            self.wake.set()

    def record_progress(self, device_name: str, status: dict[str, Any]) -> None:
        """The progress of the job an agent says it runs (written only if it still holds it)."""
        job = status.get("job")
        if not isinstance(job, dict) or "progress" not in job:
            return
        job_id, fencing_token = job.get("job_id"), job.get("fencing_token")
        if not isinstance(job_id, str) or isinstance(fencing_token, bool):
            return
        if not isinstance(fencing_token, int):
            return
        progress = normalised(job["progress"], job.get("progress_message", ""))
        self.progress.record((job_id, fencing_token, device_name), progress)

    async def shut_down(self, db_before_exit: DatabaseRunner) -> None:
        """Stop: give back what simulated devices run here (remote agents keep running; their
        reports settle through the API), with `db_before_exit`, bounded by the deadline."""
        for name, (claim, task) in list(self.simulated.items()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            status = await db_before_exit(
                pool.give_back, name, claim, "dispatcher shut down before it finished", "ready"
            )
            log.info("job %s requeued at shutdown; now %s", claim.public_id, status)
        self.simulated.clear()
        for task in list(self.sending):
            task.cancel()
        if self.session is not None:
            await self.session.close()
