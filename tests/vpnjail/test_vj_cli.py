"""vpnjail/cli.py through main(): refusals create nothing; render shows all.

Every subprocess of vpnjail's modules is replaced by a recorder, so no
command reaches the system even if a refusal were missed.
"""

import os
import subprocess

import pytest
import yaml

import vpnjail.drivers.linux
import vpnjail.linux_checks
from vpnjail import cli

SECRETS = {
    "office.psk": "office-psk-Zq81",
    "office.xauth": "office-xauth-Wp27",
}
HOME_PSK = "home-psk-Jx55"


class NoCommands:
    """Stands in for the subprocess module: records argv, runs nothing."""

    PIPE, STDOUT, DEVNULL = subprocess.PIPE, subprocess.STDOUT, subprocess.DEVNULL
    CompletedProcess = subprocess.CompletedProcess

    def __init__(self):
        self.calls: list[list[str]] = []

    def run(self, argv, **kwargs):
        self.calls.append(list(argv))
        return subprocess.CompletedProcess(argv, 0, "", "")

    def Popen(self, argv, **kwargs):
        self.calls.append(list(argv))
        raise OSError("no process is started by unit tests")


@pytest.fixture
def commands(monkeypatch) -> NoCommands:
    fake = NoCommands()
    for module in (vpnjail.drivers.linux, vpnjail.linux_checks):
        monkeypatch.setattr(module, "subprocess", fake)
    # The environment must not pick other directories or names than ours.
    for name in ("VPNJAIL_PREFIX", "VPNJAIL_PROFILES", "VPNJAIL_STATE"):
        monkeypatch.delenv(name, raising=False)
    return fake


@pytest.fixture
def world(tmp_path, monkeypatch, commands):
    """Two valid profiles, root-only secret files and an env secret."""
    if os.geteuid() != 0:
        pytest.skip("secret files must be owned by root; run as root, as CI does")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for filename, value in SECRETS.items():
        (secrets / filename).write_text(value + "\n")
        (secrets / filename).chmod(0o600)
    monkeypatch.setenv("VJ_HOME_PSK", HOME_PSK)
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    office = {
        "name": "office",
        "gateway": "198.51.100.10",
        "ike": {"proposals": ["aes256-sha256-modp2048"],
                "esp_proposals": ["aes256-sha256"]},
        "local_id": {"type": "keyid", "value": "labgroup"},
        "auth": {"psk": {"file": str(secrets / "office.psk")},
                 "xauth": {"user": "alice",
                           "password": {"file": str(secrets / "office.xauth")}}},
        "link": {"host": "192.0.2.1/30", "jail": "192.0.2.2/30"},
        "port_forwards": [
            {"host_port": 2222, "port": 22},
            {"host_port": 8443, "port": 443, "to": "203.0.113.10"},
        ],
    }  # fmt: skip
    home = {
        "name": "home",
        "gateway": "198.51.100.20",
        "ike": {"mode": "main", "proposals": ["aes128-sha256-modp2048"],
                "esp_proposals": ["aes128-sha256"]},
        "local_id": {"type": "fqdn", "value": "home.example"},
        "auth": {"psk": {"env": "VJ_HOME_PSK"}},
        "backend": "kernel",
        "nat": False,
        "link": {"host": "192.0.2.5/30", "jail": "192.0.2.6/30"},
    }  # fmt: skip
    return {
        "profiles": profiles,
        "secrets": secrets,
        "state": tmp_path / "state",
        "office": write(profiles / "office.yaml", office),
        "home": write(profiles / "home.yaml", home),
        "data": {"office": office, "home": home},
        "monkeypatch": monkeypatch,
    }


def write(path, data):
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_cli(world, capsys, *args) -> tuple[int, str, str]:
    status = cli.main(
        ["--profiles", str(world["profiles"]), "--state-dir", str(world["state"]),
         *args]
    )  # fmt: skip
    out, err = capsys.readouterr()
    return status, out, err


def nothing_created(world, commands) -> bool:
    return not world["state"].exists() and commands.calls == []


# -- refusals -------------------------------------------------------------------


def break_unknown_field(world):
    write(world["office"], dict(world["data"]["office"], colour="blue"))
    return [
        f"{world['office']}: colour: unknown field; remove it or check its spelling"
    ]


def break_secret_mode(world):
    psk = world["secrets"] / "office.psk"
    psk.chmod(0o644)
    return [
        f"{world['office']}: auth.psk: secret file {psk} is readable by others; "
        f"chmod 600 {psk}"
    ]


def break_env_secret(world):
    world["monkeypatch"].delenv("VJ_HOME_PSK")
    return [
        f"{world['home']}: auth.psk: environment variable VJ_HOME_PSK is not set; "
        "export it"
    ]


