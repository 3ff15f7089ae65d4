"""lab/vm/freebsd_evidence.py: what a FreeBSD cell keeps, command by command."""

from lab.evidence import EvidenceDir
from lab.redact import Redactor
from lab.vm import freebsd_evidence as fe


def table(captures) -> dict[str, tuple[tuple[str, ...], str]]:
    return {c.name: (c.argv, c.where) for c in captures}


def test_before_the_cell_ipsec_debugging_is_on_in_the_client_stack():
    assert table(fe.before_cell()) == {
        "freebsd/ipsec-debug.txt": (("sysctl", "net.inet.ipsec.debug=1"), "client")
    }


def test_guest_captures():
    shown = table(fe.guest_captures(100))

    assert shown == {
        "freebsd/freebsd-version.txt": (("freebsd-version", "-kru"), "host"),
        "freebsd/uname.txt": (("uname", "-a"), "host"),
        "freebsd/kldstat.txt": (("kldstat",), "host"),
        "freebsd/kern.features.txt": (("sysctl", "kern.features"), "host"),
        "freebsd/net.inet.ipsec.txt": (("sysctl", "net.inet.ipsec"), "host"),
        "freebsd/jls.txt": (("jls", "-n"), "host"),
        "freebsd/pf-rules.txt": (("pfctl", "-a", "vpnjail/*", "-s", "rules"), "host"),
        "freebsd/pf-nat.txt": (("pfctl", "-a", "vpnjail/*", "-s", "nat"), "host"),
        "freebsd/dmesg.txt": (("dmesg",), "host"),
        "freebsd/pkg-info-strongswan.txt": (("pkg", "info", "strongswan"), "host"),
        "freebsd/devfs-ruleset-100.txt": (
            ("devfs", "rule", "-s", "100", "show"),
            "host",
        ),
    }
    assert "freebsd/devfs-ruleset-100.txt" not in table(fe.guest_captures(None))


def test_client_captures_read_the_clients_own_vnet():
    shown = table(fe.client_captures())

    assert shown["client/kernel/setkey-D.txt"] == (("setkey", "-D"), "client")
    assert shown["client/kernel/setkey-DP.txt"] == (("setkey", "-DP"), "client")
    assert shown["client/kernel/net.inet.ipsec.txt"] == (
        ("sysctl", "net.inet.ipsec"),
        "client",
    )
    assert shown["client/swanctl-stats.txt"] == (
        ("swanctl", "--stats", "--uri", "unix:///run/charon.vici"),
        "client",
    )
    assert all(where == "client" for _, where in shown.values())


def test_capture_commands():
    prepare = "mkdir -p /var/db/vjlab/capture && rm -f /var/db/vjlab/capture/wan.pcap"
    assert fe.capture_prepare() == ("sh", "-c", prepare)
    assert fe.capture_start("vtnet1") == (
        "daemon", "-p", "/var/db/vjlab/capture/tcpdump.pid",
        "tcpdump", "-i", "vtnet1", "-n", "-U", "-w", "/var/db/vjlab/capture/wan.pcap",
    )  # fmt: skip
    assert fe.capture_stop() == (
        "pkill", "-INT", "-F", "/var/db/vjlab/capture/tcpdump.pid",
    )  # fmt: skip


def test_versions_for_record_mode():
    found = fe.versions(
        "15.0-RELEASE-p1\n15.0-RELEASE-p1\n15.0-RELEASE-p2\n", "6.0.1_1\n"
    )

    assert found == {
        "freebsd-kernel": "15.0-RELEASE-p1",
        "freebsd-running": "15.0-RELEASE-p1",
        "freebsd-userland": "15.0-RELEASE-p2",
        "freebsd-version": "15.0-RELEASE-p1",
        "strongswan": "6.0.1_1",
    }
    assert fe.versions("", "")["strongswan"] == "unknown"


class Result:
    def __init__(self, returncode, stdout, stderr=""):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr

    @property
    def ok(self):
        return self.returncode == 0


class FakeNode:
    def __init__(self, name, answers):
        self.name, self.answers, self.seen = name, answers, []

    def run(self, argv, check=True, timeout=60.0, input_text=None):
        self.seen.append(argv)
        return self.answers.get(tuple(argv), Result(1, "", "not found"))


def test_collect_runs_each_capture_where_it_belongs_and_keeps_failures(tmp_path):
    host = FakeNode("host", {("uname", "-a"): Result(0, "FreeBSD vjlab 15.0\n")})
    client = FakeNode("client", {("setkey", "-D"): Result(0, "No SAD entries.\n")})
    evidence = EvidenceDir(str(tmp_path), Redactor(["lab-psk-5f0c1e"]))
    captures = [
        fe.Capture("freebsd/uname.txt", ("uname", "-a")),
        fe.Capture("client/kernel/setkey-D.txt", ("setkey", "-D"), "client"),
        fe.Capture("client/kernel/setkey-DP.txt", ("setkey", "-DP"), "client"),
    ]

    kept = fe.collect(captures, host, client, evidence)

    assert host.seen == [["uname", "-a"]]
    assert client.seen == [["setkey", "-D"], ["setkey", "-DP"]]
    assert (tmp_path / "freebsd" / "uname.txt").read_text() == "FreeBSD vjlab 15.0\n"
    assert kept["client/kernel/setkey-DP.txt"] == "\n[exit status 1] not found\n"
