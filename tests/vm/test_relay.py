"""lab/vm/relay.py: the wire between a QEMU UDP NIC and a namespaced tap.

The unit part compares requests and command lines; the last test runs a
real relay into a namespace of its own and sends a frame each way.
"""

import os
import shutil
import socket
import struct
import sys

import pytest

from lab import command, netns, runid
from lab.vm import relay


def test_tap_request_asks_for_a_tap_without_packet_information():
    request = relay.tap_request("host0")

    assert len(request) == 18
    assert struct.unpack("16sH", request) == (b"host0" + b"\0" * 11, 0x1002)
    with pytest.raises(ValueError):
        relay.tap_request("a-name-far-too-long")


def test_relay_argv_runs_this_module():
    argv = relay.relay_argv("vjlab-x-wan", "host0", 40001, 40002)

    assert argv[2:5] == [sys.executable, "-m", "lab.vm.relay"]
    assert argv[-8:] == [
        "--netns", "vjlab-x-wan", "--tap", "host0",
        "--listen", "40001", "--peer", "40002",
    ]  # fmt: skip


def _can_make_namespaces() -> str | None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return "needs root and iproute2 to make a namespace"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None


@pytest.mark.skipif(_can_make_namespaces() is not None, reason="root, ip, tun")
def test_frames_cross_the_relay_both_ways(tmp_path):
    run_id = runid.new_run_id()
    name = f"{runid.namespace_prefix(run_id)}relay-test"
    qemu_side = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    qemu_side.bind(("127.0.0.1", 0))
    qemu_side.settimeout(5)
    ports = (relay.free_udp_port(), qemu_side.getsockname()[1])
    netns.create(name)
    process = None
    try:
        process = relay.start(
            run_id, name, "tap0", ports, str(tmp_path / "relay.log"),
            mac="02:00:00:00:00:01",
        )  # fmt: skip
        shown = command.run(["ip", "-n", name, "-o", "link", "show", "tap0"]).stdout
        assert "02:00:00:00:00:01" in shown and "UP" in shown

        command.run(["ip", "-n", name, "address", "add", "192.0.2.1/24", "dev", "tap0"])
        command.run(
            ["ip", "netns", "exec", name, "ping", "-c", "1", "-W", "1", "192.0.2.9"],
            check=False,
        )
        frame, _ = qemu_side.recvfrom(65536)
        assert frame[6:12] == bytes.fromhex("020000000001")  # the tap sent it

        arp = _arp_request(bytes.fromhex("020000000002"), "192.0.2.9", "192.0.2.1")
        qemu_side.sendto(arp, ("127.0.0.1", ports[0]))
        neighbours = ""
        for _ in range(50):
            neighbours = command.run(["ip", "-n", name, "neigh"]).stdout
            if "02:00:00:00:00:02" in neighbours:
                break
            qemu_side.recv(65536)
        assert "02:00:00:00:00:02" in neighbours
    finally:
        if process is not None:
            process.stop()
        command.run(["ip", "netns", "delete", name], check=False)
        qemu_side.close()


def _arp_request(mac: bytes, sender: str, target: str) -> bytes:
    """A broadcast ARP who-has from *sender*, as a guest NIC would send it."""
    body = struct.pack(
        "!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, socket.inet_aton(sender),
        b"\0" * 6, socket.inet_aton(target),
    )  # fmt: skip
    return b"\xff" * 6 + mac + b"\x08\x06" + body
