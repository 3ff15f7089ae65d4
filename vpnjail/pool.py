"""Host-to-jail link addresses picked from a pool, two per /30."""

import ipaddress

from vpnjail.drivers.base import LinkAddresses

DEFAULT_POOL = "100.127.0.0/16"  # RFC 6598 space, unlikely on real links


class PoolExhausted(RuntimeError):
    """No /30 of the link pool is free."""


def allocate(pool: str, taken: set[str]) -> LinkAddresses:
    """The first /30 of *pool* none of whose addresses is in *taken*."""
    for subnet in ipaddress.ip_network(pool).subnets(new_prefix=30):
        host, jail = list(subnet.hosts())
        if str(host) in taken or str(jail) in taken:
            continue
        return LinkAddresses(f"{host}/30", f"{jail}/30")
    raise PoolExhausted(f"link pool {pool} is exhausted; give a larger --link-pool")


def addresses(link: LinkAddresses) -> set[str]:
    return {
        str(ipaddress.ip_interface(link.host).ip),
        str(ipaddress.ip_interface(link.jail).ip),
    }
