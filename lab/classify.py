"""Deciding a cell's outcome from the daemons' own words and state.

The rules below read charon's log lines (ike, knl and cfg at level 2) from
both ends and the client's VICI state. Each rule names the outcome it
decides and keeps the log lines that decided it, so a report shows why.
"""

import errno
import re
import signal as signal_module
from dataclasses import dataclass

from lab.outcome import Outcome

# Why a kernel backend could not load, from the client's start-up log.
_BACKEND_REASONS = [
    (re.compile(r"failed to open /dev/(net/)?tun"), "tun"),
    (re.compile(r"requires CAP_NET_ADMIN"), "capability"),
    (re.compile(r"unable to create (PF_KEY|netlink) socket"), "socket"),
]
_BACKEND_MISSING = re.compile(
    r"loading critical plugin 'kernel-[a-z]+' failed"
    r"|unmet dependency: CUSTOM:kernel-ipsec"
)
_CRASH = re.compile(r"killing ourself, received critical signal|received (\d+)$")
_SAD_FAILED = re.compile(r"unable to add SAD entry with SPI [0-9a-f]+")
_SAD_ERRNO = re.compile(r"unable to add SAD entry with SPI [0-9a-f]+: .* \((\d+)\)")
_NETLINK_ERRNO = re.compile(r"received netlink error: .* \((\d+)\)")

# (node, pattern, qualifier) for authentication failures, most specific first.
_AUTH = [
    ("client", re.compile(r"calculated HASH does not match HASH payload"), "psk"),
    ("client", re.compile(r"no shared key found"), "psk"),
    ("responder", re.compile(r"no shared key found"), "psk"),
    ("responder", re.compile(r"XAuth authentication of '[^']*' failed"), "xauth"),
    (
        "client",
        re.compile(r"XAuth authentication of '[^']*' \(myself\) failed"),
        "xauth",
    ),
    ("client", re.compile(r"IDir '[^']*' does not match"), "id"),
    ("responder", re.compile(r"no peer config found"), "id"),
    ("responder", re.compile(r"no matching peer config found"), "id"),
]
_NO_PROPOSAL = [
    ("responder", re.compile(r"\] <[^>]*> no (matching |acceptable )?proposal found")),
    ("client", re.compile(r"received NO_PROPOSAL_CHOSEN")),
]
# Phase 1 is over once an IKE_SA is established; a refusal after that is
# about the Quick Mode (ESP) proposal.
_PHASE1_DONE = re.compile(r"IKE_SA \S+ established")
_TIMEOUT = re.compile(r"giving up after \d+ retransmits|peer not responding")


@dataclass
class Evidence:
    """What the classifier reads for one cell."""

    client_log: str
    responder_log: str
    client_started: bool
    client_alive: bool
    initiate_error: str | None
    children: list[str]
    traffic: dict[str, str | None]  # check name -> None if passed, else why
    backend: str
    loaded_plugins: str = ""


def classify(ev: Evidence) -> Outcome:
    for rule in (_not_started, _crashed, _sad_failed, _auth_failed, _no_proposal):
        outcome = rule(ev)
        if outcome is not None:
            return outcome
    if ev.children:
        return _established(ev)
    return _timeout_or_error(ev)


def _lines(text: str, pattern: re.Pattern) -> list[str]:
    return [line for line in text.splitlines() if pattern.search(line)]


def _not_started(ev: Evidence) -> Outcome | None:
    if ev.client_started:
        return None
    missing = _lines(ev.client_log, _BACKEND_MISSING)
    if missing:
        reason, lines = _backend_reason(ev.client_log)
        return Outcome(
            "KERNEL_IPSEC_UNAVAILABLE",
            reason,
            "charon found no usable kernel IPsec backend and aborted",
            tuple(("client", line) for line in lines + missing[:1]),
        )
    crash = _lines(ev.client_log, _CRASH)
    if crash:
        return _crash_outcome(crash)
    tail = ev.client_log.strip().splitlines()[-3:]
    return Outcome(
        "ERROR",
        "",
        "client charon exited during start for a reason the lab does not know",
        tuple(("client", line) for line in tail),
    )


def _backend_reason(log: str) -> tuple[str, list[str]]:
    for pattern, reason in _BACKEND_REASONS:
        lines = _lines(log, pattern)
        if lines:
            return reason, lines[:1]
    return "plugin", []


