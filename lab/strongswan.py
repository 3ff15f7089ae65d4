"""strongSwan: rendering configuration and running charon in a stack.

Configuration is held as plain nested dicts. The same dict is sent to charon
over VICI and rendered as swanctl.conf text for evidence, so what was loaded
and what a person reads can never drift apart.
"""

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from lab.node import Node, Process
from lab.wait import WaitTimeout, wait_until
from vpnjail import strongswan as shared
from vpnjail import vici_control
from vpnjail.strongswan import render_sections, render_swanctl  # noqa: F401

log = logging.getLogger(__name__)


def charon_settings(system: str, backend: str, extra: Mapping | None = None) -> dict:
    """The ``charon`` section for a lab stack, whose /run is private."""
    return shared.charon_settings(system, backend, "/run", extra)


@dataclass
class Charon:
    """One charon daemon running in a node's sandbox."""

    node: Node
    run_dir: str
    process: Process | None = None

    @property
    def vici_socket(self) -> str:
        return os.path.join(self.run_dir, "charon.vici")

    @property
    def log_path(self) -> str:
        return os.path.join(self.run_dir, "charon.log")

    def write_config(self, charon: Mapping) -> str:
        path = os.path.join(self.run_dir, "strongswan.conf")
        with open(path, "w") as out:
            out.write(shared.render_strongswan_conf(charon))
        return path

    def start(self, system: str = "linux", timeout: float = 15.0) -> None:
        """Start charon; return when VICI answers, or when charon has died."""
        # A socket left by an earlier charon would look ready at once.
        for stale in (self.vici_socket, os.path.join(self.run_dir, "charon.pid")):
            if os.path.exists(stale):
                os.remove(stale)
        self.process = self.node.spawn(
            [shared.CHARON_PATHS[system]],
            log_path=os.path.join(self.run_dir, "charon.out"),
            env={"STRONGSWAN_CONF": "/run/strongswan.conf"},
        )
        try:
            wait_until(self._started, timeout, f"{self.node.label}: charon VICI")
        except WaitTimeout:
            log.debug("%s: charon did not open VICI in time", self.node.label)

    def _started(self) -> str | None:
        if self.process.exited() is not None:
            return None
        # The socket file appears before charon accepts on it.
        if os.path.exists(self.vici_socket) and vici_control.reachable(
            self.vici_socket
        ):
            return None
        return "VICI does not answer yet"

    def running(self) -> bool:
        return self.process is not None and self.process.exited() is None

    def read_log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as log_file:
                return log_file.read()
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
