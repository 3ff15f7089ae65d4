"""lab/classify.py on charon logs recorded from real lab runs.

Each directory of tests/data/logs holds the client's and the responder's
charon.log of one run; the VICI facts a run would add (started, alive,
established children, traffic) are given per case below.
"""

import re
from pathlib import Path

import pytest

from lab import schema
from lab.classify import Evidence, classify

LOGS = Path(__file__).parent / "data" / "logs"
TRAFFIC_OK = {"ping": None, "tcp": None, "forward": None}
# What vici_client.initiate returns when charon refuses: it says nothing about
# the cause, so every non-UP outcome below is decided by the logs alone.
INITIATE_FAILED = "establishing CHILD_SA 'fgt' failed"


def read_log(case: str, node: str) -> str:
    return (LOGS / case / f"{node}.log").read_text()


def loaded_plugins(log_text: str) -> str:
    """The plugin list of charon's "loaded plugins:" line, as the cell reads it."""
    match = re.search(r"loaded plugins:(.*)", log_text)
    return match.group(1) if match else ""


def evidence(
    case: str,
    *,
    started: bool = True,
    alive: bool = True,
    children: tuple[str, ...] = (),
    traffic: dict | None = None,
    backend: str = "libipsec",
    initiate_error: str | None = INITIATE_FAILED,
) -> Evidence:
    client_log = read_log(case, "client")
    return Evidence(
        client_log=client_log,
        responder_log=read_log(case, "responder"),
        client_started=started,
        client_alive=alive,
        initiate_error=initiate_error if started else None,
        children=list(children),
        traffic=dict(traffic or {}),
        backend=backend,
        loaded_plugins=loaded_plugins(client_log),
    )


# case, Evidence facts, outcome, node whose log decides.
CASES = [
    (
        "up",
        dict(children=("fgt",), traffic=TRAFFIC_OK, initiate_error=None),
        "UP",
        "client",
    ),
    (
        "sad-netlink",
        dict(backend="netlink"),
        "SAD_INSTALL_FAILED(EPROTONOSUPPORT)",
        "client",
    ),
    (
        "no-tun",
        dict(started=False, alive=False),
        "KERNEL_IPSEC_UNAVAILABLE(tun)",
        "client",
    ),
    ("wrong-psk", {}, "AUTH_FAILED(psk)", "client"),
    ("wrong-xauth", {}, "AUTH_FAILED(xauth)", "responder"),
    ("wrong-id", {}, "AUTH_FAILED(id)", "responder"),
    ("remote-id-mismatch", {}, "AUTH_FAILED(id)", "client"),
    ("no-proposal-phase1", {}, "NO_PROPOSAL(phase1)", "responder"),
    ("no-proposal-phase2", {}, "NO_PROPOSAL(phase2)", "responder"),
    # charon died while starting: never started, as the lab sees it ...
    (
        "fallback-crash",
        dict(started=False, alive=False),
        "DAEMON_CRASH(SIGSEGV)",
        "client",
    ),
    # ... or started (VICI answered) and then died before the initiate.
    ("fallback-crash", dict(alive=False), "DAEMON_CRASH(SIGSEGV)", "client"),
    ("timeout", dict(backend="netlink"), "TIMEOUT", "client"),
]
CASE_IDS = [
    f"{case}-{'started' if facts.get('started', True) else 'not-started'}"
    for case, facts, _, _ in CASES
]
# The words of the first deciding line of each case.
DECIDING_TEXT = {
    "up": "<fgt|1> CHILD_SA fgt{1} established",
    "sad-netlink": "received netlink error: Protocol not supported (93)",
    "no-tun": "failed to open /dev/net/tun",
    "wrong-psk": "calculated HASH does not match HASH payload",
    "wrong-xauth": "XAuth authentication of 'alice' failed",
    "wrong-id": "<1> no peer config found",
    "remote-id-mismatch": "IDir '198.51.100.10' does not match to 'fgt.example.com'",
    "no-proposal-phase1": "<1> no proposal found",
    "no-proposal-phase2": "no matching proposal found, sending NO_PROPOSAL_CHOSEN",
    "fallback-crash": "thread 5 received 11",
    "timeout": "giving up after 2 retransmits",
}


@pytest.mark.parametrize(("case", "facts", "want", "node"), CASES, ids=CASE_IDS)
def test_recorded_logs_classify_to_their_outcome(case, facts, want, node):
    assert str(classify(evidence(case, **facts))) == want


