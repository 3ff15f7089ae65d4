"""What this kernel can do, probed at run time in a scratch namespace.

Expectations depend on these answers, never on the name of the machine:
``esp`` (the kernel installs an ESP SA), ``tun`` (a tun device opens),
``af_key`` (a PF_KEY v2 socket opens).
"""

import logging
import os
import socket

from lab import command, netns

log = logging.getLogger(__name__)

# A throw-away SA between two documentation addresses, never used for traffic.
_PROBE_SA = [
    "ip",
    "xfrm",
    "state",
    "add",
    "src",
    "192.0.2.1",
    "dst",
    "192.0.2.2",
    "proto",
    "esp",
    "spi",
    "0x00000100",
    "mode",
    "tunnel",
    "enc",
    "cbc(aes)",
    "0x" + "11" * 16,
    "auth",
    "hmac(sha1)",
    "0x" + "22" * 20,
]
AF_KEY = 15
PF_KEY_V2 = 2


def probe(scratch_netns: str) -> dict[str, dict]:
    """Probe every capability; each answer carries the evidence behind it."""
    return {
        "esp": probe_esp(scratch_netns),
        "tun": probe_tun(),
        "af_key": probe_af_key(),
    }


def probe_esp(scratch_netns: str) -> dict:
    netns.create(scratch_netns)
    try:
        result = command.run(["ip", "-n", scratch_netns, *_PROBE_SA[1:]], check=False)
    finally:
        netns.delete(scratch_netns)
    detail = "ESP SA accepted" if result.ok else result.stderr.strip()
    return {"value": result.ok, "detail": f"`ip xfrm state add ... esp`: {detail}"}


def probe_tun() -> dict:
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR)
    except OSError as exc:
        return {"value": False, "detail": f"/dev/net/tun: {exc.strerror}"}
    os.close(fd)
    return {"value": True, "detail": "/dev/net/tun opens"}


def probe_af_key() -> dict:
    try:
        sock = socket.socket(AF_KEY, socket.SOCK_RAW, PF_KEY_V2)
    except OSError as exc:
        return {"value": False, "detail": f"socket(AF_KEY): {exc.strerror}"}
    sock.close()
    return {"value": True, "detail": "socket(AF_KEY) opens"}


def values(capabilities: dict[str, dict]) -> dict[str, bool]:
    return {name: answer["value"] for name, answer in capabilities.items()}
