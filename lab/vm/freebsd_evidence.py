"""What a FreeBSD cell keeps as evidence, as commands run over SSH.

Each capture is one command and the file its output goes to, run either in
the guest's own stack (``host``) or in the client's stack (``client``: the
jail, through jexec, or the guest itself when the client runs there).
Kernel IPsec state is per VNET, so SAs, policies and ``net.inet.ipsec`` are
read where the client runs; modules, pf and devfs rules belong to the guest.

Layout below the cell's evidence directory::

    freebsd/           versions, modules, features, jails, devfs, pf, dmesg,
                       pkg info, versions.json (for record mode)
    client/kernel/     setkey -D and -DP, routes, interfaces, pfkey counters
    client/swanctl-stats.txt   charon's loaded plugins, from its VICI socket
    freebsd/wan.pcap   the guest's wan NIC, captured in the guest
    probe.json         the PF_KEY probe's answer (probe scenario)
"""

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

ANCHORS = "vpnjail/*"
CAPTURE_DIR = "/var/db/vjlab/capture"
CAPTURE_PIDFILE = f"{CAPTURE_DIR}/tcpdump.pid"
CAPTURE_FILE = f"{CAPTURE_DIR}/wan.pcap"
VICI_URI = "unix:///run/charon.vici"


@dataclass(frozen=True)
class Capture:
    name: str  # file name below the cell's evidence directory
    argv: tuple[str, ...]
    where: str = "host"  # "host" or "client"


def before_cell() -> list[Capture]:
    """Set before the client starts: key.c then explains each refusal.

    ``net.inet.ipsec.debug`` lives in key.c as a VNET sysctl, so it exists
    without ipsec.ko and must be set in the client's own stack.
    """
    return [
        Capture(
            "freebsd/ipsec-debug.txt",
            ("sysctl", "net.inet.ipsec.debug=1"),
            "client",
        )
    ]


def guest_captures(ruleset: int | None) -> list[Capture]:
    """The guest's versions, modules, features, jails, devfs and pf."""
    captures = [
        Capture("freebsd/freebsd-version.txt", ("freebsd-version", "-kru")),
        Capture("freebsd/uname.txt", ("uname", "-a")),
        Capture("freebsd/kldstat.txt", ("kldstat",)),
        Capture("freebsd/kern.features.txt", ("sysctl", "kern.features")),
        Capture("freebsd/net.inet.ipsec.txt", ("sysctl", "net.inet.ipsec")),
        Capture("freebsd/jls.txt", ("jls", "-n")),
        Capture("freebsd/pf-rules.txt", ("pfctl", "-a", ANCHORS, "-s", "rules")),
        Capture("freebsd/pf-nat.txt", ("pfctl", "-a", ANCHORS, "-s", "nat")),
        Capture("freebsd/dmesg.txt", ("dmesg",)),
        Capture("freebsd/pkg-info-strongswan.txt", ("pkg", "info", "strongswan")),
    ]
    if ruleset is not None:
        captures.append(
            Capture(
                f"freebsd/devfs-ruleset-{ruleset}.txt",
                ("devfs", "rule", "-s", str(ruleset), "show"),
            )
        )
    return captures


def client_captures() -> list[Capture]:
    """The client stack's SAD, SPD, sysctls, routes and charon's plugins."""
    return [
        Capture("client/kernel/setkey-D.txt", ("setkey", "-D"), "client"),
        Capture("client/kernel/setkey-DP.txt", ("setkey", "-DP"), "client"),
        Capture(
            "client/kernel/net.inet.ipsec.txt", ("sysctl", "net.inet.ipsec"), "client"
        ),
        Capture("client/kernel/routes.txt", ("netstat", "-rn"), "client"),
        Capture("client/kernel/interfaces.txt", ("ifconfig", "-a"), "client"),
        Capture(
            "client/kernel/pfkey-counters.txt",
            ("netstat", "-s", "-p", "pfkey"),
            "client",
        ),
        Capture(
            "client/swanctl-stats.txt",
            ("swanctl", "--stats", "--uri", VICI_URI),
            "client",
        ),
    ]


def capture_start(interface: str) -> tuple[str, ...]:
    """tcpdump on the guest's *interface*, detached by daemon(8)."""
    return (
        "daemon", "-p", CAPTURE_PIDFILE,
        "tcpdump", "-i", interface, "-n", "-U", "-w", CAPTURE_FILE,
    )  # fmt: skip


def capture_prepare() -> tuple[str, ...]:
    return ("sh", "-c", f"mkdir -p {CAPTURE_DIR} && rm -f {CAPTURE_FILE}")


def capture_stop() -> tuple[str, ...]:
    # SIGINT: tcpdump writes out what it buffered before exiting.
    return ("pkill", "-INT", "-F", CAPTURE_PIDFILE)


def versions(freebsd_version: str, strongswan: str) -> dict[str, str]:
    """versions.json for record mode, from ``freebsd-version -kru`` and pkg."""
    lines = [line.strip() for line in freebsd_version.splitlines() if line.strip()]
    names = ("kernel", "running", "userland")
    found = {f"freebsd-{name}": value for name, value in zip(names, lines)}
    found["freebsd-version"] = lines[1] if len(lines) > 1 else "unknown"
    found["strongswan"] = strongswan.strip() or "unknown"
    return found


def collect(captures: list[Capture], host, client, evidence) -> dict[str, str]:
    """Run *captures* on the *host* and *client* nodes; keep what they said.

    A failing command is evidence too: its status and stderr are kept.
    """
    kept = {}
    for capture in captures:
        node = client if capture.where == "client" else host
        result = node.run(list(capture.argv), check=False, timeout=60)
        text = result.stdout
        if not result.ok:
            text += f"\n[exit status {result.returncode}] {result.stderr.strip()}\n"
        evidence.write_text(capture.name, text)
        kept[capture.name] = text
    return kept
