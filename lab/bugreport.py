"""Upstream-ready bug reports from a lab cell's evidence.

``python -m lab bugreport CELL`` writes, for a cell whose tunnel did not
come up, a Markdown body for FreeBSD's Bugzilla or strongSwan's tracker and
a tarball of the cell's evidence. Secrets are removed, and so is every
address outside the documentation ranges (RFC 5737, RFC 3849), every MAC
address and the machine's host name; a capture holding other addresses is
left out of the tarball rather than shipped.
"""

import io
import ipaddress
import json
import os
import re
import tarfile
from dataclasses import dataclass

import dpkt

from lab.redact import Redactor

DOC_NETWORKS = [
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
]
# Addresses that identify nothing and explain a lot in logs.
HARMLESS = [ipaddress.ip_network(n) for n in ("0.0.0.0/8", "127.0.0.0/8", "::/127")]
_IPV4 = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?![\d.])")
# Anything shaped like an IPv6 address; ipaddress decides (a time such as
# 16:04:40 is not one and stays).
_IPV6 = re.compile(r"(?<![0-9A-Za-z:.])([0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7})")
_MAC = re.compile(r"\b([0-9a-f]{2}(?::[0-9a-f]{2}){5})\b", re.IGNORECASE)
UP_KINDS = {"UP"}


class BugReportError(Exception):
    """The cell cannot be reported; the message says why and what can."""


@dataclass
class Report:
    markdown: str
    tarball: str
    omitted: list[str]


def reportable(cell: dict) -> bool:
    """A cell set up to work (good credentials) that did not come up."""
    deliberate = cell.get("axes", {}).get("auth", "good") != "good"
    return _kind(cell) not in UP_KINDS and not deliberate


def find_cell(results: dict, cell_id: str) -> dict:
    cells = {cell["id"]: cell for cell in results["cells"]}
    candidates = [c["id"] for c in results["cells"] if reportable(c)]
    listing = "\n".join(f"  {c}" for c in candidates) or "  (none: every cell came up)"
    if cell_id not in cells:
        raise BugReportError(
            f"no cell {cell_id!r} in this run; cells that can be reported:\n{listing}"
        )
    if _kind(cells[cell_id]) in UP_KINDS:
        raise BugReportError(
            f"cell {cell_id} came up ({cells[cell_id]['outcome']}); there is "
            f"nothing to report. Cells that can be reported:\n{listing}"
        )
    if not reportable(cells[cell_id]):
        raise BugReportError(
            f"cell {cell_id} fails on purpose (auth "
            f"{cells[cell_id]['axes']['auth']}); nothing to report upstream. "
            f"Cells that can be reported:\n{listing}"
        )
    return cells[cell_id]


def _kind(cell: dict) -> str:
    return cell["outcome"].split("(", 1)[0]


def scrub_addresses(text: str, host_name: str | None = None) -> str:
    """Blank every address outside the documentation ranges, MACs, host name."""
    text = _IPV4.sub(lambda m: _keep_or_blank(m.group(1), "<ipv4>"), text)
    text = _IPV6.sub(lambda m: _keep_or_blank(m.group(1), "<ipv6>"), text)
    text = _MAC.sub("<mac>", text)
    if host_name and distinctive(host_name):
        text = re.sub(rf"\b{re.escape(host_name)}\b", "<host>", text)
    return text


def distinctive(host_name: str) -> bool:
    """A host name worth blanking: not a word the lab writes, nor too short
    to tell from one."""
    return len(host_name) >= 4 and host_name.lower() not in LAB_WORDS


def _keep_or_blank(candidate: str, mark: str) -> str:
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return candidate
    if any(address in net for net in DOC_NETWORKS + HARMLESS):
        return candidate
    return mark


def pcap_addresses(blob: bytes) -> set[str]:
    """Every IP address in a capture (used to decide if it may be shipped)."""
    found = set()
    for _, frame in dpkt.pcap.Reader(io.BytesIO(blob)):
        packet = dpkt.ethernet.Ethernet(frame).data
        if isinstance(packet, (dpkt.ip.IP, dpkt.ip6.IP6)):
            for raw in (packet.src, packet.dst):
                found.add(str(ipaddress.ip_address(raw)))
    return found