@pytest.mark.parametrize(("case", "facts", "want", "node"), CASES, ids=CASE_IDS)
def test_deciding_lines_are_quoted_from_the_named_log(case, facts, want, node):
    outcome = classify(evidence(case, **facts))
    assert outcome.deciding, f"{want} kept no deciding line"
    assert outcome.deciding[0][0] == node
    assert DECIDING_TEXT[case] in outcome.deciding[0][1]
    for source, line in outcome.deciding:
        assert line in read_log(case, source).splitlines()


def test_loaded_plugins_helper_reads_the_up_log():
    plugins = loaded_plugins(read_log("up", "client")).split()
    assert plugins[0] == "charon"
    assert plugins[-2:] == ["kernel-libipsec", "kernel-netlink"]


def test_fallback_crash_log_is_the_non_critical_fallback():
    # Why this log is a crash and no-tun is not: the same tun failure, but
    # kernel-libipsec was not critical, so charon went on with kernel-netlink.
    log_text = read_log("fallback-crash", "client")
    assert "(strongSwan 5.9.8," in log_text
    assert "failed to open /dev/net/tun" in log_text
    assert "loading critical plugin" not in log_text
    assert "kernel-netlink" in loaded_plugins(log_text).split()
    assert "kernel-libipsec" not in loaded_plugins(log_text).split()


def test_up_keeps_the_child_sa_line():
    outcome = classify(
        evidence("up", children=("fgt",), traffic=TRAFFIC_OK, initiate_error=None)
    )
    assert outcome.deciding == (
        (
            "client",
            "Dec  4 15:44:22 12[IKE] <fgt|1> CHILD_SA fgt{1} established with SPIs "
            "b6dd5260_i 07e309fd_o and TS 203.0.113.200/32 === 203.0.113.0/25 "
            "203.0.113.0/25",
        ),
    )


@pytest.mark.parametrize(
    ("failing", "want"),
    [
        ({"ping": "no replies"}, "DEGRADED(ping)"),
        ({"tcp": "no answer"}, "DEGRADED(tcp)"),
        ({"forward": "refused"}, "DEGRADED(forward)"),
        # Qualifiers are sorted so the same failures always read the same.
        ({"tcp": "no answer", "forward": "refused"}, "DEGRADED(forward,tcp)"),
    ],
)
def test_up_with_failing_traffic_check_is_degraded(failing, want):
    traffic = {**TRAFFIC_OK, **failing}
    outcome = classify(evidence("up", children=("fgt",), traffic=traffic))
    assert str(outcome) == want
    for name, why in failing.items():
        assert f"{name}: {why}" in outcome.detail


def test_libipsec_asked_for_but_not_loaded_is_degraded_backend():
    # The plugin list of the fallback run (kernel-libipsec failed, netlink
    # loaded): had charon survived and brought the tunnel up, the cell would
    # have tested the wrong backend.
    ev = evidence("up", children=("fgt",), traffic=TRAFFIC_OK)
    ev.loaded_plugins = loaded_plugins(read_log("fallback-crash", "client"))
    assert str(classify(ev)) == "DEGRADED(backend)"


def test_netlink_cell_needs_no_libipsec_plugin():
    ev = evidence("up", children=("fgt",), traffic=TRAFFIC_OK, backend="netlink")
    ev.loaded_plugins = loaded_plugins(read_log("sad-netlink", "client"))
    assert str(classify(ev)) == "UP"


def test_sad_netlink_deciding_lines_are_errno_failures_and_install():
    outcome = classify(evidence("sad-netlink", backend="netlink"))
    texts = [line.split("] ", 1)[1] for _, line in outcome.deciding]
    assert texts == [
        "<fgt|1> received netlink error: Protocol not supported (93)",
        "<fgt|1> unable to add SAD entry with SPI c968ed64 (FAILED)",
        "<fgt|1> unable to add SAD entry with SPI 42ac4c18 (FAILED)",
        "<fgt|1> unable to install inbound and outbound IPsec SA (SAD) in kernel",
    ]


def test_timeout_has_an_empty_responder_log():
    # The gateway never saw a packet: the recorded responder log is empty.
    assert read_log("timeout", "responder") == ""
    outcome = classify(evidence("timeout", backend="netlink"))
    assert outcome.deciding == (
        ("client", "Dec  4 15:46:49 05[IKE] <fgt|1> giving up after 2 retransmits"),
    )


