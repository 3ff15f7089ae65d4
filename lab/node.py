"""Nodes: network stacks that answer one command API.

A node differs from another only in how a command is carried to it: the
local platform prefixes ``ip netns exec`` (or ``nsenter`` into a sandbox's
mount namespace); other platforms carry it over SSH into a VM or a jail.
Everything above this module calls :meth:`Node.run` and :meth:`Node.spawn`.
"""

import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field

from lab import command
from lab.runid import ENV_VAR

log = logging.getLogger(__name__)


@dataclass
class Process:
    """A long-running process the lab started, stopped at teardown."""

    where: str
    argv: list[str]
    popen: subprocess.Popen
    log_path: str

    @property
    def pid(self) -> int:
        return self.popen.pid

    def exited(self) -> int | None:
        return self.popen.poll()

    def stop(self, grace: float = 5.0) -> None:
        if self.popen.poll() is not None:
            return
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.popen.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.popen.poll() is None:
            log.debug("[%s] pid %s ignored SIGTERM, killing", self.where, self.pid)
            self._signal(signal.SIGKILL)
            self.popen.wait(timeout=5)

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass


@dataclass
class Node:
    """A role in a test world (gw, wan, host, jail, lan) and its stack."""

    role: str
    run_id: str
    processes: list[Process] = field(default_factory=list)

    def prefix(self) -> list[str]:
        raise NotImplementedError

    @property
    def label(self) -> str:
        return self.role

    def run(
        self,
        argv: list[str],
        check: bool = True,
        timeout: float = 60.0,
        input_text: str | None = None,
    ) -> command.Result:
        return command.run(
            self.prefix() + argv,
            where=self.label,
            check=check,
            timeout=timeout,
            input_text=input_text,
        )

    def check_output(self, argv: list[str], timeout: float = 60.0) -> str:
        return self.run(argv, timeout=timeout).stdout

    def spawn(
        self, argv: list[str], log_path: str, env: dict[str, str] | None = None
    ) -> Process:
        """Start a long-running process in this node, output to *log_path*."""
        full = self.prefix() + argv
        child_env = dict(os.environ, **(env or {}))
        child_env[ENV_VAR] = self.run_id
        log.debug("[%s] spawn %s > %s", self.label, " ".join(full), log_path)
        with open(log_path, "ab") as out:
            popen = subprocess.Popen(
                full,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=child_env,
                start_new_session=True,
            )
        process = Process(self.label, full, popen, log_path)
        self.processes.append(process)
        return process

    def stop_processes(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()


class LocalNode(Node):
    """Processes of the machine running the lab, outside any namespace:
    relays, SSH forwards, a private libvirtd; tagged with the run like any."""

    def prefix(self) -> list[str]:
        return []
