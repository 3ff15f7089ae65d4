"""vpnjail/render.py: what a profile becomes in charon and over VICI."""

import os

import pytest

from vpnjail import render
from vpnjail.profile import Profile, ProfileError

PSK = "render-psk-Hn40"
XAUTH = "render-xauth-Vb93"


def make(**changes) -> Profile:
    data = {
        "name": "office",
        "gateway": "198.51.100.10",
        "ike": {
            "proposals": ["aes256-sha256-modp2048"],
            "esp_proposals": ["aes256-sha256"],
        },
        "local_id": {"type": "keyid", "value": "labgroup"},
        "auth": {"psk": {"env": "VJ_RENDER_PSK"}},
    }
    data.update(changes)
    return Profile.model_validate(data)


def with_xauth(**changes) -> Profile:
    auth = {
        "psk": {"env": "VJ_RENDER_PSK"},
        "xauth": {"user": "alice", "password": {"env": "VJ_RENDER_XAUTH"}},
    }
    return make(auth=auth, **changes)


def test_connection_of_a_fortigate_profile_is_exactly_this():
    assert render.connection(with_xauth()) == {
        "vpn": {
            "version": "1",
            "aggressive": "yes",
            "remote_addrs": ["198.51.100.10"],
            "proposals": ["aes256-sha256-modp2048"],
            "rekey_time": "86400s",
            "dpd_delay": "20s",
            "dpd_timeout": "60s",
            "local-1": {"auth": "psk", "id": "keyid:labgroup"},
            "remote-1": {"auth": "psk", "id": "%any"},
            "children": {
                "vpn": {
                    "remote_ts": ["0.0.0.0/0"],
                    "esp_proposals": ["aes256-sha256"],
                    "life_time": "43200s",
                    "rekey_time": "38880s",
                    "dpd_action": "restart",
                    "close_action": "restart",
                }
            },
            "local-2": {"auth": "xauth", "xauth_id": "alice"},
            "vips": ["0.0.0.0"],
            "pull": "yes",
        }
    }


@pytest.mark.parametrize(("mode", "aggressive"), [("aggressive", "yes"),
                                                   ("main", "no")])  # fmt: skip
def test_aggressive_follows_the_ike_mode(mode, aggressive):
    ike = {"mode": mode, "proposals": ["aes128-sha1-modp1024"],
           "esp_proposals": ["aes128-sha1"]}  # fmt: skip
    assert render.connection(make(ike=ike))["vpn"]["aggressive"] == aggressive


@pytest.mark.parametrize(
    ("mode_config", "expected"),
    [
        ("pull", {"vips": ["0.0.0.0"], "pull": "yes"}),
        ("push", {"vips": ["0.0.0.0"], "pull": "no"}),
        ("off", {}),
    ],
)
def test_vips_and_pull_follow_mode_config(mode_config, expected):
    conn = render.connection(make(mode_config=mode_config))["vpn"]
    assert {k: conn[k] for k in ("vips", "pull") if k in conn} == expected


@pytest.mark.parametrize(
    ("remote_networks", "remote_ts"),
    [
        ("pushed", ["0.0.0.0/0"]),
        (["203.0.113.0/25"], ["203.0.113.0/25"]),
        (["203.0.113.0/25", "198.51.100.64/26"], ["203.0.113.0/25",
                                                  "198.51.100.64/26"]),
    ],
)  # fmt: skip
def test_remote_ts_is_everything_when_pushed_else_the_list(remote_networks, remote_ts):
    child = render.connection(make(remote_networks=remote_networks))["vpn"]
    assert child["children"]["vpn"]["remote_ts"] == remote_ts


def test_no_xauth_round_without_xauth():
    assert "local-2" not in render.connection(make())["vpn"]


def test_dpd_and_lifetimes_come_from_the_profile():
    ike = {"proposals": ["x"], "esp_proposals": ["y"], "lifetime": 3600,
           "child_lifetime": 1000, "dpd": {"delay": 5, "timeout": 30}}  # fmt: skip
    conn = render.connection(make(ike=ike))["vpn"]
    assert (conn["dpd_delay"], conn["dpd_timeout"], conn["rekey_time"]) == (
        "5s",
        "30s",
        "3600s",
    )
    child = conn["children"]["vpn"]
    assert (child["life_time"], child["rekey_time"], child["dpd_action"]) == (
        "1000s",
        "900s",
        "restart",
    )


@pytest.mark.parametrize(
    ("identity", "swanctl"),
    [
        ({"type": "any"}, "%any"),
        ({"type": "address"}, "198.51.100.10"),
        ({"type": "address", "value": "198.51.100.11"}, "198.51.100.11"),
        ({"type": "fqdn", "value": "vpn.example"}, "fqdn:vpn.example"),
        ({"type": "userfqdn", "value": "a@vpn.example"}, "userfqdn:a@vpn.example"),
        ({"type": "keyid", "value": "fgt"}, "keyid:fgt"),
    ],
)
def test_remote_identity_types_become_swanctl_ids(identity, swanctl):
    conn = render.connection(make(remote_id=identity))["vpn"]
    assert conn["remote-1"] == {"auth": "psk", "id": swanctl}


