"""Linux host checks (``vpnjail check``) and leftovers (``vpnjail gc``)."""

import os
import shutil
import subprocess

from vpnjail import strongswan
from vpnjail.profile import Profile

PLUGIN_DIR = "/usr/lib/ipsec/plugins"
TOOLS = [
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("unshare", "util-linux"),
    ("nsenter", "util-linux"),
    ("mount", "mount"),
    ("sysctl", "procps"),
]
PLUGIN_PACKAGES = {
    "kernel-libipsec": "libcharon-extra-plugins",
    "unity": "libcharon-extra-plugins",
    "xauth-generic": "libcharon-extauth-plugins",
    "vici": "strongswan-swanctl",
    "kernel-netlink": "libstrongswan",
}


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def preflight(driver, profiles: list[Profile]) -> list[str]:
    problems = []
    if os.geteuid() != 0:
        problems.append("not root: vpnjail creates namespaces; run it as root")
    if not os.access(strongswan.CHARON_PATHS["linux"], os.X_OK):
        problems.append("charon missing: apt-get install strongswan-charon")
    for tool, package in TOOLS:
        if shutil.which(tool) is None:
            problems.append(f"{tool} missing: apt-get install {package}")
    problems += _plugins(profiles)
    problems += _tun(profiles)
    problems += _forwarding(driver, profiles)
    problems += _kernel_ipsec(profiles)
    return problems


def _plugins(profiles: list[Profile]) -> list[str]:
    wanted = {"vici", "kernel-netlink", "unity", "xauth-generic"}
    if any(p.backend == "libipsec" for p in profiles):
        wanted.add("kernel-libipsec")
    missing = []
    for plugin in sorted(wanted):
        path = os.path.join(PLUGIN_DIR, f"libstrongswan-{plugin}.so")
        if not os.path.exists(path):
            missing.append(
                f"strongSwan plugin {plugin} missing: "
                f"apt-get install {PLUGIN_PACKAGES[plugin]}"
            )
    return missing


def _tun(profiles: list[Profile]) -> list[str]:
    users = [p.name for p in profiles if p.backend == "libipsec"]
    if not users:
        return []
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR)
    except OSError as exc:
        return [
            f"/dev/net/tun cannot be opened ({exc.strerror}), needed by "
            f"{', '.join(users)} (kernel-libipsec): modprobe tun"
        ]
    os.close(fd)
    return []


def _forwarding(driver, profiles: list[Profile]) -> list[str]:
    if not any(p.nat or p.port_forwards for p in profiles):
        return []
    argv = driver.host_prefix() + ["sysctl", "-n", "net.ipv4.ip_forward"]
    result = _run(argv)
    if result.stdout.strip() == "1":
        return []
    where = f" in namespace {driver.host_netns}" if driver.host_netns else ""
    prefix = " ".join(driver.host_prefix())
    return [
        f"IPv4 forwarding is off{where}; NAT and port forwards need it: "
        f"{(prefix + ' ') if prefix else ''}sysctl -w net.ipv4.ip_forward=1"
    ]


def _kernel_ipsec(profiles: list[Profile]) -> list[str]:
    users = [p.name for p in profiles if p.backend == "kernel"]
    if not users:
        return []
    scratch = f"vpnjail-check-{os.getpid()}"
    _run(["ip", "netns", "add", scratch])
    try:
        result = _run(
            ["ip", "-n", scratch, "xfrm", "state", "add", "src", "192.0.2.1",
             "dst", "192.0.2.2", "proto", "esp", "spi", "0x100", "mode", "tunnel",
             "enc", "cbc(aes)", "0x" + "11" * 16, "auth", "hmac(sha1)",
             "0x" + "22" * 20]
        )  # fmt: skip
    finally:
        _run(["ip", "netns", "delete", scratch])
    if result.returncode == 0:
        return []
    return [
        f"the kernel refuses ESP SAs ({result.stderr.strip()}), needed by "
        f"{', '.join(users)} (backend kernel): modprobe esp4 xfrm_user, "
        "or switch them to backend: libipsec"
    ]
