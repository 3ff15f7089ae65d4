"""A responder VM: a world's ``lan`` and ``gw`` in one guest.

::

    [ responder VM: lan0 (lan) -- gw ] ~~~~ wan ==== host ---- jail
      203.0.113.1 and .10/25   .10/26   |
                                       its wan NIC, relayed to a tap
                                       (or bridged, where there is no wan)

The responder runs where IPsec is known to work: a kernel with ESP. Here
that is a Debian guest the lab builds (kernel-netlink), on a FreeBSD host
a FreeBSD guest outside any jail (kernel-pfkey). The guest holds both the
gateway and its protected network: the protected addresses sit on a
dummy (Linux) or loopback (FreeBSD) interface, so traffic that leaves the
tunnel is delivered locally, as it would be to a host behind the gateway.
The same guest serves every cell of a run; :func:`cell_steps` wipes what
one cell left (SAs, policies, neighbours, services) before the next.

Where no ``wan`` router exists (a bhyve host has no network namespaces),
the guest also takes the wan router's address facing the client, so the
client's default route still ends at the same address.
"""

import contextlib
import logging
import os
from dataclasses import dataclass

from lab import runid, topology
from lab.vm import relay
from lab.vm.freebsd_provision import GUEST_PY
from lab.vm.spec import Nic
from lab.vm.ssh import SSHNode

log = logging.getLogger(__name__)

SYSTEMS = ("linux", "freebsd")
BACKENDS = {"linux": "netlink", "freebsd": "pfkey"}
WAN_MAC = "52:54:00:5f:00:0a"  # the responder's wan NIC, found by it in the guest
TAP_MAC = "02:5f:00:00:00:01"  # the tap facing it: one MAC for every cell
LAN_IF = {"linux": "lan0", "freebsd": "lo1"}
GW_LINK = next(
    link for link in topology.CELL.links if link.a == "gw" and link.b == "wan"
)
LAN_LINK = next(link for link in topology.CELL.links if link.a == "lan")
WAN_LINK = next(link for link in topology.CELL.links if link.b == "host")
SERVICE = topology.PROTECTED_SERVICE
# Modules the guest runs with its own python3: the protected TCP service.
MODULES = ("lab/__init__.py", "lab/service.py")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _address(cidr: str) -> str:
    return cidr.split("/")[0]


def _prefix(cidr: str) -> str:
    return cidr.split("/")[1]


def network_steps(system: str, wan_if: str, with_wan: bool) -> list[list[str]]:
    """Commands that give the guest the gateway's and the lan's addresses."""
    if system not in SYSTEMS:
        raise ValueError(f"responder system {system!r}: allowed {', '.join(SYSTEMS)}")
    service = f"{SERVICE.address}/{_prefix(LAN_LINK.a_cidr)}"
    wan_router = _address(GW_LINK.b_cidr)
    if system == "linux":
        steps = [
            ["ip", "link", "add", LAN_IF[system], "type", "dummy"],
            ["ip", "address", "add", LAN_LINK.b_cidr, "dev", LAN_IF[system]],
            ["ip", "address", "add", service, "dev", LAN_IF[system]],
            ["ip", "link", "set", LAN_IF[system], "up"],
            ["ip", "address", "add", GW_LINK.a_cidr, "dev", wan_if],
            ["ip", "link", "set", wan_if, "up"],
        ]
        if with_wan:
            return steps + [["ip", "address", "add", WAN_LINK.a_cidr, "dev", wan_if]]
        return steps + [["ip", "route", "replace", "default", "via", wan_router]]
    lan = LAN_IF[system]
    steps = [
        ["kldload", "-n", "ipsec"],
        ["ifconfig", lan, "create"],
        ["ifconfig", lan, "inet", LAN_LINK.b_cidr],
        # An alias on a loopback needs a host mask (ifconfig(8)).
        ["ifconfig", lan, "inet", f"{SERVICE.address}/32", "alias"],
        ["ifconfig", wan_if, "inet", GW_LINK.a_cidr, "up"],
    ]
    if with_wan:
        return steps + [["ifconfig", wan_if, "inet", WAN_LINK.a_cidr, "alias"]]
    return steps + [["route", "-n", "add", "default", wan_router]]


def cell_steps(system: str, wan_if: str, nat: str, with_wan: bool) -> list[list[str]]:
    """Commands that leave the guest as a fresh world's gateway would be.

    Every step may fail harmlessly (nothing to flush, no such route), so
    they run unchecked; the next cell's own checks catch a guest that is
    really broken.
    """
    # The bracket keeps the pattern from matching the shell that runs pkill.
    kill_service = ["pkill", "-f", "lab[.]service serve"]
    if system == "linux":
        steps = [
            ["ip", "xfrm", "state", "flush"],
            ["ip", "xfrm", "policy", "flush"],
            ["ip", "neigh", "flush", "dev", wan_if],
            kill_service,
        ]
        route = ["ip", "route", "del", topology.JAIL_NETWORK]
        add = ["ip", "route", "add", topology.JAIL_NETWORK, "via"]
    else:
        steps = [
            ["setkey", "-F"],
            ["setkey", "-FP"],
            ["arp", "-d", "-i", wan_if, "-a"],
            kill_service,
        ]
        route = ["route", "-n", "delete", "-net", topology.JAIL_NETWORK]
        add = ["route", "-n", "add", "-net", topology.JAIL_NETWORK]
    if with_wan:
        # The wan router's one nat-dependent route (lab.topology) is ours.
        steps.append(route)
        if nat == "direct":
            steps.append([*add, topology.HOST_WAN_ADDRESS])
    return steps


