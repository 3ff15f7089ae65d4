"""vpnjail/vici_control.py against fake sessions answering as vici does.

The vici package decodes keys to str and leaves values as bytes, in
OrderedDicts; lists hold bytes (see lab/vici_client.py).
"""

from collections import OrderedDict

import pytest
import vici

from vpnjail import vici_control


def child_sa(state: str = "INSTALLED") -> OrderedDict:
    return OrderedDict(
        [
            ("name", b"vpn"),
            ("uniqueid", b"1"),
            ("state", state.encode()),
            ("bytes-in", b"1234"),
            ("packets-in", b"12"),
            ("bytes-out", b"567"),
            ("packets-out", b"9"),
            ("local-ts", [b"203.0.113.77/32"]),
            ("remote-ts", [b"0.0.0.0/0"]),
        ]
    )


def ike_sa(state="ESTABLISHED", children=("INSTALLED",), vips=(b"203.0.113.77",)):
    ike = OrderedDict(
        [
            ("uniqueid", b"1"),
            ("version", b"1"),
            ("state", state.encode()),
            ("local-host", b"192.0.2.2"),
            ("remote-host", b"198.51.100.10"),
            ("child-sas", OrderedDict(
                (f"vpn-{n}", child_sa(s)) for n, s in enumerate(children, 1))),
        ]
    )  # fmt: skip
    if vips is not None:
        ike["local-vips"] = list(vips)
    return OrderedDict([("vpn", ike)])


class FakeSession:
    def __init__(self, sas=(), initiate_error: str | None = None):
        self._sas = list(sas)
        self.initiate_error = initiate_error
        self.calls: list[tuple] = []

    def list_sas(self, filters=None):
        return iter(self._sas)

    def load_conn(self, conns):
        self.calls.append(("load_conn", conns))

    def load_shared(self, secret):
        self.calls.append(("load_shared", secret))

    def initiate(self, request):
        self.calls.append(("initiate", request))
        yield OrderedDict([("msg", b"initiating")])
        if self.initiate_error is not None:
            raise vici.exception.CommandException(self.initiate_error)


def test_describe_reports_ike_child_vip_and_counters():
    assert vici_control.describe(FakeSession([ike_sa()])) == {
        "state": "up",
        "ike": "ESTABLISHED",
        "virtual_ip": "203.0.113.77",
        "gateway": "198.51.100.10",
        "children": [
            {
                "name": "vpn",
                "state": "INSTALLED",
                "bytes_in": 1234,
                "bytes_out": 567,
                "packets_in": 12,
                "packets_out": 9,
                "remote_ts": ["0.0.0.0/0"],
            }
        ],
    }


def test_describe_without_an_ike_sa():
    assert vici_control.describe(FakeSession()) == {
        "state": "no IKE_SA",
        "ike": None,
        "children": [],
    }


def test_describe_of_a_connecting_ike_sa():
    info = vici_control.describe(FakeSession([ike_sa("CONNECTING", (), vips=None)]))
    assert (info["state"], info["ike"], info["virtual_ip"], info["children"]) == (
        "connecting",
        "CONNECTING",
        None,
        [],
    )


def test_describe_is_not_up_without_an_installed_child_sa():
    session = FakeSession([ike_sa("ESTABLISHED", ())])
    assert vici_control.established(session) is False
    assert vici_control.describe(session)["state"] != "up"


@pytest.mark.parametrize(
    ("sas", "established"),
    [
        ([ike_sa()], True),
        ([ike_sa("ESTABLISHED", ("REKEYING", "INSTALLED"))], True),
        ([ike_sa("ESTABLISHED", ())], False),
        ([ike_sa("ESTABLISHED", ("CREATED",))], False),
        ([ike_sa("CONNECTING", ("INSTALLED",))], False),
        ([ike_sa("DELETING"), ike_sa()], True),
        ([], False),
    ],
    ids=["up", "rekeying", "no-child", "child-created", "connecting",
         "second-sa", "none"],
)  # fmt: skip
def test_established_needs_an_installed_child_under_an_established_ike(
    sas, established
):
    assert vici_control.established(FakeSession(sas)) is established