def break_duplicate_name(world):
    write(world["home"], dict(world["data"]["home"], name="office"))
    return [
        f"{world['office']}: name: 'office' is also used by {world['home']}; rename one"
    ]


def break_link_networks(world):
    link = {"host": "192.0.2.5/30", "jail": "192.0.2.9/30"}
    write(world["home"], dict(world["data"]["home"], link=link))
    return [f"{world['home']}: link: host and jail addresses must share one network"]


def break_shared_port(world):
    forwards = [{"host_port": 2222, "port": 22}]
    write(world["home"], dict(world["data"]["home"], port_forwards=forwards))
    return [
        f"{world['office']}: port_forwards: tcp port 2222 is already forwarded by "
        f"{world['home']}; pick another host_port"
    ]


BREAKAGES = [
    break_unknown_field,
    break_secret_mode,
    break_env_secret,
    break_duplicate_name,
    break_link_networks,
    break_shared_port,
]
COMMANDS = [["check"], ["render"], ["up", "--all"], ["up", "office", "home"]]


@pytest.mark.parametrize("breakage", BREAKAGES, ids=lambda f: f.__name__[6:])
@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_bad_profile_is_refused_with_status_2_and_creates_nothing(
    world, capsys, commands, command, breakage
):
    lines = breakage(world)
    status, out, err = run_cli(world, capsys, *command)
    assert (status, out, err) == (2, "", "\n".join(lines) + "\n")
    assert nothing_created(world, commands)


def test_up_without_names_or_all_is_refused(world, capsys, commands):
    assert run_cli(world, capsys, "up") == (
        2,
        "",
        "name profiles to bring up, or give --all\n",
    )
    assert nothing_created(world, commands)


def test_down_without_names_is_refused(world, capsys, commands):
    assert run_cli(world, capsys, "down") == (
        2,
        "",
        "name profiles to bring down, or give --all\n",
    )
    assert nothing_created(world, commands)


def test_down_all_with_nothing_running_succeeds_quietly(world, capsys, commands):
    # A service manager's stop hook runs `down --all` whatever is running.
    assert run_cli(world, capsys, "down", "--all") == (0, "nothing is running\n", "")
    assert nothing_created(world, commands)


@pytest.mark.parametrize(
    "command", [["check"], ["render"], ["up"], ["up", "--skip-check"]], ids=" ".join
)
def test_an_unknown_profile_name_lists_the_known_ones(world, capsys, commands, command):
    status, out, err = run_cli(world, capsys, *command, "office", "nope")
    assert (status, out) == (2, "")
    assert err == f"{world['profiles']}: no profile named 'nope'; known: home, office\n"
    assert nothing_created(world, commands)


def test_down_refuses_a_name_that_is_not_a_profile_name(world, capsys, commands):
    status, _, err = run_cli(world, capsys, "down", "../escape")
    assert not (world["state"] / "escape.lock").exists()
    assert status == 2
    assert "../escape" in err


# -- render -------------------------------------------------------------------


def rendered(world, capsys, *args) -> list[str]:
    status, out, err = run_cli(world, capsys, "render", *args)
    assert (status, err) == (0, "")
    return out.splitlines()


def test_render_prints_every_step_of_the_plan_in_order(world, capsys):
    lines = rendered(world, capsys, "office")
    titles = [line for line in lines if line.startswith("#")]
    assert titles == [
        "# profile office",
        "## 1. network namespace vpnjail-office",
        "## 2. veth vj-office <-> vpnjail-office:eth0",
        "## 3. nftables table vpnjail_office",
        "## 4. private /run, configuration and /dev",
        "## 5. charon",
        "## 6. forwards into the tunnel, from the virtual IP (once it is known)",
        "## swanctl.conf (loaded over VICI; secrets never written)",
    ]


def test_render_prints_the_namespace_veth_and_firewall_commands(world, capsys):
    lines = rendered(world, capsys, "office")
    for expected in [
        "[system] ip netns add vpnjail-office",
        "[system] ip -n vpnjail-office link set lo up",
        "  undo: [system] ip netns delete vpnjail-office",
        "[host] ip link add vj-office type veth peer name eth0 netns vpnjail-office",
        "[host] ip addr add 192.0.2.1/30 dev vj-office",
        "[host] ip link set vj-office up",
        "[jail] ip netns exec vpnjail-office ip addr add 192.0.2.2/30 dev eth0",
        "[jail] ip netns exec vpnjail-office ip link set eth0 up",
        "[jail] ip netns exec vpnjail-office ip route add default via 192.0.2.1",
        "  undo: [host] ip link delete vj-office",
        "[host] nft -f - <<EOF",
        "table ip vpnjail_office {",
        '    iifname != "vj-office" fib daddr type local tcp dport 2222 '
        "dnat to 192.0.2.2:22",
        '    iifname != "vj-office" fib daddr type local tcp dport 8443 '
        "dnat to 192.0.2.2:8443",
        '    ip saddr 192.0.2.0/30 oifname != "vj-office" masquerade',
        "  undo: [host] nft delete table ip vpnjail_office",
    ]:
        assert expected in lines


