"""The host's NAT and port forward as an nftables table per run.

The table lives inside the cell's ``host`` namespace and is named after the
run, so the root namespace's firewall is never read or changed.
"""

from lab import topology


def table_name(run_id: str) -> str:
    return "vjlab_" + run_id.replace("-", "_")


def render_nft(run_id: str, nat: str) -> str:
    """The ruleset for the host: a port forward, and masquerade when NATing."""
    jail = topology.JAIL_SERVICE
    wan_if = topology.HOST_WAN_IF
    lines = [
        f"table ip {table_name(run_id)} {{",
        "  chain prerouting {",
        "    type nat hook prerouting priority dstnat; policy accept;",
        f'    iifname "{wan_if}" ip daddr {topology.HOST_WAN_ADDRESS} '
        f"tcp dport {topology.FORWARDED_PORT} dnat to {jail.address}:{jail.port}",
        "  }",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
    ]
    if nat == "nat":
        lines.append(
            f'    oifname "{wan_if}" ip saddr {topology.JAIL_NETWORK} masquerade'
        )
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"