def pcap_is_shareable(blob: bytes) -> bool:
    try:
        addresses = pcap_addresses(blob)
    except (dpkt.dpkt.Error, ValueError):
        return False
    return all(
        any(ipaddress.ip_address(a) in net for net in DOC_NETWORKS + HARMLESS)
        for a in addresses
    )


def build_tarball(
    evidence_dir: str, target: str, redactor: Redactor, host_name: str | None
) -> list[str]:
    """Write the scrubbed evidence to *target*; return what was left out."""
    omitted = []
    with tarfile.open(target, "w:gz") as tar:
        for folder, _, names in os.walk(evidence_dir):
            for name in sorted(names):
                path = os.path.join(folder, name)
                relative = os.path.relpath(path, evidence_dir)
                data = _scrubbed(path, redactor, host_name)
                if data is None:
                    omitted.append(relative)
                    continue
                info = tarfile.TarInfo(os.path.join("evidence", relative))
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return omitted


def _scrubbed(path: str, redactor: Redactor, host_name: str | None) -> bytes | None:
    with open(path, "rb") as src:
        blob = src.read()
    if path.endswith(".pcap"):
        return blob if pcap_is_shareable(blob) and not redactor.leaks(blob) else None
    if path.endswith(".html"):
        return None  # generated pages; the Markdown report replaces them
    text = blob.decode(errors="replace")
    return scrub_addresses(redactor.text(text), host_name).encode()


def render_markdown(run: dict, cell: dict, facts: dict, tracker: str) -> str:
    lines = [
        f"# {_summary(cell, facts)}",
        "",
        f"*Target: {TRACKERS[tracker]}. Produced by the vpnjail lab from run "
        f"{run.get('id')}, cell `{cell['id']}`.*",
        "",
        "## Environment",
        "",
        *[f"- {name}: {value}" for name, value in _environment(run, facts).items()],
        "",
        "## Steps to reproduce",
        "",
        "On a Debian 12 machine, as root, from a clone of the lab:",
        "",
        "```sh",
        _reproduce(cell, run),
        "```",
        "",
        "The client runs strongSwan's charon with this configuration "
        "(`client/strongswan.conf`, `client/swanctl.conf` in the tarball) against "
        "a FortiGate-like IKEv1 responder: Aggressive Mode, PSK, XAuth, "
        "mode-config.",
        "",
        "## Actual result",
        "",
        f"`{cell['outcome']}`: {cell.get('detail', '')}",
        "",
        "```",
        *[f"{node}: {line}" for node, line in cell.get("deciding", [])],
        "```",
        "",
        "## Expected result",
        "",
        "The CHILD_SA is installed and traffic flows through the tunnel (`UP`).",
        "",
        "## Ruled out",
        "",
        *_ruled_out(facts),
        "",
        "## Attachments",
        "",
        "`evidence.tar.gz`: both ends' configuration and charon logs (ike, knl, "
        "cfg at level 2), VICI state, the client's kernel SA/policy/route tables "
        "and, where shareable, a capture of the wan link. Secrets, addresses "
        "outside the documentation ranges, MAC addresses and the host name are "
        "removed.",
    ]
    return "\n".join(lines) + "\n"


def _reproduce(cell: dict, run: dict) -> str:
    axes = cell["axes"]
    if cell["id"].startswith("vpnjail/"):
        backend = "kernel" if axes["backend"] == "netlink" else axes["backend"]
        return (
            "./scripts/setup && .venv/bin/python -m pytest scenarios/test_vpnjail.py "
            f"-k '{backend}/{axes['devices']}'"
        )
    selection = " ".join(f"--axis {k}={v}" for k, v in axes.items())
    if _platform_of(cell) == "freebsd":
        image = (
            f"/path/to/FreeBSD-{axes.get('freebsd', '15.0')}-RELEASE-amd64-"
            "BASIC-CLOUDINIT-ufs.qcow2"
        )
        return (
            "./scripts/setup && .venv/bin/python -m pytest scenarios/test_freebsd.py "
            f"--image {image} --cells full {selection}"
        )
    placement = " --responder vm" if run.get("responder") == "vm" else ""
    return (
        f"./scripts/setup && .venv/bin/python -m lab run{placement} "
        f"--cells full {selection}"
    )