def interface_with_mac(system: str, listing: str, mac: str) -> str:
    """The interface holding *mac*, from ``ip -o link`` or ``ifconfig`` output."""
    if system == "linux":
        for line in listing.splitlines():
            fields = line.split()
            if mac in fields and len(fields) > 1:
                return fields[1].rstrip(":").split("@")[0]
    else:
        current = None
        for line in listing.splitlines():
            if line and not line[0].isspace():
                current = line.split(":")[0]
            elif line.split()[:2] == ["ether", mac]:
                return current
    raise LookupError(f"no interface with MAC {mac} in the guest's listing")


def listing_argv(system: str) -> list[str]:
    return ["ip", "-o", "link"] if system == "linux" else ["ifconfig", "-a"]


def esp_argv(system: str) -> list[str]:
    """Succeeds when the guest's kernel can carry ESP."""
    if system == "linux":
        return ["test", "-d", "/sys/module/esp4"]
    return ["sysctl", "-n", "kern.features.ipsec"]


@dataclass
class ResponderGuest:
    """A booted guest made the world's ``lan`` and ``gw``.

    *stop* powers it off and removes what booting it made; the platform
    that booted it supplies it.
    """

    node: SSHNode
    with_wan: bool
    stop: object = None  # a callable
    wan_if: str = ""
    relay_ports: tuple[int, int] | None = None  # (the relay's, the guest's)

    @property
    def system(self) -> str:
        return self.node.system

    @property
    def backend(self) -> str:
        return BACKENDS[self.system]

    def configure(self) -> None:
        """Addresses, routes and modules, once per boot; fails loudly."""
        listing = self.node.run(listing_argv(self.system)).stdout
        self.wan_if = interface_with_mac(self.system, listing, WAN_MAC)
        for argv in network_steps(self.system, self.wan_if, self.with_wan):
            self.node.run(argv)
        self.node.run(
            ["mkdir", "-p", *sorted({_guest(m).rsplit("/", 1)[0] for m in MODULES})]
        )
        for module in MODULES:
            self.node.put(os.path.join(REPO, module), _guest(module))
        answer = self.node.run(esp_argv(self.system), check=False)
        if not answer.ok or answer.stdout.strip() == "0":
            raise RuntimeError(
                f"{self.node.label}: `{answer.command}` says this guest's kernel "
                "cannot carry ESP; the responder VM needs one that can"
            )

    def reset(self, nat: str) -> None:
        """Before a cell: nothing of the previous cell is left in the guest."""
        for argv in cell_steps(self.system, self.wan_if, nat, self.with_wan):
            self.node.run(argv, check=False)
        self.node.stop_processes()


def _guest(module: str) -> str:
    return f"{GUEST_PY}/{module}"


def socket_nic(ports: tuple[int, int]) -> Nic:
    """The responder's wan NIC as a QEMU UDP socket facing a relay."""
    listen, peer = ports
    return Nic(
        "socket", name=f"udp=127.0.0.1:{listen},localaddr=127.0.0.1:{peer}", mac=WAN_MAC
    )


def boot_debian(
    run_id: str, purpose: str, hypervisor_uri: str | None = None
) -> ResponderGuest:
    """The lab's Debian guest as a configured responder, its wan NIC a socket.

    The image and its provisioned layer are the guest lab's (built once,
    cached); the guest runs on a throw-away overlay until ``stop()``.
    """
    from lab.vm.guest_lab import GuestLab

    ports = (relay.free_udp_port(), relay.free_udp_port())
    workdir = os.path.join(runid.runtime_dir(run_id), f"responder-{purpose}")
    guest_lab = GuestLab(run_id, workdir=workdir, hypervisor_uri=hypervisor_uri)
    problem = guest_lab.unavailable()
    if problem:
        raise RuntimeError(f"the responder VM cannot be built here: {problem}")
    layers = guest_lab.layers()
    stack = contextlib.ExitStack()
    try:
        node = stack.enter_context(
            guest_lab.guest(
                f"responder-{purpose}", layers.provisioned, layers.base,
                (socket_nic(ports),),
            )
        )  # fmt: skip
        node.role = "gw"
        guest = ResponderGuest(node, False, stack.close, relay_ports=ports)
        guest.configure()
    except BaseException:
        stack.close()
        raise
    log.info("responder VM %s: up, wan NIC %s", purpose, guest.wan_if)
    return guest
