"""charon in a guest's stack, started, watched and read over SSH.

It is :class:`lab.strongswan.Charon` with the daemon elsewhere: the
configuration is written locally (it is evidence) and copied in, charon
runs detached in the guest with its pid kept in a file, its VICI socket is
forwarded to a local socket by the OpenSSH client so the lab talks VICI
exactly as on Linux, and its log is fetched back whenever it is read.

FreeBSD guests detach it with daemon(8); Linux guests have no daemon(8)
and use ``setsid -f`` with a shell that records its own pid and then execs
charon, so the recorded pid is charon's.
"""

import logging
import os

from lab import strongswan
from lab.node import LocalNode, Process
from lab.vm.ssh import SSHNode
from lab.wait import WaitTimeout, wait_until
from vpnjail import strongswan as shared_strongswan

log = logging.getLogger(__name__)

STACK_RUN = "/run"
CHARON_PID = "/var/run/charon.pid"
DAEMON_PID = f"{STACK_RUN}/daemon-charon.pid"
SYSTEMS = ("freebsd", "linux")


def start_argv(system: str = "freebsd") -> list[str]:
    """charon detached, its output kept in /run, its config from /run."""
    conf = f"STRONGSWAN_CONF={STACK_RUN}/strongswan.conf"
    charon = shared_strongswan.CHARON_PATHS[system]
    if system == "freebsd":
        return [
            "daemon", "-P", DAEMON_PID, "-o", f"{STACK_RUN}/charon.out",
            "env", conf, charon,
        ]  # fmt: skip
    script = (
        f"echo $$ > {DAEMON_PID}; exec env {conf} {charon} "
        f"> {STACK_RUN}/charon.out 2>&1 < /dev/null"
    )
    return ["setsid", "-f", "sh", "-c", script]


def alive_argv(system: str, pid_file: str) -> list[str]:
    """Succeeds while the process whose pid *pid_file* holds is alive."""
    if system == "freebsd":
        return ["pgrep", "-q", "-F", pid_file]
    return ["sh", "-c", f'kill -0 "$(cat {pid_file})" 2>/dev/null']


def signal_argv(system: str, signal: str, pid_file: str) -> list[str]:
    if system == "freebsd":
        return ["pkill", f"-{signal}", "-F", pid_file]
    return ["sh", "-c", f'kill -{signal} "$(cat {pid_file})" 2>/dev/null']


def vici_forward_argv(node: SSHNode, local: str, remote: str) -> list[str]:
    """``ssh -N -L local.sock:remote.sock``: a Unix socket forward over SSH."""
    login = node.prefix()
    return [
        *login[:-2],
        "-N",
        "-o", "ExitOnForwardFailure=yes",
        "-o", "StreamLocalBindUnlink=yes",
        "-L", f"{local}:{remote}",
        login[-2],
    ]  # fmt: skip


class GuestCharon(strongswan.Charon):
    """One charon in a guest (or a jail of it), driven from this machine."""

    def __init__(self, node: SSHNode, run_dir: str, run_id: str):
        super().__init__(node, run_dir)
        self.forward: Process | None = None
        self.system = node.system
        self._local = LocalNode(role=f"{node.role}-vici", run_id=run_id)

    def write_config(self, charon: dict) -> str:
        os.makedirs(self.run_dir, exist_ok=True)
        return super().write_config(charon)

    def start(self, system: str | None = None, timeout: float = 30.0) -> None:
        """Start charon; return when VICI answers here, or charon has died."""
        self.system = system or self.system
        self.node.run(["rm", "-f", *self._guest_files(), CHARON_PID], check=False)
        self.node.put(
            os.path.join(self.run_dir, "strongswan.conf"),
            f"{STACK_RUN}/strongswan.conf",
        )
        self.node.run(start_argv(self.system))
        try:
            wait_until(self._vici_or_dead, timeout, f"{self.node.label}: charon VICI")
        except WaitTimeout:
            log.debug("%s: charon did not open VICI in time", self.node.label)
            return
        if self.running():
            self._forward_vici(timeout)

    def _guest_files(self) -> list[str]:
        names = ("charon.vici", "charon.log", "charon.out", "daemon-charon.pid")
        return [f"{STACK_RUN}/{name}" for name in names]

    def _vici_or_dead(self) -> str | None:
        if self.node.run(["test", "-S", f"{STACK_RUN}/charon.vici"], check=False).ok:
            return None
        alive = self.node.run(alive_argv(self.system, DAEMON_PID), check=False).ok
        return "VICI socket not there yet" if alive else None

    def _forward_vici(self, timeout: float) -> None:
        remote = self.node.guest_path(f"{STACK_RUN}/charon.vici")
        if os.path.exists(self.vici_socket):
            os.remove(self.vici_socket)
        self.forward = self._local.spawn(
            vici_forward_argv(self.node, self.vici_socket, remote),
            log_path=os.path.join(self.run_dir, "vici-forward.log"),
        )
        wait_until(
            lambda: None if os.path.exists(self.vici_socket) else "no local socket",
            timeout,
            f"{self.node.label}: VICI forwarded to {self.vici_socket}",
        )

    def running(self) -> bool:
        return self.node.run(alive_argv(self.system, CHARON_PID), check=False).ok

    def read_log(self) -> str:
        for name in ("charon.log", "charon.out"):
            try:
                self.node.get(f"{STACK_RUN}/{name}", os.path.join(self.run_dir, name))
            except OSError as exc:
                log.debug("%s: %s not fetched: %s", self.node.label, name, exc)
        try:
            with open(self.log_path, errors="replace") as src:
                return src.read()
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.forward is not None:
            self.forward.stop()
        self.node.run(signal_argv(self.system, "TERM", DAEMON_PID), check=False)
        try:
            wait_until(
                lambda: "still running" if self.running() else None,
                15,
                f"{self.node.label}: charon stopped",
                interval=0.5,
            )
        except WaitTimeout:
            self.node.run(signal_argv(self.system, "KILL", CHARON_PID), check=False)
        self.read_log()
