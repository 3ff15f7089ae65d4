"""Linux network namespaces, veth links, addresses and routes.

Every call names its target namespace explicitly (``ip -n NS``), and veth
pairs are created with both ends already inside lab namespaces, so nothing
here ever adds, changes or removes anything in the root namespace.
"""

import logging
from dataclasses import dataclass, field

from lab import command
from lab.node import Node

log = logging.getLogger(__name__)


@dataclass
class NetnsNode(Node):
    """A node living in its own Linux network namespace."""

    netns: str = ""
    sandbox_pid: int | None = None
    extra: dict = field(default_factory=dict)

    def prefix(self) -> list[str]:
        if self.sandbox_pid is not None:
            # Enter the sandbox's mount namespace as well, so commands see its
            # private /run and /dev exactly as the daemon does.
            return ["nsenter", f"--target={self.sandbox_pid}", "--mount", "--net", "--"]
        return ["ip", "netns", "exec", self.netns]


def create(name: str) -> None:
    command.run(["ip", "netns", "add", name])
    command.run(["ip", "-n", name, "link", "set", "lo", "up"])


def delete(name: str) -> None:
    kill_members(name)
    command.run(["ip", "netns", "delete", name], check=False)


def kill_members(name: str) -> list[int]:
    """Kill every process still inside namespace *name*; return their pids."""
    result = command.run(["ip", "netns", "pids", name], check=False)
    pids = [int(p) for p in result.stdout.split() if p.isdigit()]
    if pids:
        command.run(["kill", "-KILL", *map(str, pids)], check=False)
    return pids


def list_all() -> list[str]:
    result = command.run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def add_veth(ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
    command.run(
        ["ip", "-n", ns_a, "link", "add", if_a, "type", "veth"]
        + ["peer", "name", if_b, "netns", ns_b]
    )
    command.run(["ip", "-n", ns_a, "link", "set", if_a, "up"])
    command.run(["ip", "-n", ns_b, "link", "set", if_b, "up"])


def add_address(ns: str, ifname: str, cidr: str) -> None:
    command.run(["ip", "-n", ns, "addr", "add", cidr, "dev", ifname])


def add_route(ns: str, destination: str, via: str) -> None:
    command.run(["ip", "-n", ns, "route", "add", destination, "via", via])


def enable_forwarding(ns: str) -> None:
    command.run(
        ["ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]
    )
