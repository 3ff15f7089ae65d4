"""The local platform: every node is a Linux network namespace.

``jail`` (or ``host``, for cells whose client runs in the host stack) gets a
sandbox: a mount namespace with a private /run, a private strongSwan
configuration and a /dev holding only what the cell's device policy allows,
the Linux counterparts of a vnet jail's own root and devfs ruleset.

With ``responder="vm"`` the responder side (``lan`` and ``gw``) is a Debian
guest instead (:mod:`lab.vm.responder_guest`): one per platform instance,
booted at the first cell, its wan NIC relayed into each cell's ``wan``
namespace, so the responder uses a kernel with ESP even where this
machine's kernel has none.
"""

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass

from lab import capabilities, command, firewall, netns, runid, sandbox, topology
from lab.matrix import Cell
from lab.netns import NetnsNode
from lab.node import Process
from lab.platforms import RESPONDERS
from lab.platforms.base import Platform, Stack, World
from lab.vm import relay, responder_guest
from lab.vm.hypervisor import select as hypervisor_select

log = logging.getLogger(__name__)

VM_ROLES = ("lan", "gw")


@dataclass
class RelayedWorld(World):
    """A world whose ``lan`` and ``gw`` are the responder VM's."""

    relay: Process | None = None


class LocalPlatform(Platform):
    name = "local"
    system = "linux"

    def __init__(self, responder: str = "namespaces", hypervisor: str | None = None):
        if responder not in RESPONDERS:
            raise ValueError(
                f"responder {responder!r}: allowed {', '.join(RESPONDERS)}"
            )
        self.responder = responder
        self.hypervisor = hypervisor
        self._guest: responder_guest.ResponderGuest | None = None
        self._boot_failure: str | None = None
        if responder == "vm":
            hypervisor_select(hypervisor)  # a wrong value fails here, once

    def capabilities(self, run_id: str) -> dict[str, dict]:
        return capabilities.probe(f"{runid.namespace_prefix(run_id)}probe")

    def responder_backend(self, capabilities: dict[str, bool]) -> str:
        # The responder must run where IPsec is known to work.
        if self.responder == "vm":
            return responder_guest.BACKENDS["linux"]
        return "netlink" if capabilities.get("esp") else "libipsec"

    def build(
        self, cell: Cell, run_id: str, runtime_dir: str, label: str | None = None
    ) -> World:
        label = label or cell.slug
        if self.responder == "vm":
            world = self._relayed_world(cell, run_id, runtime_dir, label)
        else:
            world = self._world(topology.CELL, run_id, runtime_dir, label)
            world.cell = cell
        skip = VM_ROLES if self.responder == "vm" else ()
        try:
            self._build_network(world, topology.CELL, cell["nat"], skip=skip)
            world.node("host").run(
                ["nft", "-f", "-"], input_text=firewall.render_nft(run_id, cell["nat"])
            )
            world.responder = self._responder_stack(world)
            client_role = "jail" if cell["isolation"] == "jail" else "host"
            world.client = self._stack(world, client_role, cell["devices"])
        except Exception:
            self.teardown(world)
            raise
        return world

    def _relayed_world(self, cell, run_id, runtime_dir, label) -> RelayedWorld:
        """The cell's world with ``lan`` and ``gw`` the responder VM's node."""
        guest = self._responder_guest(run_id)
        guest.reset(cell["nat"])
        base = self._world(topology.CELL, run_id, runtime_dir, label)
        names = {r: n for r, n in base.names.items() if r not in VM_ROLES}
        nodes = {r: n for r, n in base.nodes.items() if r not in VM_ROLES}
        nodes.update({role: guest.node for role in VM_ROLES})
        world = RelayedWorld(cell, nodes, None, None, base.runtime_dir, names)
        os.makedirs(world.runtime_dir, exist_ok=True)
        return world

    def _responder_stack(self, world: World) -> Stack:
        if self.responder != "vm":
            return self._stack(world, "gw", "tun-visible")
        node = world.node("gw")
        stack = Stack(node, os.path.join(world.runtime_dir, "gw"), "tun-visible")
        world.stacks["gw"] = stack
        return stack

    def _responder_guest(self, run_id: str) -> responder_guest.ResponderGuest:
        # A guest that did not boot once will not for the next cell either:
        # under TCG each attempt would cost minutes before failing.
        if self._boot_failure is not None:
            raise RuntimeError(f"the responder VM failed to boot: {self._boot_failure}")
        if self._guest is None:
            purpose = f"{os.getpid()}"
            try:
                self._guest = responder_guest.boot_debian(
                    run_id, purpose, self.hypervisor
                )
            except Exception as exc:
                self._boot_failure = str(exc).splitlines()[0]
                raise
        return self._guest

    def close(self) -> None:
        if self._guest is not None:
            guest, self._guest = self._guest, None
            guest.stop()

    def build_gateways(self, run_id: str, runtime_dir: str, label: str) -> World:
        if self.responder == "vm":
            raise NotImplementedError(
                "two gateways need two responders; the responder VM is one: "
                "run vpnjail's gateway scenarios with --responder namespaces"
            )
        world = self._world(topology.GATEWAYS, run_id, runtime_dir, label)
        try:
            self._build_network(world, topology.GATEWAYS, "direct")
            for role in topology.GATEWAY_ADDRESSES:
                self._stack(world, role, "tun-visible")
        except Exception:
            self.teardown(world)
            raise
        return world

    def _world(self, topo, run_id: str, runtime_dir: str, label: str) -> World:
        short = hashlib.sha1(label.encode()).hexdigest()[:8]
        names = {
            role: f"{runid.namespace_prefix(run_id)}{label}-{role}"
            for role in topo.nodes
        }
        nodes = {
            role: NetnsNode(role=role, run_id=run_id, netns=names[role])
            for role in topo.nodes
        }
        return World(None, nodes, None, None, os.path.join(runtime_dir, short), names)

    def _build_network(self, world: World, topo, nat: str, skip=()) -> None:
        """Namespaces, links, routes; roles in *skip* live in the responder VM,
        and a link to one of them is its relay's tap."""
        names = world.names
        for role in topo.nodes:
            if role not in skip:
                netns.create(names[role])
        for link in topo.links:
            if link.a in skip and link.b in skip:
                continue
            if link.a in skip:
                self._relay_link(world, names[link.b], link.b_if)
            else:
                netns.add_veth(names[link.a], link.a_if, names[link.b], link.b_if)
                netns.add_address(names[link.a], link.a_if, link.a_cidr)
            netns.add_address(names[link.b], link.b_if, link.b_cidr)
        for route in topology.routes_for(nat, topo):
            if route.node not in skip:
                netns.add_route(names[route.node], route.to, route.via)
        for role in topo.routers:
            if role not in skip:
                netns.enable_forwarding(names[role])

    def _relay_link(self, world: RelayedWorld, netns_name: str, interface: str) -> None:
        world.relay = relay.start(
            runid.run_of_namespace(netns_name),
            netns_name,
            interface,
            self._guest.relay_ports,
            os.path.join(world.runtime_dir, "relay.log"),
            mac=responder_guest.TAP_MAC,
        )

    def _stack(self, world: World, role: str, policy: str) -> Stack:
        node = world.node(role)
        run_dir = os.path.join(world.runtime_dir, role)
        holder = sandbox.start(node, run_dir, policy)
        node.sandbox_pid = holder.pid
        stack = Stack(node, run_dir, policy)
        world.stacks[role] = stack
        return stack

    def teardown(self, world: World) -> list[str]:
        problems = self.stop_processes(world)
        if getattr(world, "relay", None) is not None:
            world.relay.stop()
        for name in world.names.values():
            leftovers = netns.kill_members(name)
            if leftovers:
                problems.append(f"{name}: killed leftover pids {leftovers}")
            result = command.run(["ip", "netns", "delete", name], check=False)
            if not result.ok and "No such file" not in result.stderr:
                problems.append(f"{name}: {result.stderr.strip()}")
        shutil.rmtree(world.runtime_dir, ignore_errors=True)
        return problems

    def responder_kernel_state(self, stack: Stack) -> dict[str, str]:
        # Only a responder VM's kernel carries ESP; libipsec keeps SAs in charon.
        return self.kernel_state(stack) if self.responder == "vm" else {}

    def kernel_state(self, stack: Stack) -> dict[str, str]:
        node = stack.node
        commands = {
            "xfrm-state.txt": ["ip", "xfrm", "state"],
            "xfrm-policy.txt": ["ip", "xfrm", "policy"],
            "routes.txt": ["ip", "route", "show", "table", "all"],
            "addresses.txt": ["ip", "address"],
        }
        state = {}
        for name, argv in commands.items():
            result = node.run(argv, check=False)
            state[name] = result.stdout + (result.stderr and f"\n{result.stderr}")
        return state