def test_render_prints_the_sandbox_and_charon(world, capsys):
    lines = rendered(world, capsys, "office")
    base = world["state"] / "office"
    for expected in [
        f"write {base}/sandbox.sh (mode 0644)",
        f"  | mount --bind {base}/run /run",
        "  | mknod -m 0600 /dev/net/tun c 10 200",
        f"write {base}/run/strongswan.conf (mode 0644)",
        "  |   i_dont_care_about_security_and_use_aggressive_mode_psk = yes",
        "[netns] start holder: ip netns exec vpnjail-office unshare --mount "
        f"--propagation private sh {base}/sandbox.sh",
        "[jail] start charon: STRONGSWAN_CONF=/run/strongswan.conf nsenter "
        "'--target=<holder pid>' --mount --net -- /usr/lib/ipsec/charon",
    ]:
        assert expected in lines


def test_render_prints_the_swanctl_section_with_secrets_redacted(world, capsys):
    text = "\n".join(rendered(world, capsys, "office"))
    swanctl = text.split("## swanctl.conf")[1]
    for expected in [
        "    aggressive = yes",
        "    remote_addrs = 198.51.100.10",
        "      id = keyid:labgroup",
        "      xauth_id = alice",
        "  ike-1 {\n    id = keyid:labgroup\n    secret = <redacted>\n  }",
        "  xauth-2 {\n    id = alice\n    secret = <redacted>\n  }",
    ]:
        assert expected in swanctl


def test_render_never_prints_a_secret_value(world, capsys):
    status, out, err = run_cli(world, capsys, "render")
    assert status == 0
    for value in [*SECRETS.values(), HOME_PSK]:
        assert value not in out + err


def test_render_without_names_prints_every_profile(world, capsys):
    lines = rendered(world, capsys)
    assert [line for line in lines if line.startswith("# profile")] == [
        "# profile home",
        "# profile office",
    ]


def test_render_creates_nothing(world, capsys, commands):
    rendered(world, capsys)
    assert nothing_created(world, commands)


@pytest.mark.parametrize(
    ("backend", "tun", "has_tun", "kernel_plugins"),
    [
        ("libipsec", "auto", True, "kernel-libipsec! kernel-netlink"),
        ("libipsec", "exposed", True, "kernel-libipsec! kernel-netlink"),
        ("libipsec", "hidden", False, "kernel-libipsec! kernel-netlink"),
        ("kernel", "auto", False, "kernel-netlink"),
        ("kernel", "exposed", True, "kernel-netlink"),
        ("kernel", "hidden", False, "kernel-netlink"),
    ],
)
def test_render_gives_tun_and_kernel_plugins_by_backend_and_tun(
    world, capsys, backend, tun, has_tun, kernel_plugins
):
    write(world["office"], dict(world["data"]["office"], backend=backend, tun=tun))
    lines = rendered(world, capsys, "office")
    assert ("  | mknod -m 0600 /dev/net/tun c 10 200" in lines) is has_tun
    (load,) = [line for line in lines if line.startswith("  |   load = ")]
    assert load.endswith(f" unity {kernel_plugins}")


def test_render_of_a_nat_false_profile_has_no_masquerade(world, capsys):
    text = "\n".join(rendered(world, capsys, "home"))
    assert "masquerade" not in text
    assert "type nat hook postrouting priority srcnat; policy accept;\n  }" in text


def test_render_with_host_netns_leaves_system_actions_unprefixed(world, capsys):
    status, out, _ = run_cli(
        world, capsys, "--host-netns", "vjhost", "render", "office"
    )
    assert status == 0
    assert "[system] ip netns add vpnjail-office" in out.splitlines()
    assert "ip netns exec vjhost ip netns add" not in out


def test_render_with_host_netns_prefixes_host_actions(world, capsys):
    status, out, _ = run_cli(
        world, capsys, "--host-netns", "vjhost", "render", "office"
    )
    assert status == 0
    assert (
        "ip netns exec vjhost ip link add vj-office type veth peer name eth0 "
        "netns vpnjail-office"
    ) in out
    assert "ip netns exec vjhost nft -f -" in out


def test_render_shows_the_jail_side_of_a_forward_into_the_tunnel(world, capsys):
    text = "\n".join(rendered(world, capsys, "office"))
    assert "net.ipv4.ip_forward=1" in text
    assert "dnat to 203.0.113.10:443" in text