def _platform_of(cell: dict) -> str:
    return cell["id"].split("/", 1)[0]


RESPONDERS = {
    "namespaces": "strongSwan in network namespaces of the lab's machine",
    "vm": "strongSwan in the lab's Debian 12 guest (kernel-netlink)",
    "freebsd-vm": "strongSwan in a FreeBSD guest outside any jail (kernel-pfkey)",
}
# Words the lab itself writes in reports and logs: a host named like one
# of them is not identifying, and blanking it would garble the report.
LAB_WORDS = {
    "vm", "lab", "local", "host", "jail", "gw", "wan", "lan", "linux",
    "freebsd", "debian", "vpnjail", "vjlab", "charon", "client", "responder",
    "root", "guest", "good", "nat", "direct",
}  # fmt: skip
TRACKERS = {
    "freebsd": "FreeBSD Bugzilla (https://bugs.freebsd.org/), component kern",
    "strongswan": "strongSwan issues (https://github.com/strongswan/strongswan/issues)",
}


STACKS = {
    ("freebsd", "vnet"): "a vnet jail",
    ("freebsd", "jail"): "a classic jail",
    ("freebsd", "host"): "the host",
    ("local", "jail"): "a network namespace of its own (Linux)",
    ("vpnjail", "jail"): "a vpnjail network namespace (Linux)",
    ("local", "host"): "the host stack (Linux)",
}


def _summary(cell: dict, facts: dict) -> str:
    axes = cell["axes"]
    platform = cell["id"].split("/", 1)[0]
    where = STACKS.get((platform, axes.get("isolation", "")), "an isolated stack")
    when = WHEN.get(_kind(cell), "")
    return (
        f"strongSwan {axes.get('backend', '?')} in {where}: {cell['outcome']}"
        f"{when} (strongSwan {facts.get('strongswan') or '?'}, "
        f"kernel {facts.get('kernel') or '?'})"
    )


# When in the exchange each outcome happens, for the report's title.
WHEN = {
    "SAD_INSTALL_FAILED": " after phase 1 and XAuth succeed",
    "KERNEL_IPSEC_UNAVAILABLE": ": charon cannot start",
    "DAEMON_CRASH": ": charon dies",
    "DEGRADED": ": the tunnel is up but traffic fails",
    "NO_PROPOSAL": ": no common proposal",
    "TIMEOUT": ": the gateway never answers",
}


def _environment(run: dict, facts: dict) -> dict:
    env = {
        "kernel": facts.get("kernel", run.get("kernel", "?")),
        "strongSwan": facts.get("strongswan", "?"),
        "charon plugins": facts.get("plugins", "?"),
        "platform": run.get("platform", "?"),
        "responder": RESPONDERS.get(run.get("responder", "namespaces"), "?"),
    }
    for name, answer in sorted((run.get("capabilities") or {}).items()):
        env[f"capability {name}"] = (
            f"{'yes' if answer.get('value') else 'no'} ({answer.get('detail', '')})"
        )
    for name, value in (facts.get("freebsd") or {}).items():
        env[name] = value
    return env


