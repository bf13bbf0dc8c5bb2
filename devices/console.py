"""The operator's console for one device: read a command, send it, print the answer.

`python manage.py device_console qpu-1` runs `DeviceConsole.loop` on stdin and stdout.
Unknown commands and bad arguments get a usage line, never a traceback.
"""

from __future__ import annotations

import json
from typing import Any, TextIO

from devices.models import Device
from devices.views import run_device_command

USAGE = {
    "start": "start                 the device accepts data commands (state ready)",
    "stop": "stop                  the device refuses data commands (state unready)",
    "ping": "ping                  the device's clock (unix seconds); only when ready",
    "calculate": "calculate <x> <msg>   x seconds of work, then the device prints msg",
    "terminate": "terminate             the agent gives back its work, deregisters, exits",
    "status": "status                the device's state, job and the pool's view of it",
    "help": "help                  this list",
    "quit": "quit                  leave the console (the device keeps running)",
}


class DeviceConsole:
    def __init__(self, device_name: str, stdin: TextIO, stdout: TextIO) -> None:
        self.device_name = device_name
        self.stdin = stdin
        self.stdout = stdout

    def say(self, text: str) -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def loop(self) -> None:
        self.say(f"console for device {self.device_name}; type help for the commands")
        while True:
            self.stdout.write(f"{self.device_name}> ")
            self.stdout.flush()
            line = self.stdin.readline()
            if not line:
                self.say("")
                return
            if not self.handle_line(line):
                return

    def handle_line(self, line: str) -> bool:
        """Run one line; False to leave the console."""
        words = line.split()
        if not words:
            return True
        name, rest = words[0].lower(), words[1:]
        if name in ("quit", "exit"):
            return False
        if name == "help":
            for usage in USAGE.values():
                self.say(usage)
            return True
        if name not in USAGE:
            self.say(f"unknown command {words[0]!r}; commands: {', '.join(USAGE)}")
            return True
        args: dict[str, Any] = {}
        if name == "calculate":
            if len(rest) < 2:
                self.say(f"usage: {USAGE['calculate']}")
                return True
            try:
                seconds = float(rest[0])
            except ValueError:
                self.say(
                    f"x must be a number of seconds, not {rest[0]!r}; usage: {USAGE['calculate']}"
                )
                return True
            if not 0 <= seconds <= 3600:
                self.say(f"x must be from 0 to 3600 seconds; usage: {USAGE['calculate']}")
                return True
            args = {"x": seconds, "msg": " ".join(rest[1:])}
        elif rest:
            self.say(f"{name} takes no arguments; usage: {USAGE[name]}")
            return True
        self.send(name, args)
        return name != "terminate"

    def send(self, command: str, args: dict[str, Any]) -> None:
        device = Device.objects.filter(name=self.device_name).first()
        if device is None:
            self.say(f"device {self.device_name} is not registered (any more)")
            return
        code, answer = run_device_command(device, command, args)
        state = answer.get("state", device.state)
        if answer.get("ok"):
            result = answer.get("result")
            shown = result if isinstance(result, str) else json.dumps(result)
            self.say(f"ok [{state}] {shown}")
            if command == "status":
                device.refresh_from_db()
                self.say(f"pool: state {device.state}, job {device.current_job_id or '-'}")
        else:
            self.say(f"refused ({code}) [{state}] {answer.get('error')}")
