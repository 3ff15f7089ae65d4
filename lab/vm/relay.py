"""A wire between a QEMU UDP socket NIC and a tap inside a namespace.

QEMU's ``-netdev socket,udp=`` sends each Ethernet frame of a guest NIC as
one UDP datagram. The relay binds its UDP socket on the root namespace's
loopback (where QEMU is), then enters the target network namespace and
creates its tap there, so the root namespace never gains an interface.
Frames go both ways unchanged; the tap is gone when the relay exits.

Run as ``python -m lab.vm.relay --netns NAME --tap IF --listen P --peer Q``.
"""

import argparse
import ctypes
import fcntl
import logging
import os
import select
import socket
import struct
import sys

from lab import command
from lab.node import LocalNode, Process
from lab.wait import wait_until

log = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000
READY = "relay ready"
READY_TIMEOUT = 10.0


def relay_argv(netns_name: str, tap: str, listen: int, peer: int) -> list[str]:
    return [
        "env", f"PYTHONPATH={REPO}", sys.executable, "-m", "lab.vm.relay",
        "--netns", netns_name, "--tap", tap,
        "--listen", str(listen), "--peer", str(peer),
    ]  # fmt: skip


def start(
    run_id: str, netns_name: str, tap: str, ports: tuple[int, int], log_path: str,
    mac: str | None = None,
) -> Process:  # fmt: skip
    """A relay whose tap *tap* in *netns_name* is up (with *mac*, if given).

    *ports* is (the relay's UDP port, QEMU's UDP port). A fixed MAC lets a
    guest that outlives the namespace keep its neighbour entry valid.
    """
    listen, peer = ports
    process = LocalNode(role=f"relay-{tap}", run_id=run_id).spawn(
        relay_argv(netns_name, tap, listen, peer), log_path=log_path
    )
    try:
        wait_until(lambda: _ready(process), READY_TIMEOUT, f"relay {tap}: tap ready")
        if mac:
            command.run(["ip", "-n", netns_name, "link", "set", tap, "address", mac])
        command.run(["ip", "-n", netns_name, "link", "set", tap, "up"])
    except Exception:
        process.stop()
        raise
    return process


def _ready(process: Process) -> str | None:
    with open(process.log_path, errors="replace") as out:
        if READY in out.read():
            return None
    if process.exited() is not None:
        raise RuntimeError(f"relay exited; see {process.log_path}")
    return "relay not ready"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tap_request(name: str) -> bytes:
    """The ifreq TUNSETIFF takes: a tap without packet information."""
    if not 0 < len(name) < 16:
        raise ValueError(f"interface name {name!r}: 1 to 15 characters")
    return struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI)


def enter_netns(name: str) -> None:
    """Move this thread into network namespace *name* (ip netns)."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/run/netns/{name}") as handle:
        if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns into {name}: {os.strerror(error)}")


def open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, tap_request(name))
    return fd


def relay(netns_name: str, tap: str, listen: int, peer: int) -> None:
    """Move frames until killed; the socket is bound before setns, the tap after."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", listen))
    enter_netns(netns_name)
    fd = open_tap(tap)
    print(READY, flush=True)
    while True:
        ready, _, _ = select.select([sock, fd], [], [])
        if sock in ready:
            os.write(fd, sock.recv(65536))
        if fd in ready:
            sock.sendto(os.read(fd, 65536), ("127.0.0.1", peer))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.vm.relay")
    parser.add_argument("--netns", required=True)
    parser.add_argument("--tap", required=True)
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--peer", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    relay(args.netns, args.tap, args.listen, args.peer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