@pytest.mark.parametrize(
    ("sas", "vip"),
    [
        ([ike_sa()], "203.0.113.77"),
        ([ike_sa(vips=(b"203.0.113.77", b"203.0.113.78"))], "203.0.113.77"),
        ([ike_sa(vips=())], None),
        ([ike_sa(vips=None)], None),
        ([ike_sa(vips=None), ike_sa(vips=(b"198.51.100.77",))], "198.51.100.77"),
        ([], None),
    ],
)
def test_virtual_ip_is_the_first_local_vip_as_text(sas, vip):
    assert vici_control.virtual_ip(FakeSession(sas)) == vip


def test_load_sends_the_connection_then_each_secret():
    session = FakeSession()
    secrets = [{"type": "IKE", "data": "s1", "owners": []},
               {"type": "XAUTH", "data": "s2", "owners": ["alice"]}]  # fmt: skip
    vici_control.load(session, {"vpn": {}}, secrets)
    assert session.calls == [
        ("load_conn", {"vpn": {}}),
        ("load_shared", secrets[0]),
        ("load_shared", secrets[1]),
    ]


def test_initiate_returns_none_on_success_and_sends_the_timeout_in_ms():
    session = FakeSession()
    assert vici_control.initiate(session, "vpn", 2.5) is None
    assert session.calls == [
        ("initiate", {"child": "vpn", "timeout": 2500, "init-limits": "no"})
    ]


def test_initiate_returns_charons_error():
    session = FakeSession(initiate_error="establishing CHILD_SA 'vpn' failed")
    assert vici_control.initiate(session, "vpn", 1) == (
        "establishing CHILD_SA 'vpn' failed"
    )


def test_plain_turns_vici_answers_into_json_types():
    answer = OrderedDict([("a", b"1"), ("b", [b"x", b"\xff"]),
                          ("c", OrderedDict([("d", b"2")]))])  # fmt: skip
    assert vici_control.plain(answer) == {"a": "1", "b": ["x", "\ufffd"],
                                          "c": {"d": "2"}}  # fmt: skip


def test_a_missing_socket_is_not_reachable(tmp_path):
    assert vici_control.reachable(str(tmp_path / "charon.vici")) is False


# -- last DPD -------------------------------------------------------------------

DPD_LOG = """\
Dec  4 15:46:23 15[IKE] <fgt|1> sending DPD vendor ID
Dec  4 15:46:23 02[IKE] <fgt|1> received DPD vendor ID
Dec  4 15:46:43 11[ENC] <fgt|1> generating INFORMATIONAL_V1 request 1 [ HASH N(DPD) ]
Dec  4 15:46:43 12[ENC] <fgt|1> parsed INFORMATIONAL_V1 request 2 [ HASH N(DPD_ACK) ]
Dec  4 15:47:03 13[ENC] <fgt|1> generating INFORMATIONAL_V1 request 3 [ HASH N(DPD) ]
Dec 14 09:01:02 14[IKE] <fgt|1> sending DPD vendor ID
"""


@pytest.mark.parametrize(
    ("text", "last"),
    [
        (DPD_LOG, "Dec  4 15:47:03"),
        (DPD_LOG.replace("N(DPD) ]\nDec 14", "x ]\nDec 14"), "Dec  4 15:46:43"),
        (DPD_LOG + "Dec 14 09:01:05 07[ENC] <fgt|1> parsed INFORMATIONAL_V1 "
         "request 4 [ HASH N(DPD_ACK) ]\n", "Dec 14 09:01:05"),
        ("Dec  4 15:46:23 15[IKE] <fgt|1> sending DPD vendor ID\n", None),
        ("", None),
    ],
    ids=["dpd", "dpd-ack", "two-digit-day", "vendor-id-only", "empty"],
)  # fmt: skip
def test_last_dpd_is_the_time_of_the_last_r_u_there(tmp_path, text, last):
    log = tmp_path / "charon.log"
    log.write_text(text)
    assert vici_control.last_dpd(str(log)) == last


def test_last_dpd_of_no_log_is_none(tmp_path):
    assert vici_control.last_dpd(str(tmp_path / "charon.log")) is None
