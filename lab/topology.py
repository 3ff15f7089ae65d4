"""The world of one cell, independent of the platform that builds it.

::

    lan ---- gw ==== wan ==== host ---- jail
    .10      .1/.10  .1/.65   .66/.1    .2
    203.0.113.0/25   198.51.100.0/26 and .64/26   192.0.2.0/30

``gw`` is the FortiGate-like responder with its protected network (``lan``,
where a TCP service listens); ``wan`` routes between the gateway and the
host; ``host`` stands for the FreeBSD host: it NATs the jail's traffic and
forwards one wan-side TCP port into the jail; ``jail`` is the client's own
stack. All addresses are documentation addresses (RFC 5737).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Link:
    a: str
    a_if: str
    a_cidr: str
    b: str
    b_if: str
    b_cidr: str


@dataclass(frozen=True)
class Route:
    node: str
    to: str
    via: str
    nat: str | None = None  # only for this value of the nat axis


@dataclass(frozen=True)
class Service:
    node: str
    address: str
    port: int


@dataclass(frozen=True)
class Topology:
    """Nodes, links and routes of a world; routers forward."""

    nodes: tuple[str, ...]
    routers: tuple[str, ...]
    links: tuple[Link, ...]
    routes: tuple[Route, ...]


CELL = Topology(
    nodes=("lan", "gw", "wan", "host", "jail"),
    routers=("gw", "wan", "host"),
    links=(
        Link("lan", "eth0", "203.0.113.10/25", "gw", "lan0", "203.0.113.1/25"),
        Link("gw", "wan0", "198.51.100.10/26", "wan", "gw0", "198.51.100.1/26"),
        Link("wan", "host0", "198.51.100.65/26", "host", "wan0", "198.51.100.66/26"),
        Link("host", "jail0", "192.0.2.1/30", "jail", "eth0", "192.0.2.2/30"),
    ),
    routes=(
        Route("lan", "default", "203.0.113.1"),
        Route("gw", "default", "198.51.100.1"),
        Route("host", "default", "198.51.100.65"),
        Route("jail", "default", "192.0.2.1"),
        # Without NAT the wan must know where the jail's network lives.
        Route("wan", "192.0.2.0/30", "198.51.100.66", nat="direct"),
    ),
)

# Two gateways with the same protected network and the same pool behind
# them, for tunnel managers that must keep each profile in its own stack.
# ``host`` is left bare: the tunnel manager under test builds on it.
GATEWAYS = Topology(
    nodes=("lan-a", "gw-a", "lan-b", "gw-b", "wan", "host"),
    routers=("gw-a", "gw-b", "wan", "host"),
    links=(
        Link("lan-a", "eth0", "203.0.113.10/25", "gw-a", "lan0", "203.0.113.1/25"),
        Link("gw-a", "wan0", "198.51.100.10/26", "wan", "gwa0", "198.51.100.1/26"),
        Link("lan-b", "eth0", "203.0.113.10/25", "gw-b", "lan0", "203.0.113.1/25"),
        Link("gw-b", "wan0", "198.51.100.130/26", "wan", "gwb0", "198.51.100.129/26"),
        Link("wan", "host0", "198.51.100.65/26", "host", "wan0", "198.51.100.66/26"),
    ),
    routes=(
        Route("lan-a", "default", "203.0.113.1"),
        Route("lan-b", "default", "203.0.113.1"),
        Route("gw-a", "default", "198.51.100.1"),
        Route("gw-b", "default", "198.51.100.129"),
        Route("host", "default", "198.51.100.65"),
    ),
)
GATEWAY_ADDRESSES = {"gw-a": "198.51.100.10", "gw-b": "198.51.100.130"}

NODES = CELL.nodes
ROUTERS = CELL.routers
LINKS = CELL.links
ROUTES = CELL.routes

GATEWAY_ADDRESS = "198.51.100.10"
HOST_WAN_IF = "wan0"
HOST_WAN_ADDRESS = "198.51.100.66"
JAIL_NETWORK = "192.0.2.0/30"
CAPTURE = ("wan", "gw0")

PROTECTED_SERVICE = Service("lan", "203.0.113.10", 8080)
JAIL_SERVICE = Service("jail", "192.0.2.2", 8022)
FORWARDED_PORT = 8022  # on the host's wan address, to the jail service


def routes_for(nat: str, topology: Topology = CELL) -> list[Route]:
    return [route for route in topology.routes if route.nat in (None, nat)]
