"""lab/responder.py and lab/proposals.py: the FortiGate-like gateway's config."""

import pytest

from lab import config, proposals, responder
from lab.schema import Identity

GATEWAY = "198.51.100.10"
SPEC = config.load().responder
DAEMON = responder.build(SPEC, GATEWAY)
CONN = DAEMON.conns["fgt"]
CHILD = CONN["children"]["fgt"]

# FortiOS lists every suite for the first DH group, then for the next.
IKE_PROPOSALS = [
    "aes128-sha256-modp2048",
    "aes128-sha1-modp2048",
    "aes256-sha256-modp2048",
    "aes256-sha1-modp2048",
    "aes128-sha256-modp1536",
    "aes128-sha1-modp1536",
    "aes256-sha256-modp1536",
    "aes256-sha1-modp1536",
]


def test_one_connection_and_child_named_fgt():
    assert list(DAEMON.conns) == ["fgt"]
    assert list(CONN["children"]) == ["fgt"]
    assert DAEMON.child == "fgt"


def test_ike_proposals_follow_fortios_order():
    assert CONN["proposals"] == IKE_PROPOSALS


def test_esp_proposals_carry_the_pfs_groups():
    # PFS is on (groups 14 and 5), so every ESP proposal names a DH group.
    assert CHILD["esp_proposals"] == IKE_PROPOSALS


def test_esp_proposals_without_pfs_have_no_group():
    assert proposals.esp(["aes128", "aes256"], ["sha1"], []) == [
        "aes128-sha1",
        "aes256-sha1",
    ]


def test_lifetimes_of_phase1_and_phase2():
    assert CONN["rekey_time"] == "86400s"
    assert CHILD["life_time"] == "43200s"
    # Rekeying starts before the hard lifetime, at 90 %.
    assert CHILD["rekey_time"] == "38880s"


def test_ikev1_aggressive_mode():
    assert (CONN["version"], CONN["aggressive"]) == ("1", "yes")
    assert DAEMON.charon["i_dont_care_about_security_and_use_aggressive_mode_psk"] == (
        "yes"
    )


def test_authentication_rounds_psk_then_xauth_generic():
    assert CONN["local-1"] == {"auth": "psk", "id": GATEWAY}
    assert CONN["remote-1"] == {"auth": "psk", "id": "keyid:labgroup"}
    assert CONN["remote-2"] == {"auth": "xauth-generic"}


def test_dpd_and_nat_traversal():
    assert (CONN["dpd_delay"], CONN["dpd_timeout"]) == ("20s", "60s")
    # nat_traversal: enable lets NAT detection decide; only "forced" encaps.
    assert CONN["encap"] == "no"


def test_pool_hands_out_address_dns_and_split_include():
    assert CONN["pools"] == ["dialup"]
    assert DAEMON.pools == {
        "dialup": {
            "addrs": "203.0.113.200-203.0.113.220",
            "dns": ["203.0.113.53"],
            "split_include": ["203.0.113.0/25"],
        }
    }
    assert CHILD["local_ts"] == ["203.0.113.0/25"]


def test_secrets_are_the_psk_for_the_peer_id_and_each_xauth_user():
    assert DAEMON.secrets == [
        {"type": "IKE", "data": "lab-psk-5f0c1e", "owners": ["keyid:labgroup"]},
        {"type": "XAUTH", "data": "lab-xauth-9d2e47", "owners": ["alice"]},
    ]
    assert responder.secret_values(SPEC) == ["lab-psk-5f0c1e", "lab-xauth-9d2e47"]


def test_banner_goes_to_the_attr_plugin_as_unity_banner():
    assert DAEMON.charon["plugins"] == {"attr": {"28672": "Authorised lab use only"}}


@pytest.mark.parametrize(
    ("kind", "value", "written"),
    [
        ("address", None, GATEWAY),
        ("address", "192.0.2.9", "192.0.2.9"),
        ("fqdn", "fgt.example.com", "fqdn:fgt.example.com"),
        ("userfqdn", "a@example.com", "userfqdn:a@example.com"),
        ("keyid", "labgroup", "keyid:labgroup"),
    ],
)
def test_identity_prefix_per_type(kind, value, written):
    assert responder.identity(Identity(type=kind, value=value), GATEWAY) == written
