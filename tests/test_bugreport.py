"""Bug reports: which cells can be reported, and what leaves the machine."""

import io
import ipaddress
import json
import tarfile

import dpkt
import pytest

from lab import bugreport
from lab.redact import Redactor

SECRET = "lab-psk-5f0c1e"
RUN = {"id": "20261204-120000-abcd", "platform": "local", "host": "buildbox",
       "kernel": "6.1.0"}  # fmt: skip
FAILED = {
    "id": "local/jail/netlink/tun-visible/nat/good",
    "axes": {"isolation": "jail", "backend": "netlink", "devices": "tun-visible",
             "nat": "nat", "auth": "good"},
    "outcome": "SAD_INSTALL_FAILED(EPROTONOSUPPORT)",
    "detail": "the kernel refused the SA: EPROTONOSUPPORT",
    "evidence": "cells/local_jail_netlink_tun-visible_nat_good",
    "deciding": [["client", "received netlink error: Protocol not supported (93)"]],
}  # fmt: skip
UP = {**FAILED, "id": "local/jail/libipsec/tun-visible/nat/good", "outcome": "UP"}
RESULTS = {"run": RUN, "cells": [FAILED, UP]}


def test_unknown_cell_is_refused_with_the_reportable_cells():
    with pytest.raises(bugreport.BugReportError) as caught:
        bugreport.find_cell(RESULTS, "local/nope")
    assert "no cell 'local/nope'" in str(caught.value)
    assert FAILED["id"] in str(caught.value)
    assert UP["id"] not in str(caught.value)


def test_cell_that_came_up_is_refused():
    with pytest.raises(bugreport.BugReportError) as caught:
        bugreport.find_cell(RESULTS, UP["id"])
    assert "came up (UP); there is nothing to report" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        ("via 10.1.2.3 to 198.51.100.10", "via <ipv4> to 198.51.100.10"),
        ("src 192.0.2.2 dst 203.0.113.10", "src 192.0.2.2 dst 203.0.113.10"),
        ("inet6 fe80::a429:f2ff:fe02:e088/64", "inet6 <ipv6>/64"),
        ("inet6 2001:db8::1/64 and ::1", "inet6 2001:db8::1/64 and ::1"),
        ("at 16:04:40 loopback 127.0.0.1", "at 16:04:40 loopback 127.0.0.1"),
        ("link/ether 52:54:00:12:34:56", "link/ether <mac>"),
        ("host buildbox says", "host <host> says"),
    ],
)
def test_addresses_outside_documentation_ranges_are_blanked(text, scrubbed):
    assert bugreport.scrub_addresses(text, "buildbox") == scrubbed


def _pcap(*pairs: tuple[str, str]) -> bytes:
    out = io.BytesIO()
    writer = dpkt.pcap.Writer(out)
    for src, dst in pairs:
        packet = dpkt.ip.IP(
            src=ipaddress.ip_address(src).packed,
            dst=ipaddress.ip_address(dst).packed,
            p=17,
            data=dpkt.udp.UDP(sport=4500, dport=4500),
        )
        writer.writepkt(bytes(dpkt.ethernet.Ethernet(data=packet, type=0x0800)))
    return out.getvalue()


def test_capture_with_documentation_addresses_only_is_shareable():
    assert bugreport.pcap_is_shareable(_pcap(("198.51.100.66", "198.51.100.10")))


def test_capture_with_another_address_is_not_shareable():
    assert not bugreport.pcap_is_shareable(_pcap(("10.0.0.1", "198.51.100.10")))


def test_garbage_is_not_a_shareable_capture():
    assert not bugreport.pcap_is_shareable(b"not a pcap at all")


@pytest.fixture
def run_dir(tmp_path):
    cell = tmp_path / FAILED["evidence"]
    (cell / "client").mkdir(parents=True)
    (cell / "client" / "charon.log").write_text(
        f"psk {SECRET} from 10.9.8.7 to 198.51.100.10 on buildbox\n"
    )
    (cell / "client" / "vici.json").write_text(json.dumps({
        "version": {"version": "5.9.8", "sysname": "Linux", "release": "6.1.0"},
        "stats": {"plugins": ["charon", "kernel-netlink"]},
    }))  # fmt: skip
    (cell / "wan.pcap").write_bytes(_pcap(("10.0.0.1", "198.51.100.10")))
    (cell / "index.html").write_text("<html></html>")
    return tmp_path


def test_report_and_tarball_carry_no_secret_and_no_foreign_address(run_dir):
    report = bugreport.write(
        str(run_dir), RESULTS, FAILED["id"], Redactor([SECRET]), None
    )

    markdown = open(report.markdown).read()
    with tarfile.open(report.tarball) as tar:
        names = tar.getnames()
        log = tar.extractfile("evidence/client/charon.log").read().decode()
    assert report.markdown.endswith("report-strongswan.md")
    assert "SAD_INSTALL_FAILED(EPROTONOSUPPORT)" in markdown
    assert "--axis backend=netlink" in markdown
    assert "strongSwan: 5.9.8" in markdown
    assert log == "psk <redacted> from <ipv4> to 198.51.100.10 on <host>\n"
    assert "evidence/wan.pcap" not in names
    assert sorted(report.omitted) == ["index.html", "wan.pcap"]


def test_freebsd_sad_failure_goes_to_freebsd_bugzilla():
    cell = {**FAILED, "id": "freebsd/vnet/pfkey/5/nat/good",
            "outcome": "SAD_INSTALL_FAILED(EINVAL)"}  # fmt: skip
    assert bugreport.default_tracker(cell, {"platform": "freebsd"}) == "freebsd"
    assert bugreport.default_tracker(FAILED, RUN) == "strongswan"


@pytest.mark.parametrize(
    ("responder", "flag", "said"),
    [("namespaces", "", "network namespaces"), ("vm", " --responder vm", "Debian 12")],
)
def test_the_reproduce_command_keeps_where_the_responder_ran(responder, flag, said):
    cell = {"id": "local/jail/netlink/tun-visible/nat/good", "axes": {"nat": "nat"}}
    run = {"platform": "local", "responder": responder}

    assert bugreport._reproduce(cell, run).endswith(
        f"lab run{flag} --cells full --axis nat=nat"
    )
    assert said in bugreport._environment(run, {})["responder"]


def test_a_freebsd_cell_is_reproduced_with_its_scenario_and_an_image():
    cell = {
        "id": "freebsd/15.0/pkg/charon/vnet/pfkey/rs5/ipsec-unloaded/pf/good",
        "axes": {"freebsd": "15.0", "isolation": "vnet"},
    }

    command = bugreport._reproduce(cell, {"platform": "local"})

    assert "pytest scenarios/test_freebsd.py --image /path/to/FreeBSD-15.0-" in command
    assert command.endswith("--cells full --axis freebsd=15.0 --axis isolation=vnet")


@pytest.mark.parametrize(
    ("host", "blanked"),
    [("vm", False), ("jail", False), ("ci7", False), ("lab-runner-3", True)],
)
def test_a_host_name_is_blanked_only_where_it_identifies(host, blanked):
    text = f"lab run --responder vm on {host}: lab.vm.debian"

    scrubbed = bugreport.scrub_addresses(text, host)

    assert ("<host>" in scrubbed) is blanked
    assert "--responder vm" in scrubbed and "lab.vm.debian" in scrubbed
