"""lab/vm/responder_guest.py: the commands that make a guest the responder.

Nothing boots: commands are compared as lists, listings are parsed from
the text ``ip -o link`` and ``ifconfig -a`` print. scenarios/
test_responder_vm.py runs the real guest.
"""

import pytest

from lab.vm import responder_guest as rg
from lab.vm.ssh import SSHNode

LINUX_LINKS = """\
1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT \
group default qlen 1000\\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00
2: eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc pfifo_fast state UP \
mode DEFAULT group default qlen 1000\\    link/ether 52:54:00:12:34:56 brd \
ff:ff:ff:ff:ff:ff
3: eth1: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN mode DEFAULT group \
default qlen 1000\\    link/ether 52:54:00:5f:00:0a brd ff:ff:ff:ff:ff:ff
"""
FREEBSD_IFCONFIG = """\
vtnet0: flags=1008843<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST,LOWER_UP> metric 0 mtu 1500
\toptions=4c079b<RXCSUM,TXCSUM,VLAN_MTU>
\tether 58:9c:fc:00:00:01
\tinet 10.0.2.15 netmask 0xffffff00 broadcast 10.0.2.255
vtnet1: flags=1008802<BROADCAST,SIMPLEX,MULTICAST,LOWER_UP> metric 0 mtu 1500
\tether 52:54:00:5f:00:0a
lo0: flags=1008049<UP,LOOPBACK,RUNNING,MULTICAST,LOWER_UP> metric 0 mtu 16384
\tinet 127.0.0.1 netmask 0xff000000
"""


def test_linux_guest_gets_gateway_lan_and_a_default_route_to_the_wan():
    assert rg.network_steps("linux", "eth1", with_wan=False) == [
        ["ip", "link", "add", "lan0", "type", "dummy"],
        ["ip", "address", "add", "203.0.113.1/25", "dev", "lan0"],
        ["ip", "address", "add", "203.0.113.10/25", "dev", "lan0"],
        ["ip", "link", "set", "lan0", "up"],
        ["ip", "address", "add", "198.51.100.10/26", "dev", "eth1"],
        ["ip", "link", "set", "eth1", "up"],
        ["ip", "route", "replace", "default", "via", "198.51.100.1"],
    ]


def test_without_a_wan_router_the_guest_answers_for_it():
    steps = rg.network_steps("linux", "eth1", with_wan=True)

    assert steps[-1] == ["ip", "address", "add", "198.51.100.65/26", "dev", "eth1"]
    assert not any("route" in step for step in steps)


def test_freebsd_guest_uses_a_loopback_for_the_lan_and_loads_ipsec():
    steps = rg.network_steps("freebsd", "vtnet1", with_wan=True)

    assert steps[0] == ["kldload", "-n", "ipsec"]
    assert ["ifconfig", "lo1", "create"] in steps
    assert ["ifconfig", "lo1", "inet", "203.0.113.10/32", "alias"] in steps
    assert steps[-1] == ["ifconfig", "vtnet1", "inet", "198.51.100.65/26", "alias"]
    assert rg.network_steps("freebsd", "vtnet1", with_wan=False)[-1] == [
        "route", "-n", "add", "default", "198.51.100.1",
    ]  # fmt: skip


def test_an_unknown_system_is_refused_by_name():
    with pytest.raises(ValueError, match="responder system 'plan9'"):
        rg.network_steps("plan9", "eth1", with_wan=False)


def test_each_cell_starts_without_the_last_ones_state():
    steps = rg.cell_steps("linux", "eth1", "nat", with_wan=False)

    assert ["ip", "xfrm", "state", "flush"] in steps
    assert ["ip", "xfrm", "policy", "flush"] in steps
    assert ["ip", "neigh", "flush", "dev", "eth1"] in steps
    # The pattern must not match the shell that runs pkill.
    assert ["pkill", "-f", "lab[.]service serve"] in steps


def test_the_wan_routers_direct_route_follows_the_cell():
    nat = rg.cell_steps("freebsd", "vtnet1", "nat", with_wan=True)
    direct = rg.cell_steps("freebsd", "vtnet1", "direct", with_wan=True)

    assert nat[-1] == ["route", "-n", "delete", "-net", "192.0.2.0/30"]
    assert direct[-1] == ["route", "-n", "add", "-net", "192.0.2.0/30", "198.51.100.66"]
    assert ["setkey", "-F"] in nat and ["setkey", "-FP"] in nat
    assert rg.cell_steps("linux", "eth1", "direct", with_wan=True)[-1] == [
        "ip", "route", "add", "192.0.2.0/30", "via", "198.51.100.66",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("system", "listing", "interface"),
    [("linux", LINUX_LINKS, "eth1"), ("freebsd", FREEBSD_IFCONFIG, "vtnet1")],
)
def test_the_wan_nic_is_found_by_its_mac(system, listing, interface):
    assert rg.interface_with_mac(system, listing, rg.WAN_MAC) == interface


def test_a_missing_mac_says_which():
    with pytest.raises(LookupError, match="52:54:00:5f:00:0a"):
        rg.interface_with_mac("linux", "1: lo: <LOOPBACK>\n", rg.WAN_MAC)


def test_the_wan_nic_is_a_socket_facing_the_relay():
    nic = rg.socket_nic((40001, 40002))

    assert nic.kind == "socket" and nic.mac == rg.WAN_MAC
    assert nic.name == "udp=127.0.0.1:40001,localaddr=127.0.0.1:40002"


class FakeNode(SSHNode):
    """Answers from a table; records what ran and what was copied in."""

    def __init__(self, system, answers):
        super().__init__("gw", "r", "127.0.0.1", 2222, "root", "/k", system=system)
        self.answers = answers
        self.ran, self.copied = [], []

    def run(self, argv, check=True, timeout=60.0, input_text=None):
        from lab.command import CommandError, Result

        self.ran.append(argv)
        code, out = self.answers.get(argv[0], (0, ""))
        result = Result(self.label, tuple(argv), code, out, "", 0.0)
        if check and code:
            raise CommandError(result)
        return result

    def put(self, local, remote):
        self.copied.append(remote)


def test_configure_finds_the_nic_sets_it_up_and_checks_esp():
    node = FakeNode("linux", {"ip": (0, LINUX_LINKS)})
    guest = rg.ResponderGuest(node, with_wan=False)

    guest.configure()

    assert guest.wan_if == "eth1" and guest.backend == "netlink"
    assert ["ip", "address", "add", "198.51.100.10/26", "dev", "eth1"] in node.ran
    assert node.copied == [
        "/var/db/vjlab/py/lab/__init__.py", "/var/db/vjlab/py/lab/service.py",
    ]  # fmt: skip
    assert node.ran[-1] == ["test", "-d", "/sys/module/esp4"]


def test_a_guest_without_esp_is_refused_with_the_command():
    node = FakeNode("linux", {"ip": (0, LINUX_LINKS), "test": (1, "")})

    with pytest.raises(
        RuntimeError, match="test -d /sys/module/esp4.*cannot carry ESP"
    ):
        rg.ResponderGuest(node, with_wan=False).configure()
