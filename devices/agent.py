"""The device agent behind `run_device`: a device that takes commands over HTTP.

States (the published diagram): `unready` at start; `start` → `ready`; `stop` →
`unready`; `terminate` ends the agent from either. Control commands (`start`, `stop`,
`terminate`, `status`) are taken in any state; data commands (`ping`, `calculate`,
`run`) only when ready. Long work (`calculate`, `run`) runs in a background task, so the
agent always answers new messages at once, `ping` and `terminate` included.

Both ways: the gateway sends signed commands to `POST /commands`; the agent sends signed
reports to `POST <gateway>/api/devices/<id>/reports/` (a job finished, a job given back,
its state changed), so a job of minutes never holds a request open. It registers on
start (getting its secret) and deregisters on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from devices import protocol
from devices.qpu.mock import measure

log = logging.getLogger("zypher.agent")

COMMAND_PATH = "/commands"
REGISTRATION_TOKEN_HEADER = "X-Zypher-Device-Token"


@dataclass
class AgentConfig:
    device_id: str
    device_type: str
    size: int
    host: str
    port: int
    gateway: str
    token: str
    url: str = ""
    qpu_seconds: float = 1.0
    max_age: float = protocol.DEFAULT_MAX_AGE_SECONDS
    report_retry_seconds: float = 60.0

    def __post_init__(self) -> None:
        self.url = self.url or f"http://{self.host}:{self.port}"
        self.gateway = self.gateway.rstrip("/")


@dataclass
class RunningJob:
    job_id: str
    fencing_token: int
    kind: str
    task: asyncio.Task[None] | None = None
    started: float = field(default_factory=time.monotonic)


class DeviceAgent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.state = "unready"
        self.secret = ""
        self.nonces = protocol.MemoryNonceStore(config.max_age)
        self.job: RunningJob | None = None
        self.calculations: set[asyncio.Task[None]] = set()
        self.unreported: dict[str, dict[str, Any]] = {}
        self.report_tasks: set[asyncio.Task[bool]] = set()
        self.terminated = asyncio.Event()
        self.session: aiohttp.ClientSession | None = None

    # --- commands ---

    def answer(self, status: int, **fields: Any) -> tuple[int, dict[str, Any]]:
        return status, {"ok": status == 200, "state": self.state, **fields}

    async def handle(self, command: protocol.Command) -> tuple[int, dict[str, Any]]:
        """Act on a verified, schema-checked command; (HTTP status, answer)."""
        name, args = command.name, command.args
        if name == "status":
            return self.answer(200, result=self.status())
        if name == "start":
            if self.state == "ready":
                return self.answer(200, result="already ready: nothing to do")
            await self.set_state("ready")
            return self.answer(200, result="started: accepting data commands")
        if name == "stop":
            if self.state == "unready":
                return self.answer(200, result="already unready: nothing to do")
            await self.set_state("unready")
            note = " (the running work is allowed to finish)" if self.busy() else ""
            return self.answer(200, result=f"stopped: refusing data commands{note}")
        if name == "terminate":
            asyncio.get_running_loop().call_soon(self.begin_termination)
            return 200, {"ok": True, "state": "terminated", "result": "terminating"}
        if self.state != "ready":
            return self.answer(409, error=f"{name!r} refused: the device is unready (send start)")
        if name == "ping":
            return self.answer(200, result=int(time.time()))
        if name == "calculate":
            task = asyncio.create_task(self.calculate(float(args["x"]), args["msg"]))
            self.calculations.add(task)
            task.add_done_callback(self.calculations.discard)
            return self.answer(200, result=f"calculating for {args['x']}s in the background")
        return self.start_run(args)

    def busy(self) -> bool:
        return self.job is not None or bool(self.calculations)

    def status(self) -> dict[str, Any]:
        job = self.job
        return {
            "id": self.config.device_id,
            "type": self.config.device_type,
            "size": self.config.size,
            "job": None
            if job is None
            else {
                "job_id": job.job_id,
                "fencing_token": job.fencing_token,
                "seconds": round(time.monotonic() - job.started, 3),
            },
            "unreported": sorted(self.unreported),
            "calculations": len(self.calculations),
        }

    async def set_state(self, state: str) -> None:
        """Change state and tell the gateway, waiting briefly for it: once the operator sees
        the answer, the pool shows the new state (a slow gateway gets it in the background)."""
        self.state = state
        log.info("state %s", state)
        task = self.send_report({"report": "state", "state": state})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), timeout=2)

    async def calculate(self, seconds: float, msg: str) -> None:
        await asyncio.sleep(seconds)
        print(msg, flush=True)

    def start_run(self, args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.job is not None:
            return self.answer(409, error=f"busy with job {self.job.job_id}")
        if args["kind"] == "qpu" and self.config.device_type != "qpu":
            return self.answer(409, error=f"this {self.config.device_type} device runs no qpu jobs")
        job = RunningJob(args["job_id"], args["fencing_token"], args["kind"])
        job.task = asyncio.create_task(self.run_job(job, args["input"]))
        self.job = job
        log.info("run job %s (attempt %s)", job.job_id, job.fencing_token)
        return self.answer(200, result={"job_id": job.job_id, "accepted": True})

    async def run_job(self, job: RunningJob, job_input: Any) -> None:
        started = time.monotonic()
        try:
            if job.kind == "qpu" or self.config.device_type == "qpu":
                await asyncio.sleep(self.config.qpu_seconds)
                result = measure(job_input, self.config.size)
            else:
                from jobs.handlers import resolve_handler

                result = await asyncio.to_thread(resolve_handler(job.kind), job_input)
            json.dumps(result)
            succeeded, error = True, ""
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the job's failure, reported; the agent carries on
            result, succeeded, error = None, False, f"{type(exc).__name__}: {exc}"
        report = {
            "report": "job_finished",
            "job_id": job.job_id,
            "fencing_token": job.fencing_token,
            "succeeded": succeeded,
            "result": result,
            "error": error,
            "duration": round(time.monotonic() - started, 6),
            "state": self.state,
        }
        self.unreported[job.job_id] = report
        self.job = None
        log.info("job %s %s", job.job_id, "succeeded" if succeeded else f"failed: {error}")
        self.send_report(report)

    # --- reports to the gateway ---

    def send_report(self, report: dict[str, Any]) -> asyncio.Task[bool]:
        task = asyncio.create_task(self.deliver(report))
        self.report_tasks.add(task)
        task.add_done_callback(self.report_tasks.discard)
        return task

    async def deliver(self, report: dict[str, Any], deadline: float | None = None) -> bool:
        """POST a signed report, retried with backoff until answered (or the deadline)."""
        deadline = deadline or time.monotonic() + self.config.report_retry_seconds
        path = f"/api/devices/{self.config.device_id}/reports/"
        body = protocol.encode(report)
        delay = 0.2
        while True:
            try:
                assert self.session is not None
                headers = protocol.sign(self.secret, "POST", path, body)
                async with self.session.post(
                    self.config.gateway + path, data=body, headers=headers, timeout=_timeout(5)
                ) as response:
                    answer = await response.text()
                    if response.status < 500:
                        if response.status >= 400:
                            log.warning("report %s refused: %s", report["report"], answer[:300])
                        self.unreported.pop(report.get("job_id", ""), None)
                        return response.status < 400
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("report %s not delivered (%s); retrying", report["report"], exc)
            if time.monotonic() + delay > deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    # --- registration and the life cycle ---

    async def register(self, deadline_seconds: float = 30.0) -> None:
        assert self.session is not None
        body = {
            "id": self.config.device_id,
            "type": self.config.device_type,
            "size": self.config.size,
            "url": self.config.url,
        }
        deadline = time.monotonic() + deadline_seconds
        while True:
            try:
                async with self.session.post(
                    self.config.gateway + "/api/devices/",
                    json=body,
                    headers={REGISTRATION_TOKEN_HEADER: self.config.token},
                    timeout=_timeout(10),
                ) as response:
                    answer = await response.json(content_type=None)
                    if response.status in (200, 201):
                        self.secret = answer["secret"]
                        log.info("registered with %s as %s", self.config.gateway, answer["id"])
                        return
                    raise SystemExit(f"registration refused ({response.status}): {answer}")
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                if time.monotonic() > deadline:
                    raise SystemExit(
                        f"could not register with {self.config.gateway}: {exc}"
                    ) from exc
                await asyncio.sleep(0.5)

    async def deregister(self) -> None:
        assert self.session is not None
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with self.session.delete(
                f"{self.config.gateway}/api/devices/{self.config.device_id}/",
                headers={REGISTRATION_TOKEN_HEADER: self.config.token},
                timeout=_timeout(5),
            ) as response:
                log.info("deregistered (%s)", response.status)

    def begin_termination(self) -> None:
        if not self.terminated.is_set():
            log.info("terminating")
            self.terminated.set()

    async def clean_up(self) -> None:
        """Stop at once: give the running job back, drop calculations, deregister."""
        job, self.job = self.job, None
        if job is not None and job.task is not None:
            job.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job.task
            returned = {
                "report": "job_returned",
                "job_id": job.job_id,
                "fencing_token": job.fencing_token,
                "reason": "device terminated while running it",
            }
            await self.deliver(returned, deadline=time.monotonic() + 3)
        for task in list(self.calculations):
            task.cancel()
        # Finished jobs whose report is still in flight get a last short chance.
        for report in list(self.unreported.values()):
            await self.deliver(report, deadline=time.monotonic() + 2)
        for task in list(self.report_tasks):
            task.cancel()
        await self.deregister()

    async def on_command(self, request: web.Request) -> web.Response:
        limit = protocol.MAX_COMMAND_BYTES
        if (request.content_length or 0) > limit:
            status, answer = self.answer(413, error=f"message is over the limit of {limit} bytes")
            return web.json_response(answer, status=status)
        try:
            body = await request.read()  # at most client_max_size, or 413
        except web.HTTPRequestEntityTooLarge:
            status, answer = self.answer(413, error=f"message is over the limit of {limit} bytes")
            return web.json_response(answer, status=status)
        try:
            message = protocol.verify(
                self.secret,
                request.method,
                request.path,
                body,
                request.headers,
                self.nonces,
                max_age=self.config.max_age,
                max_bytes=protocol.MAX_COMMAND_BYTES,
            )
            command = protocol.parse_command(message)
        except protocol.ProtocolError as error:
            log.warning("refused a message: %s", error.message)
            status, answer = self.answer(error.status, error=error.message)
            return web.json_response(answer, status=status)
        status, answer = await self.handle(command)
        return web.json_response(answer, status=status)

    def application(self) -> web.Application:
        # The size limit is checked by `verify`; aiohttp's own limit sits just above it.
        app = web.Application(client_max_size=protocol.MAX_COMMAND_BYTES + 1024)
        app.router.add_post(COMMAND_PATH, self.on_command)
        return app

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.begin_termination)
        runner = web.AppRunner(self.application(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port)
        await site.start()
        self.session = aiohttp.ClientSession()
        try:
            await self.register()
            log.info(
                "device %s (%s, size %s) listening on %s; state unready",
                self.config.device_id,
                self.config.device_type,
                self.config.size,
                self.config.url,
            )
            await self.terminated.wait()
            await self.clean_up()
        finally:
            await self.session.close()
            await runner.cleanup()
        log.info("device %s exited", self.config.device_id)


def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=seconds)