def _crashed(ev: Evidence) -> Outcome | None:
    if ev.client_alive:
        return None
    crash = _lines(ev.client_log, _CRASH)
    return _crash_outcome(crash) if crash else None


def _crash_outcome(lines: list[str]) -> Outcome:
    numbers = [
        m.group(1) for line in lines if (m := _CRASH.search(line)) and m.group(1)
    ]
    return Outcome(
        "DAEMON_CRASH",
        _signal_name(int(numbers[0])) if numbers else "",
        "client charon died on a signal",
        tuple(("client", line) for line in lines[:3]),
    )


def _signal_name(number: int) -> str:
    try:
        return signal_module.Signals(number).name
    except ValueError:
        return f"SIG{number}"


def _sad_failed(ev: Evidence) -> Outcome | None:
    lines = ev.client_log.splitlines()
    failed = [n for n, line in enumerate(lines) if _SAD_FAILED.search(line)]
    if not failed:
        return None
    first = failed[0]
    errno_line = _errno_line(lines, first)
    number = None
    if errno_line is not None:
        match = _SAD_ERRNO.search(errno_line) or _NETLINK_ERRNO.search(errno_line)
        number = int(match.group(1))
    name = errno.errorcode.get(number, f"errno{number}") if number else "unknown"
    install = _lines(ev.client_log, re.compile(r"unable to install .* in kernel"))
    deciding = []
    for line in [errno_line] + [lines[n] for n in failed[:2]] + install[:1]:
        if line is not None and line not in deciding:
            deciding.append(line)
    return Outcome(
        "SAD_INSTALL_FAILED",
        name,
        f"the kernel refused the SA: {name}",
        tuple(("client", line) for line in deciding),
    )


def _errno_line(lines: list[str], failed_at: int) -> str | None:
    """The errno behind the SAD failure: on its own line (kernel-pfkey), or
    the nearest netlink error logged just before it (kernel-netlink)."""
    if _SAD_ERRNO.search(lines[failed_at]):
        return lines[failed_at]
    for line in reversed(lines[:failed_at]):
        if _NETLINK_ERRNO.search(line):
            return line
        if _SAD_FAILED.search(line) or "adding SAD entry" in line:
            break
    return None


def _auth_failed(ev: Evidence) -> Outcome | None:
    logs = {"client": ev.client_log, "responder": ev.responder_log}
    for node, pattern, qualifier in _AUTH:
        lines = _lines(logs[node], pattern)
        if lines:
            return Outcome(
                "AUTH_FAILED",
                qualifier,
                f"authentication failed ({qualifier})",
                ((node, lines[0]),),
            )
    return None


def _no_proposal(ev: Evidence) -> Outcome | None:
    logs = {"client": ev.client_log, "responder": ev.responder_log}
    for node, pattern in _NO_PROPOSAL:
        lines = _lines(logs[node], pattern)
        if lines:
            return Outcome(
                "NO_PROPOSAL",
                _phase(logs[node], lines[0]),
                "no common proposal",
                ((node, lines[0]),),
            )
    return None


def _phase(log: str, line: str) -> str:
    before = log[: log.find(line)]
    return "phase2" if _PHASE1_DONE.search(before) else "phase1"


def _established(ev: Evidence) -> Outcome:
    failed = {name: why for name, why in ev.traffic.items() if why is not None}
    if ev.backend == "libipsec" and "kernel-libipsec" not in ev.loaded_plugins:
        failed["backend"] = "kernel-libipsec was asked for but did not load"
    deciding = _lines(ev.client_log, re.compile(r"CHILD_SA \S+ established"))[:1]
    if not failed:
        return Outcome(
            "UP",
            "",
            "tunnel up; traffic passed",
            tuple(("client", line) for line in deciding),
        )
    return Outcome(
        "DEGRADED",
        ",".join(sorted(failed)),
        "; ".join(f"{name}: {why}" for name, why in sorted(failed.items())),
        tuple(("client", line) for line in deciding),
    )


def _timeout_or_error(ev: Evidence) -> Outcome:
    lines = _lines(ev.client_log, _TIMEOUT)
    if lines:
        return Outcome(
            "TIMEOUT", "", "the gateway never answered", (("client", lines[0]),)
        )
    if ev.initiate_error and "timeout" in ev.initiate_error.lower():
        return Outcome("TIMEOUT", "", ev.initiate_error, ())
    return Outcome(
        "ERROR",
        "",
        f"no tunnel and no known cause: {ev.initiate_error or 'initiate returned'}",
        (),
    )
