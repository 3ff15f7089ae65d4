"""Talking to a profile's charon over VICI (strongSwan's own client)."""

import re
import socket
from collections.abc import Mapping

import vici

# IKEv1 DPD travels as R-U-THERE notifies: N(DPD) and N(DPD_ACK).
_DPD = re.compile(r"^(\w{3} +\d+ [\d:]+) .*N\(DPD(_ACK)?\)")


def connect(path: str, timeout: float) -> vici.Session:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    return vici.Session(sock)


def reachable(path: str) -> bool:
    try:
        connect(path, 2).version()
    except OSError:
        return False
    return True


def plain(value):
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def load(session: vici.Session, conns: dict, secrets: list[dict]) -> None:
    session.load_conn(conns)
    for secret in secrets:
        session.load_shared(secret)


def initiate(session: vici.Session, child: str, timeout: float) -> str | None:
    request = {"child": child, "timeout": int(timeout * 1000), "init-limits": "no"}
    try:
        for _ in session.initiate(request):
            pass
    except vici.exception.CommandException as exc:
        return str(exc)
    return None


def sas(session: vici.Session) -> list[dict]:
    return [plain(sa) for sa in session.list_sas()]


def _ikes(session: vici.Session):
    for entry in sas(session):
        yield from entry.values()


def established(session: vici.Session) -> bool:
    for ike in _ikes(session):
        if ike.get("state") == "ESTABLISHED" and any(
            c.get("state") == "INSTALLED" for c in ike.get("child-sas", {}).values()
        ):
            return True
    return False


def virtual_ip(session: vici.Session) -> str | None:
    for ike in _ikes(session):
        vips = ike.get("local-vips") or []
        if vips:
            return vips[0]
    return None


def describe(session: vici.Session) -> dict:
    """IKE and CHILD state, virtual IP and traffic counters."""
    info = {"state": "connecting", "ike": None, "children": []}
    for ike in _ikes(session):
        info["ike"] = ike.get("state")
        installed = any(
            c.get("state") == "INSTALLED" for c in ike.get("child-sas", {}).values()
        )
        if ike.get("state") != "ESTABLISHED":
            info["state"] = "connecting"
        else:
            info["state"] = "up" if installed else "no tunnel"
        info["virtual_ip"] = (ike.get("local-vips") or [None])[0]
        info["gateway"] = ike.get("remote-host")
        for child in ike.get("child-sas", {}).values():
            info["children"].append(
                {
                    "name": child.get("name"),
                    "state": child.get("state"),
                    "bytes_in": int(child.get("bytes-in", 0)),
                    "bytes_out": int(child.get("bytes-out", 0)),
                    "packets_in": int(child.get("packets-in", 0)),
                    "packets_out": int(child.get("packets-out", 0)),
                    "remote_ts": child.get("remote-ts", []),
                }
            )
    if info["ike"] is None:
        info["state"] = "no IKE_SA"
    return info


def last_dpd(log_file: str) -> str | None:
    """The time of the last DPD exchange charon logged, if any."""
    last = None
    try:
        with open(log_file, errors="replace") as src:
            for line in src:
                match = _DPD.match(line)
                if match:
                    last = match.group(1)
    except OSError:
        return None
    return last