def test_unresolved_secrets_are_placeholders_with_owners():
    assert render.secrets(with_xauth(), False, "/p/office.yaml") == [
        {"type": "IKE", "data": "<redacted>", "owners": ["keyid:labgroup"]},
        {"type": "XAUTH", "data": "<redacted>", "owners": ["alice"]},
    ]


@pytest.mark.skipif(os.geteuid() != 0, reason="secret files must be root's")
def test_resolved_secrets_read_env_and_files(tmp_path, monkeypatch):
    xauth = tmp_path / "xauth"
    xauth.write_text(XAUTH + "\n")
    xauth.chmod(0o600)
    monkeypatch.setenv("VJ_RENDER_PSK", PSK)
    auth = {"psk": {"env": "VJ_RENDER_PSK"},
            "xauth": {"user": "alice", "password": {"file": str(xauth)}}}  # fmt: skip
    profile = make(auth=auth, remote_id={"type": "address"})
    assert render.secrets(profile, True, "/p/office.yaml") == [
        {"type": "IKE", "data": PSK, "owners": ["keyid:labgroup", "198.51.100.10"]},
        {"type": "XAUTH", "data": XAUTH, "owners": ["alice"]},
    ]


def test_resolving_an_unset_secret_names_the_profile_and_field(monkeypatch):
    monkeypatch.delenv("VJ_RENDER_PSK", raising=False)
    with pytest.raises(ProfileError) as caught:
        render.secrets(make(), True, "/p/office.yaml")
    assert caught.value.problems == [
        "/p/office.yaml: auth.psk: environment variable VJ_RENDER_PSK is not set; "
        "export it"
    ]


def test_swanctl_text_never_holds_resolved_secrets(monkeypatch):
    monkeypatch.setenv("VJ_RENDER_PSK", PSK)
    monkeypatch.setenv("VJ_RENDER_XAUTH", XAUTH)
    text = render.render("linux", with_xauth(), "/p/office.yaml", True).swanctl_text()
    assert PSK not in text and XAUTH not in text
    assert text.count("secret = <redacted>") == 2


@pytest.mark.parametrize(
    ("remote_networks", "cisco_unity"),
    [("pushed", "yes"), (["203.0.113.0/25"], "no")],
)
def test_cisco_unity_only_for_pushed_networks(remote_networks, cisco_unity):
    settings = render.charon_settings("linux", make(remote_networks=remote_networks))
    assert settings["cisco_unity"] == cisco_unity


@pytest.mark.parametrize(("mode", "flagged"), [("aggressive", True), ("main", False)])
def test_the_aggressive_psk_flag_only_for_aggressive_mode(mode, flagged):
    ike = {"mode": mode, "proposals": ["x"], "esp_proposals": ["y"]}
    settings = render.charon_settings("linux", make(ike=ike))
    flag = "i_dont_care_about_security_and_use_aggressive_mode_psk"
    assert settings.get(flag) == ("yes" if flagged else None)


@pytest.mark.parametrize(
    ("system", "backend", "kernel_plugins"),
    [
        ("linux", "libipsec", ["kernel-libipsec!", "kernel-netlink"]),
        ("linux", "kernel", ["kernel-netlink"]),
        ("freebsd", "libipsec", ["kernel-libipsec", "kernel-pfroute"]),
        ("freebsd", "kernel", ["kernel-pfkey", "kernel-pfroute"]),
    ],
)
def test_charon_loads_the_backends_plugins(system, backend, kernel_plugins):
    settings = render.charon_settings(system, make(backend=backend))
    plugins = settings["load"].split()
    assert plugins[-len(kernel_plugins) :] == kernel_plugins
    assert [p for p in plugins if p.startswith("kernel-")] == kernel_plugins


def test_charon_settings_point_at_the_stacks_private_run():
    settings = render.charon_settings("linux", make())
    assert settings["plugins"]["vici"] == {"socket": "unix:///run/charon.vici"}
    assert settings["filelog"]["stack"]["path"] == "/run/charon.log"
    assert settings["plugins"]["resolve"] == {"load": "no"}
    assert (settings["retransmit_tries"], settings["retransmit_timeout"]) == (
        "5",
        "2.0",
    )


def test_render_with_resolve_false_reads_no_secret(monkeypatch):
    monkeypatch.delenv("VJ_RENDER_PSK", raising=False)
    rendered = render.render("linux", make(), "/p/office.yaml", False)
    assert rendered.child == "vpn"
    assert [s["data"] for s in rendered.secrets] == ["<redacted>"]
    assert rendered.charon_conf.startswith("charon {\n  load_modular = no\n")