def test_initiate_timeout_without_log_line_is_timeout():
    ev = Evidence("", "", True, True, "timeout after 30000 ms", [], {}, "netlink")
    assert str(classify(ev)) == "TIMEOUT"


def test_no_tunnel_and_no_known_cause_is_error():
    ev = Evidence("", "", True, True, None, [], {}, "netlink")
    outcome = classify(ev)
    assert str(outcome) == "ERROR"
    assert "initiate returned" in outcome.detail


# A synthetic FreeBSD excerpt (no recorded FreeBSD run yet): kernel-pfkey's
# wording when the kernel lacks the ipsec module.
PFKEY_SAD_LINE = (
    "Dec  4 16:00:00 07[KNL] <fgt|1> unable to add SAD entry with SPI c1a2b3c4: "
    "Invalid argument (22)"
)


def test_pfkey_sad_failure_is_einval():
    ev = Evidence(PFKEY_SAD_LINE + "\n", "", True, True, None, [], {}, "pfkey")
    outcome = classify(ev)
    assert str(outcome) == "SAD_INSTALL_FAILED(EINVAL)"
    assert ("client", PFKEY_SAD_LINE) in outcome.deciding


def test_pfkey_sad_failure_keeps_its_line_once():
    ev = Evidence(PFKEY_SAD_LINE + "\n", "", True, True, None, [], {}, "pfkey")
    assert classify(ev).deciding == (("client", PFKEY_SAD_LINE),)


def test_sad_errno_comes_from_the_error_before_the_sad_line():
    # Synthetic: an unrelated earlier netlink error (a route that exists)
    # must not name the errno of a later SA refusal.
    log_text = "\n".join(
        [
            "00[KNL] received netlink error: File exists (17)",
            "00[KNL] unable to install source route for 203.0.113.200",
            "07[KNL] <fgt|1> received netlink error: Protocol not supported (93)",
            "07[KNL] <fgt|1> unable to add SAD entry with SPI c968ed64 (FAILED)",
        ]
    )
    ev = Evidence(log_text, "", True, True, None, [], {}, "netlink")
    assert str(classify(ev)) == "SAD_INSTALL_FAILED(EPROTONOSUPPORT)"


@pytest.mark.parametrize(
    ("why_line", "reason"),
    [
        ("00[LIB] failed to open /dev/net/tun: No such file or directory", "tun"),
        # FreeBSD's device has no net/ directory.
        ("00[LIB] failed to open /dev/tun: No such file or directory", "tun"),
        ("00[KNL] unable to create PF_KEY socket", "socket"),
        # No line saying why: the qualifier still says a plugin was missing.
        (None, "plugin"),
    ],
)
def test_unmet_kernel_ipsec_dependency_is_kernel_ipsec_unavailable(why_line, reason):
    # Synthetic: the words charon uses when no kernel-ipsec plugin loaded at
    # all, as kernel-pfkey without the ipsec module would leave it.
    unmet = "00[LIB] feature CUSTOM:libcharon in critical plugin 'charon' has "
    unmet += "unmet dependency: CUSTOM:kernel-ipsec"
    lines = [why_line] if why_line else []
    lines += [unmet, "00[DMN] initialization failed - aborting charon"]
    ev = Evidence("\n".join(lines), "", False, False, None, [], {}, "pfkey")
    outcome = classify(ev)
    assert str(outcome) == f"KERNEL_IPSEC_UNAVAILABLE({reason})"
    assert outcome.deciding[-1] == ("client", unmet)


def test_unknown_start_failure_is_error_with_the_log_tail():
    log_text = "a\nb\nc\nd\n"
    outcome = classify(Evidence(log_text, "", False, False, None, [], {}, "netlink"))
    assert str(outcome) == "ERROR"
    assert outcome.deciding == (("client", "b"), ("client", "c"), ("client", "d"))


@pytest.mark.parametrize(
    ("case", "facts"),
    [(case, facts) for case, facts, _, _ in CASES],
    ids=CASE_IDS,
)
def test_outcome_can_be_recorded_as_an_expectation(case, facts):
    outcome = classify(evidence(case, **facts))
    schema.Rule(expect=str(outcome))


def test_degraded_with_two_failed_checks_can_be_recorded_as_an_expectation():
    traffic = {**TRAFFIC_OK, "tcp": "no answer", "forward": "refused"}
    outcome = classify(evidence("up", children=("fgt",), traffic=traffic))
    schema.Rule(expect=str(outcome))
