"""lab/client.py: the client profile and the auth axis' overrides."""

import pytest

from lab import client, config

GATEWAY = "198.51.100.10"
LAB = config.load()
SPEC = LAB.client


def test_build_dials_the_gateway_in_aggressive_mode():
    daemon = client.build(SPEC, GATEWAY)
    conn = daemon.conns["fgt"]
    assert (conn["version"], conn["aggressive"]) == ("1", "yes")
    assert conn["remote_addrs"] == [GATEWAY]
    assert conn["vips"] == ["0.0.0.0"]
    assert conn["proposals"] == ["aes256-sha256-modp2048", "aes128-sha256-modp2048"]
    assert conn["children"] == {
        "fgt": {
            "remote_ts": ["0.0.0.0/0"],
            "esp_proposals": ["aes256-sha256-modp2048", "aes128-sha1-modp2048"],
        }
    }


def test_build_authenticates_psk_then_xauth():
    conn = client.build(SPEC, GATEWAY).conns["fgt"]
    assert conn["local-1"] == {"auth": "psk", "id": "keyid:labgroup"}
    assert conn["local-2"] == {"auth": "xauth", "xauth_id": "alice"}
    assert conn["remote-1"] == {"auth": "psk", "id": GATEWAY}


def test_build_secrets_and_retransmit_settings():
    daemon = client.build(SPEC, GATEWAY)
    assert daemon.secrets == [
        {
            "type": "IKE",
            "data": "lab-psk-5f0c1e",
            "owners": ["keyid:labgroup", GATEWAY],
        },
        {"type": "XAUTH", "data": "lab-xauth-9d2e47", "owners": ["alice"]},
    ]
    assert daemon.pools == {}
    assert (
        daemon.charon["retransmit_tries"],
        daemon.charon["retransmit_timeout"],
        daemon.charon["retransmit_base"],
    ) == ("3", "1.0", "1.4")


# What each auth value must change. Looked up by name so that no secret
# becomes a test id or parameter (allure would write those into reports/).
OVERRIDDEN = {
    "good": ("lab-psk-5f0c1e", "lab-xauth-9d2e47", "keyid:labgroup"),
    "wrong-psk": ("lab-psk-wrong0", "lab-xauth-9d2e47", "keyid:labgroup"),
    # A nested override replaces one key and keeps its siblings (the user).
    "wrong-xauth": ("lab-psk-5f0c1e", "lab-xauth-wrong0", "keyid:labgroup"),
    "wrong-id": ("lab-psk-5f0c1e", "lab-xauth-9d2e47", "keyid:othergroup"),
}


@pytest.mark.parametrize("auth", sorted(OVERRIDDEN))
def test_with_overrides_changes_only_what_the_auth_value_names(auth):
    psk, password, local_id = OVERRIDDEN[auth]
    spec = client.with_overrides(SPEC, LAB.matrix.auth[auth])
    daemon = client.build(spec, GATEWAY)
    assert (spec.psk, spec.xauth.password, spec.xauth.user) == (psk, password, "alice")
    assert daemon.conns["fgt"]["local-1"]["id"] == local_id
    assert client.secret_values(spec) == [psk, password]


def test_with_overrides_leaves_the_profile_untouched():
    client.with_overrides(SPEC, {"psk": "changed-psk", "xauth": {"user": "bob"}})
    assert (SPEC.psk, SPEC.xauth.user) == ("lab-psk-5f0c1e", "alice")


def test_with_overrides_validates_the_result():
    with pytest.raises(ValueError, match="xauth.password"):
        client.with_overrides(SPEC, {"xauth": {"password": "short"}})