def _ruled_out(facts: dict) -> list[str]:
    probe = facts.get("probe")
    if probe:
        return [f"- PF_KEY probe: {probe.get('verdict', {}).get('summary', '?')}"]
    capabilities = facts.get("capabilities") or {}
    esp = capabilities.get("esp", {})
    af_key = capabilities.get("af_key", {})
    lines = []
    if af_key and not af_key.get("value"):
        lines.append(
            "- The PF_KEY probe cannot run here: this kernel has no AF_KEY "
            f"socket ({af_key.get('detail', '')})."
        )
    if esp and _kind_of(facts) == "SAD_INSTALL_FAILED":
        state = "accepts" if esp.get("value") else "refuses"
        verdict = (
            "so the refusal is the kernel's, not the daemon's"
            if not esp.get("value")
            else "so the kernel's ESP support itself is not the cause"
        )
        lines.append(
            f"- Outside strongSwan, the kernel {state} a plain ESP SA "
            f"({esp.get('detail', '')}), {verdict}."
        )
    return lines or ["- Nothing was probed beyond the cell itself."]


def _kind_of(facts: dict) -> str:
    return facts.get("outcome", "").split("(", 1)[0]


_STARTING = re.compile(
    r"Starting IKE charon daemon \(strongSwan ([^,]+), (\S+ [^,\s]+)"
)


def cell_facts(run: dict, evidence_dir: str, cell: dict | None = None) -> dict:
    """Versions and probe results found in a cell's evidence."""
    facts = {
        "kernel": run.get("kernel"),
        "capabilities": run.get("capabilities"),
        "outcome": (cell or {}).get("outcome", ""),
    }
    for log_name in ("client/charon.log", "client-charon.log"):
        path = os.path.join(evidence_dir, log_name)
        if os.path.exists(path):
            with open(path, errors="replace") as src:
                match = _STARTING.search(src.read())
            if match:
                facts["strongswan"], facts["kernel"] = match.groups()
            break
    vici = os.path.join(evidence_dir, "client", "vici.json")
    if os.path.exists(vici):
        with open(vici) as src:
            state = json.load(src)
        version = state.get("version") or {}
        if version:
            facts["strongswan"] = version.get("version")
            facts["kernel"] = f"{version.get('sysname')} {version.get('release')}"
        plugins = (state.get("stats") or {}).get("plugins")
        if plugins:
            facts["plugins"] = " ".join(plugins)
    if not facts.get("plugins"):
        facts["plugins"] = _configured_plugins(evidence_dir)
    probe = os.path.join(evidence_dir, "probe.json")
    if os.path.exists(probe):
        with open(probe) as src:
            facts["probe"] = json.load(src)
    return facts


def _configured_plugins(evidence_dir: str) -> str | None:
    """The plugin list charon was given, when it never said what it loaded."""
    path = os.path.join(evidence_dir, "client", "strongswan.conf")
    try:
        with open(path) as src:
            for line in src:
                if line.strip().startswith("load ="):
                    return (
                        "configured (charon did not start): "
                        + line.split("=", 1)[1].strip()
                    )
    except OSError:
        return None
    return None


def default_tracker(cell: dict, run: dict) -> str:
    kernel_refused = _kind(cell) == "SAD_INSTALL_FAILED"
    return (
        "freebsd"
        if _platform_of(cell) == "freebsd" and kernel_refused
        else ("strongswan")
    )


def write(
    run_dir: str, results: dict, cell_id: str, redactor: Redactor, tracker: str | None
) -> Report:
    cell = find_cell(results, cell_id)
    run = results.get("run", {})
    evidence_dir = os.path.join(run_dir, cell["evidence"])
    if not os.path.isdir(evidence_dir):
        raise BugReportError(f"{cell_id}: its evidence {evidence_dir} is gone")
    tracker = tracker or default_tracker(cell, run)
    out_dir = os.path.join(run_dir, "bugreports", os.path.basename(evidence_dir))
    os.makedirs(out_dir, exist_ok=True)
    host = run.get("host")
    markdown = render_markdown(run, cell, cell_facts(run, evidence_dir, cell), tracker)
    markdown = scrub_addresses(redactor.text(markdown), host)
    report_path = os.path.join(out_dir, f"report-{tracker}.md")
    with open(report_path, "w") as out:
        out.write(markdown)
    tarball = os.path.join(out_dir, "evidence.tar.gz")
    omitted = build_tarball(evidence_dir, tarball, redactor, host)
    return Report(report_path, tarball, omitted)
