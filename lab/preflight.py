"""Preflight: every tool and plugin the local lab needs, with its package."""

import os
import shutil

# (what, how to find it, Debian package)
TOOLS = [
    ("charon", "/usr/lib/ipsec/charon", "strongswan-charon"),
    ("swanctl", "swanctl", "strongswan-swanctl"),
    ("ip", "ip", "iproute2"),
    ("ss", "ss", "iproute2"),
    ("nft", "nft", "nftables"),
    ("tcpdump", "tcpdump", "tcpdump"),
    ("ping", "ping", "iputils-ping"),
    ("unshare", "unshare", "util-linux"),
    ("nsenter", "nsenter", "util-linux"),
    ("mount", "mount", "mount"),
    ("sysctl", "sysctl", "procps"),
]
PLUGIN_DIR = "/usr/lib/ipsec/plugins"
PLUGINS = [
    ("kernel-libipsec", "libcharon-extra-plugins"),
    ("unity", "libcharon-extra-plugins"),
    ("xauth-generic", "libcharon-extauth-plugins"),
    ("vici", "strongswan-swanctl"),
    ("kernel-netlink", "libstrongswan"),
    ("openssl", "libstrongswan-standard-plugins"),
]


def problems() -> list[str]:
    """One line per missing piece, naming the Debian package that has it."""
    found = []
    if os.geteuid() != 0:
        found.append("not root: the lab creates namespaces; run it as root")
    for name, where, package in TOOLS:
        present = (
            os.access(where, os.X_OK) if where.startswith("/") else shutil.which(where)
        )
        if not present:
            found.append(f"missing {name}: apt-get install {package}")
    for plugin, package in PLUGINS:
        path = os.path.join(PLUGIN_DIR, f"libstrongswan-{plugin}.so")
        if not os.path.exists(path):
            found.append(
                f"missing strongSwan plugin {plugin}: apt-get install {package}"
            )
    return found
