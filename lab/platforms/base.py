"""The platform boundary.

A platform builds the world of one cell (nodes ``lan``, ``gw``, ``wan``,
``host``, ``jail``, see :mod:`lab.topology`), gives the client and the
responder a sandboxed stack to run charon in, and tears it all down. The
cell runner (:mod:`lab.cell`) only talks to this interface, so the same
scenario, cell ids and outcomes serve Linux namespaces and FreeBSD jails.
"""

import sys
from dataclasses import dataclass, field

from lab.matrix import Cell
from lab.node import Node

REPO = __file__.rsplit("/lab/", 1)[0]


@dataclass
class Stack:
    """A node with a sandbox where charon runs: private /run, /dev, config."""

    node: Node
    run_dir: str
    device_policy: str


@dataclass
class World:
    cell: Cell | None
    nodes: dict[str, Node]
    client: Stack | None
    responder: Stack | None
    runtime_dir: str
    names: dict[str, str] = field(default_factory=dict)  # role -> OS name
    stacks: dict[str, Stack] = field(default_factory=dict)  # role -> sandbox

    def node(self, role: str) -> Node:
        return self.nodes[role]


class Platform:
    name: str
    system: str  # "linux" or "freebsd": selects charon paths and plugins

    def capabilities(self, run_id: str) -> dict[str, dict]:
        raise NotImplementedError

    def build(
        self, cell: Cell, run_id: str, runtime_dir: str, label: str | None = None
    ) -> World:
        """Build *cell*'s world; *label* (default: the cell's slug) names it."""
        raise NotImplementedError

    def build_gateways(self, run_id: str, runtime_dir: str, label: str) -> World:
        """Two responders (gw-a, gw-b) and a bare host, for a tunnel manager."""
        raise NotImplementedError

    def teardown(self, world: World) -> list[str]:
        """Remove everything *world* created; return problems, never raise."""
        raise NotImplementedError

    def stop_processes(self, world: World) -> list[str]:
        """Stop every node's processes; a failure never stops the rest."""
        problems = []
        for node in world.nodes.values():
            try:
                node.stop_processes()
            except Exception as exc:
                problems.append(f"{node.label}: stopping processes: {exc}")
        return problems

    def responder_backend(self, capabilities: dict[str, bool]) -> str:
        raise NotImplementedError

    def kernel_state(self, stack: Stack) -> dict[str, str]:
        """Text evidence of the client stack's kernel: SAs, policies, routes."""
        raise NotImplementedError

    def responder_kernel_state(self, stack: Stack) -> dict[str, str]:
        """The same for the responder, where its kernel holds the SAs."""
        return {}

    # What the cell runner asks of a platform for one stack or node. A node
    # of this machine runs Linux commands with this interpreter; a guest
    # node (over SSH, a VM or a jail in one) runs its own system's commands
    # with the guest's python3 and the modules the lab copied in.

    def charon(self, stack: Stack):
        from lab.vm.ssh import SSHNode

        if isinstance(stack.node, SSHNode):
            from lab.vm.guest_charon import GuestCharon

            return GuestCharon(stack.node, stack.run_dir, stack.node.run_id)
        from lab.strongswan import Charon

        return Charon(stack.node, stack.run_dir)

    def system_of(self, stack: Stack) -> str:
        return getattr(stack.node, "system", "linux")

    def python_argv(self, node: Node, module: str, *args: str) -> list[str]:
        if _in_guest(node):
            from lab.vm.freebsd_provision import GUEST_PY

            return ["env", f"PYTHONPATH={GUEST_PY}", "python3", "-m", module, *args]
        return ["env", f"PYTHONPATH={REPO}", sys.executable, "-m", module, *args]

    def listening_argv(self, node: Node, port: int) -> list[str]:
        if getattr(node, "system", "linux") == "freebsd":
            return ["sockstat", "-4", "-l", "-q", "-P", "tcp", "-p", str(port)]
        return ["ss", "-Hltn", f"sport = :{port}"]

    def ping_argv(self, node: Node, address: str) -> list[str]:
        if getattr(node, "system", "linux") == "freebsd":
            # FreeBSD's -W is in milliseconds.
            return ["ping", "-c", "2", "-i", "0.2", "-W", "2000", address]
        return ["ping", "-c", "2", "-i", "0.2", "-W", "2", address]

    def close(self) -> None:
        """Release what the platform keeps across cells (a shared guest)."""


def _in_guest(node: Node) -> bool:
    from lab.vm.ssh import SSHNode

    return isinstance(node, SSHNode)
