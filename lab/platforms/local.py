"""The local platform: every node is a Linux network namespace.

``jail`` (or ``host``, for cells whose client runs in the host stack) gets a
sandbox: a mount namespace with a private /run, a private strongSwan
configuration and a /dev holding only what the cell's device policy allows,
the Linux counterparts of a vnet jail's own root and devfs ruleset.
"""

import hashlib
import logging
import os
import shutil

from lab import capabilities, command, firewall, netns, runid, sandbox, topology
from lab.matrix import Cell
from lab.netns import NetnsNode
from lab.platforms.base import Platform, Stack, World

log = logging.getLogger(__name__)


class LocalPlatform(Platform):
    name = "local"
    system = "linux"

    def capabilities(self, run_id: str) -> dict[str, dict]:
        return capabilities.probe(f"{runid.namespace_prefix(run_id)}probe")

    def responder_backend(self, capabilities: dict[str, bool]) -> str:
        # The responder must run where IPsec is known to work here.
        return "netlink" if capabilities.get("esp") else "libipsec"

    def build(
        self, cell: Cell, run_id: str, runtime_dir: str, label: str | None = None
    ) -> World:
        world = self._world(topology.CELL, run_id, runtime_dir, label or cell.slug)
        world.cell = cell
        try:
            self._build_network(world, topology.CELL, cell["nat"])
            world.node("host").run(
                ["nft", "-f", "-"], input_text=firewall.render_nft(run_id, cell["nat"])
            )
            world.responder = self._stack(world, "gw", "tun-visible")
            client_role = "jail" if cell["isolation"] == "jail" else "host"
            world.client = self._stack(world, client_role, cell["devices"])
        except Exception:
            self.teardown(world)
            raise
        return world

    def build_gateways(self, run_id: str, runtime_dir: str, label: str) -> World:
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

    def _build_network(self, world: World, topo, nat: str) -> None:
        names = world.names
        for role in topo.nodes:
            netns.create(names[role])
        for link in topo.links:
            netns.add_veth(names[link.a], link.a_if, names[link.b], link.b_if)
            netns.add_address(names[link.a], link.a_if, link.a_cidr)
            netns.add_address(names[link.b], link.b_if, link.b_cidr)
        for route in topology.routes_for(nat, topo):
            netns.add_route(names[route.node], route.to, route.via)
        for role in topo.routers:
            netns.enable_forwarding(names[role])

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
        for name in world.names.values():
            leftovers = netns.kill_members(name)
            if leftovers:
                problems.append(f"{name}: killed leftover pids {leftovers}")
            result = command.run(["ip", "netns", "delete", name], check=False)
            if not result.ok and "No such file" not in result.stderr:
                problems.append(f"{name}: {result.stderr.strip()}")
        shutil.rmtree(world.runtime_dir, ignore_errors=True)
        return problems

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
