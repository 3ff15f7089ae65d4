"""Two FortiGate-like gateways for testing a tunnel manager (vpnjail).

Both gateways run the responder of fixtures/responder.yaml, each with its
own name, the same protected network and the same virtual-IP pool behind
it, so a client reaching the wrong gateway, or two clients sharing one
stack, shows up as a wrong service name or a dead tunnel.
"""

import logging
from dataclasses import dataclass

from lab import responder, topology
from lab.cell import Daemon, start_daemon, start_service
from lab.platforms.base import Platform, World
from lab.schema import Responder

log = logging.getLogger(__name__)

LAN_OF = {"gw-a": "lan-a", "gw-b": "lan-b"}


@dataclass
class Gateways:
    world: World
    daemons: dict[str, Daemon]  # role -> responder
    names: dict[str, str]  # role -> name its LAN service answers with

    def stop(self) -> None:
        for daemon in self.daemons.values():
            if daemon.charon is not None:
                daemon.charon.stop()


def dialup_users(count: int, password: str) -> list[dict]:
    """Distinct XAuth users: a gateway leases virtual IPs per user."""
    return [{"name": f"user{n:02d}", "password": password} for n in range(1, count + 1)]


def start(platform: Platform, world: World, spec: Responder, backend: str) -> Gateways:
    daemons, names = {}, {}
    for role, address in topology.GATEWAY_ADDRESSES.items():
        names[role] = f"{spec.name}-{role}"
        service = topology.Service(LAN_OF[role], "203.0.113.10", 8080)
        start_service(platform, world, service, names[role])
        daemon = Daemon(
            "responder", world.stacks[role], responder.build(spec, address), backend
        )
        start_daemon(platform, daemon)
        if not daemon.started:
            raise RuntimeError(
                f"{role}: responder did not start; see {daemon.charon.log_path}"
            )
        daemons[role] = daemon
    return Gateways(world, daemons, names)


def restart(platform: Platform, gateways: Gateways, role: str) -> None:
    """Stop and start one gateway's charon, losing every SA it held."""
    daemon = gateways.daemons[role]
    daemon.charon.stop()
    start_daemon(platform, daemon)
    if not daemon.started:
        raise RuntimeError(f"{role}: responder did not restart")
