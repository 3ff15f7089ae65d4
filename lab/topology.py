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


NODES = ("lan", "gw", "wan", "host", "jail")
ROUTERS = ("gw", "wan", "host")

LINKS = (
    Link("lan", "eth0", "203.0.113.10/25", "gw", "lan0", "203.0.113.1/25"),
    Link("gw", "wan0", "198.51.100.10/26", "wan", "gw0", "198.51.100.1/26"),
    Link("wan", "host0", "198.51.100.65/26", "host", "wan0", "198.51.100.66/26"),
    Link("host", "jail0", "192.0.2.1/30", "jail", "eth0", "192.0.2.2/30"),
)

ROUTES = (
    Route("lan", "default", "203.0.113.1"),
    Route("gw", "default", "198.51.100.1"),
    Route("host", "default", "198.51.100.65"),
    Route("jail", "default", "192.0.2.1"),
    # Without NAT the wan must know where the jail's network lives.
    Route("wan", "192.0.2.0/30", "198.51.100.66", nat="direct"),
)

GATEWAY_ADDRESS = "198.51.100.10"
HOST_WAN_IF = "wan0"
HOST_WAN_ADDRESS = "198.51.100.66"
JAIL_NETWORK = "192.0.2.0/30"
CAPTURE = ("wan", "gw0")

PROTECTED_SERVICE = Service("lan", "203.0.113.10", 8080)
JAIL_SERVICE = Service("jail", "192.0.2.2", 8022)
FORWARDED_PORT = 8022  # on the host's wan address, to the jail service


def routes_for(nat: str) -> list[Route]:
    return [route for route in ROUTES if route.nat in (None, nat)]
