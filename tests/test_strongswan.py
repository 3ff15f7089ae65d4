"""lab/strongswan.py: settings text, plugin lists and swanctl.conf evidence."""

import pytest

from lab import client, config, responder, strongswan

LAB = config.load()
GATEWAY = "198.51.100.10"


def test_render_sections_nests_and_joins_lists():
    text = strongswan.render_sections(
        {
            "charon": {
                "load_modular": "no",
                "plugins": {"vici": {"socket": "unix:///run/charon.vici"}},
                "dns": ["203.0.113.53", "203.0.113.54"],
                "retransmit_tries": 3,
            },
            "empty": {},
        }
    )
    assert text == (
        "charon {\n"
        "  load_modular = no\n"
        "  plugins {\n"
        "    vici {\n"
        "      socket = unix:///run/charon.vici\n"
        "    }\n"
        "  }\n"
        "  dns = 203.0.113.53, 203.0.113.54\n"
        "  retransmit_tries = 3\n"
        "}\n"
        "empty {\n"
        "}\n"
    )


def load_list(system: str, backend: str) -> list[str]:
    """The plugins charon is told to load, as strongswan.conf says it."""
    return strongswan.charon_settings(system, backend)["load"].split()


KERNEL_PLUGINS = [
    ("linux", "netlink", ["kernel-netlink"]),
    # Critical ("!"): without a tun charon must refuse to start rather than
    # fall back to kernel-netlink (strongSwan 5.9.8 crashes there).
    ("linux", "libipsec", ["kernel-libipsec!", "kernel-netlink"]),
    ("freebsd", "pfkey", ["kernel-pfkey", "kernel-pfroute"]),
    ("freebsd", "libipsec", ["kernel-libipsec", "kernel-pfroute"]),
]


@pytest.mark.parametrize(("system", "backend", "kernel"), KERNEL_PLUGINS)
def test_plugin_list_ends_with_the_backend_plugins(system, backend, kernel):
    plugins = load_list(system, backend)
    assert plugins[-len(kernel) :] == kernel
    assert not [p for p in plugins[: -len(kernel)] if p.startswith("kernel-")]
    assert len(set(plugins)) == len(plugins)


def test_every_backend_shares_the_same_base_plugins():
    bases = {
        tuple(load_list(system, backend)[: -len(kernel)])
        for system, backend, kernel in KERNEL_PLUGINS
    }
    assert len(bases) == 1
    (base,) = bases
    for plugin in ("openssl", "socket-default", "vici", "attr", "xauth-generic"):
        assert plugin in base
    assert base[-1] == "unity"


@pytest.mark.parametrize(
    ("system", "backend"), [("linux", "pfkey"), ("freebsd", "netlink")]
)
def test_unknown_backend_is_an_error_naming_it(system, backend):
    with pytest.raises(ValueError, match=f"no kernel backend '{backend}' on {system}"):
        strongswan.charon_settings(system, backend)


def test_charon_settings_private_run_and_log_levels():
    settings = strongswan.charon_settings("linux", "libipsec")
    assert settings["load_modular"] == "no"
    assert settings["plugins"]["vici"] == {"socket": "unix:///run/charon.vici"}
    (log,) = settings["filelog"].values()
    assert (log["path"], log["ike"], log["knl"], log["cfg"]) == (
        "/run/charon.log",
        "2",
        "2",
        "2",
    )
    # The classifier reads "<conn|n>" prefixes: the IKE_SA name must be logged.
    assert log["ike_name"] == "yes"
    # Pushed DNS must never reach the machine's resolv.conf.
    assert settings["plugins"]["resolve"] == {"load": "no"}


def test_charon_settings_merge_extra_plugins_keeping_vici():
    daemon = responder.build(LAB.responder, GATEWAY)
    settings = strongswan.charon_settings("linux", "netlink", daemon.charon)
    assert settings["plugins"] == {
        "vici": {"socket": "unix:///run/charon.vici"},
        "resolve": {"load": "no"},
        "attr": {"28672": "Authorised lab use only"},
    }
    assert settings["cisco_unity"] == "yes"


SIDES = {
    "responder": (responder.build, LAB.responder),
    "client": (client.build, LAB.client),
}


@pytest.mark.parametrize("side", sorted(SIDES))
def test_render_swanctl_never_holds_a_secret(side):
    build, spec = SIDES[side]
    daemon = build(spec, GATEWAY)
    text = strongswan.render_swanctl(daemon.conns, daemon.secrets, daemon.pools)
    values = [secret["data"] for secret in daemon.secrets]
    assert len(values) == 2
    for value in values:
        assert value not in text
    assert text.count("secret = <redacted>") == len(values)
    assert "connections {\n  fgt {\n" in text


def test_render_swanctl_names_secrets_by_type_and_owners():
    daemon = client.build(LAB.client, GATEWAY)
    text = strongswan.render_swanctl(daemon.conns, daemon.secrets, daemon.pools)
    assert (
        "secrets {\n"
        "  ike-1 {\n"
        "    id = keyid:labgroup, 198.51.100.10\n"
        "    secret = <redacted>\n"
        "  }\n"
        "  xauth-2 {\n"
        "    id = alice\n"
        "    secret = <redacted>\n"
        "  }\n"
        "}\n"
    ) in text
