"""strongSwan: rendering configuration and running charon in a stack.

Configuration is held as plain nested dicts. The same dict is sent to charon
over VICI and rendered as swanctl.conf text for evidence, so what was loaded
and what a person reads can never drift apart.
"""

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from lab.node import Node, Process
from lab.wait import WaitTimeout, wait_until

log = logging.getLogger(__name__)

REDACTED = "<redacted>"

# Plugins every lab charon loads, besides the kernel backend's.
BASE_PLUGINS = [
    "random",
    "nonce",
    "openssl",
    "aes",
    "sha1",
    "sha2",
    "md5",
    "hmac",
    "gmp",
    "pem",
    "pkcs1",
    "x509",
    "pubkey",
    "kdf",
    "xcbc",
    "gcm",
    "socket-default",
    "vici",
    "attr",
    "xauth-generic",
    "unity",
]

# The kernel interface plugins per backend. kernel-libipsec is marked critical
# ("!") so that a stack that cannot open a tun refuses to start instead of
# silently falling back to the kernel's own IPsec through kernel-netlink.
BACKEND_PLUGINS = {
    ("linux", "netlink"): ["kernel-netlink"],
    ("linux", "libipsec"): ["kernel-libipsec!", "kernel-netlink"],
    ("freebsd", "pfkey"): ["kernel-pfkey", "kernel-pfroute"],
    ("freebsd", "libipsec"): ["kernel-libipsec", "kernel-pfroute"],
}

CHARON_PATHS = {
    "linux": "/usr/lib/ipsec/charon",
    "freebsd": "/usr/local/libexec/ipsec/charon",
}


def plugin_list(system: str, backend: str) -> list[str]:
    try:
        kernel = BACKEND_PLUGINS[(system, backend)]
    except KeyError:
        raise ValueError(f"no kernel backend {backend!r} on {system}") from None
    return BASE_PLUGINS + kernel


def charon_settings(system: str, backend: str, extra: Mapping | None = None) -> dict:
    """The ``charon`` section of strongswan.conf for a lab stack."""
    settings = {
        "load_modular": "no",
        "load": " ".join(plugin_list(system, backend)),
        "install_virtual_ip": "yes",
        "plugins": {
            "vici": {"socket": "unix:///run/charon.vici"},
            # Pushed DNS servers must never reach the machine's resolv.conf.
            "resolve": {"load": "no"},
        },
        "filelog": {
            "lab": {
                "path": "/run/charon.log",
                "time_format": "%b %e %T",
                "ike_name": "yes",
                "flush_line": "yes",
                "default": "1",
                "ike": "2",
                "knl": "2",
                "cfg": "2",
            }
        },
    }
    return _merge(settings, extra or {})


def _merge(base: dict, extra: Mapping) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def render_sections(data: Mapping, indent: int = 0) -> str:
    """Render nested dicts in strongSwan's settings syntax."""
    pad = "  " * indent
    lines = []
    for key, value in data.items():
        if isinstance(value, Mapping):
            lines.append(f"{pad}{key} {{")
            lines.append(render_sections(value, indent + 1).rstrip("\n"))
            lines.append(f"{pad}}}")
        else:
            lines.append(f"{pad}{key} = {_scalar(value)}")
    return "\n".join(line for line in lines if line) + "\n"


def _scalar(value) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def render_swanctl(conns: Mapping, secrets: list[dict], pools: Mapping) -> str:
    """swanctl.conf text for what is loaded over VICI, secrets redacted."""
    document = {
        "connections": conns,
        "secrets": {
            f"{s['type'].lower()}-{n}": {"id": s["owners"], "secret": REDACTED}
            for n, s in enumerate(secrets, 1)
        },
        "pools": pools,
    }
    return render_sections(document)


@dataclass
class Charon:
    """One charon daemon running in a node's sandbox."""

    node: Node
    run_dir: str
    process: Process | None = None

    @property
    def vici_socket(self) -> str:
        return os.path.join(self.run_dir, "charon.vici")

    @property
    def log_path(self) -> str:
        return os.path.join(self.run_dir, "charon.log")

    def write_config(self, charon: Mapping) -> str:
        path = os.path.join(self.run_dir, "strongswan.conf")
        with open(path, "w") as out:
            out.write(render_sections({"charon": charon}))
        return path

    def start(self, system: str = "linux", timeout: float = 15.0) -> None:
        """Start charon; return when VICI answers, or when charon has died."""
        self.process = self.node.spawn(
            [CHARON_PATHS[system]],
            log_path=os.path.join(self.run_dir, "charon.out"),
            env={"STRONGSWAN_CONF": "/run/strongswan.conf"},
        )
        try:
            wait_until(self._started, timeout, f"{self.node.label}: charon VICI")
        except WaitTimeout:
            log.debug("%s: charon did not open VICI in time", self.node.label)

    def _started(self) -> str | None:
        if self.process.exited() is not None:
            return None
        if os.path.exists(self.vici_socket):
            return None
        return "VICI socket not there yet"

    def running(self) -> bool:
        return self.process is not None and self.process.exited() is None

    def read_log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as log_file:
                return log_file.read()
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
