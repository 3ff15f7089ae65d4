"""vpnjail/plan.py and vpnjail/drivers/linux.py: plans as data, names, argv.

Nothing here runs a command: plans are compared as data, and run() is
checked against a recorder standing in for subprocess.
"""

import os
import subprocess

import pytest

import vpnjail.drivers.linux as linux
from vpnjail.drivers.base import Layout, LinkAddresses, Needs
from vpnjail.linux_sandbox import render_script
from vpnjail.plan import Plan, Run, Spawn, Step, WriteFile
from vpnjail.profile import Profile

LINK = LinkAddresses("192.0.2.1/30", "192.0.2.2/30")


def make(**changes) -> Profile:
    data = {
        "name": "office",
        "gateway": "198.51.100.10",
        "ike": {"proposals": ["aes256-sha256-modp2048"],
                "esp_proposals": ["aes256-sha256"]},
        "local_id": {"type": "keyid", "value": "labgroup"},
        "auth": {"psk": {"env": "VJ_PLAN_PSK"}},
        "port_forwards": [
            {"host_port": 2222, "port": 22},
            {"host_port": 5353, "port": 53, "proto": "udp"},
            {"host_port": 8443, "port": 443, "to": "203.0.113.10"},
        ],
    }  # fmt: skip
    data.update(changes)
    return Profile.model_validate(data)


@pytest.fixture
def state_dir(tmp_path) -> str:
    return str(tmp_path / "state")


@pytest.fixture
def driver(state_dir) -> linux.LinuxDriver:
    return linux.LinuxDriver(state_dir=state_dir)


# -- plan.py ------------------------------------------------------------------


def small_plan() -> Plan:
    plan = Plan("office")
    plan.add(
        "files",
        [WriteFile("/x/a.conf", "one\ntwo\n", 0o600), Run(("true",), "system")],
        [Run(("rm", "-f", "/x/a.conf"), "system")],
    )
    plan.add(
        "daemon",
        [
            Run(("nft", "-f", "-"), input_text="table ip t {\n}\n"),
            Spawn("d", ("sleep", "1"), env=(("A", "x y"),)),
        ],
    )
    return plan


def test_plan_render_prints_steps_actions_contents_and_undo():
    assert small_plan().render() == (
        "# profile office\n"
        "## 1. files\n"
        "write /x/a.conf (mode 0600)\n"
        "  | one\n"
        "  | two\n"
        "[system] true\n"
        "  undo: [system] rm -f /x/a.conf\n"
        "## 2. daemon\n"
        "[host] nft -f - <<EOF\n"
        "table ip t {\n"
        "}\n"
        "EOF\n"
        "[jail] start d: A='x y' sleep 1\n"
    )


def test_plan_files_are_the_write_actions_in_order():
    assert small_plan().files() == [WriteFile("/x/a.conf", "one\ntwo\n", 0o600)]


def test_a_describe_quotes_arguments_for_a_shell_reader():
    action = Run(("echo", "a;b", "$(x)"), "jail")
    assert action.describe() == "[jail] echo 'a;b' '$(x)'"


# -- naming -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "interface"),
    [
        ("a", "vj-a"),
        ("office", "vj-office"),
        ("abcdefghijkl", "vj-abcdefghijkl"),
        ("abcdefghijklm", "vj-abcdefg-4b98"),
        ("officebranch-01", "vj-officeb-c5da"),
        ("officebranch-02", "vj-officeb-7ff0"),
    ],
)
def test_host_interface_is_vj_name_shortened_with_a_digest(name, interface):
    assert linux.host_interface(name) == interface


@pytest.mark.parametrize("length", range(1, 16))
def test_host_interface_fits_ifnamsiz(length):
    assert len(linux.host_interface("a" * length)) <= 15


@pytest.mark.parametrize(
    ("prefix", "name", "table"),
    [
        ("vpnjail-", "office", "vpnjail_office"),
        ("vpnjail-", "office-2", "vpnjail_office_2"),
        ("vjlab-r1-", "a-b", "vjlab_r1_a_b"),
    ],
)
def test_nft_table_is_prefix_and_name_with_underscores(prefix, name, table):
    assert linux.nft_table(prefix, name) == table


def test_layout_paths_live_under_the_state_directory(driver, state_dir):
    run = f"{state_dir}/office/run"
    assert driver.layout(make()) == Layout(
        name="office",
        stack="vpnjail-office",
        host_if="vj-office",
        jail_if="eth0",
        run_dir=run,
        conf_dir=run,
        vici_socket=f"{run}/charon.vici",
        log_file=f"{run}/charon.log",
        firewall="vpnjail_office",
    )


def test_layout_of_a_name_equals_layout_of_its_profile(driver):
    assert driver.layout("office") == driver.layout(make())


def test_layout_follows_the_prefix(state_dir):
    lay = linux.LinuxDriver(state_dir, prefix="vjlab-r1-").layout("office")
    assert (lay.stack, lay.firewall) == ("vjlab-r1-office", "vjlab_r1_office")


@pytest.mark.parametrize(
    ("backend", "tun", "needs"),
    [
        ("libipsec", "auto", Needs(tun=True, kernel_ipsec=False)),
        ("libipsec", "exposed", Needs(tun=True, kernel_ipsec=False)),
        ("libipsec", "hidden", Needs(tun=False, kernel_ipsec=False)),
        ("kernel", "auto", Needs(tun=False, kernel_ipsec=True)),
        ("kernel", "exposed", Needs(tun=True, kernel_ipsec=True)),
        ("kernel", "hidden", Needs(tun=False, kernel_ipsec=True)),
    ],
)
def test_needs_by_backend_and_tun_policy(driver, backend, tun, needs):
    assert driver.needs(make(backend=backend, tun=tun)) == needs


# -- plan_up / plan_down ------------------------------------------------------


def test_plan_up_has_five_steps_in_order(driver):
    titles = [step.title for step in driver.plan_up(make(), LINK, "C").steps]
    assert titles == [
        "network namespace vpnjail-office",
        "veth vj-office <-> vpnjail-office:eth0",
        "nftables table vpnjail_office",
        "private /run, configuration and /dev",
        "charon",
    ]


def test_plan_up_step_1_adds_the_namespace(driver):
    assert driver.plan_up(make(), LINK, "C").steps[0] == Step(
        "network namespace vpnjail-office",
        (
            Run(("ip", "netns", "add", "vpnjail-office"), "system"),
            Run(("ip", "-n", "vpnjail-office", "link", "set", "lo", "up"), "system"),
        ),
        (Run(("ip", "netns", "delete", "vpnjail-office"), "system", ok_codes=(0, 1)),),
    )


def test_plan_up_step_2_adds_the_veth_and_default_route(driver):
    assert driver.plan_up(make(), LINK, "C").steps[1] == Step(
        "veth vj-office <-> vpnjail-office:eth0",
        (
            Run(("ip", "link", "add", "vj-office", "type", "veth", "peer", "name",
                 "eth0", "netns", "vpnjail-office")),
            Run(("ip", "addr", "add", "192.0.2.1/30", "dev", "vj-office")),
            Run(("ip", "link", "set", "vj-office", "up")),
            Run(("ip", "addr", "add", "192.0.2.2/30", "dev", "eth0"), "jail"),
            Run(("ip", "link", "set", "eth0", "up"), "jail"),
            Run(("ip", "route", "add", "default", "via", "192.0.2.1"), "jail"),
        ),
        (Run(("ip", "link", "delete", "vj-office"), ok_codes=(0, 1)),),
    )  # fmt: skip


def test_plan_up_step_3_loads_the_profiles_nft_table(driver):
    profile = make()
    ruleset = linux.render_nft(profile, driver.layout(profile), LINK)
    assert driver.plan_up(profile, LINK, "C").steps[2] == Step(
        "nftables table vpnjail_office",
        (Run(("nft", "-f", "-"), input_text=ruleset),),
        (Run(("nft", "delete", "table", "ip", "vpnjail_office"), ok_codes=(0, 1)),),
    )


@pytest.mark.parametrize(("backend", "tun"), [("libipsec", True), ("kernel", False)])
def test_plan_up_step_4_writes_the_sandbox_and_starts_its_holder(
    driver, state_dir, backend, tun
):
    base = f"{state_dir}/office"
    assert driver.plan_up(make(backend=backend), LINK, "CONF").steps[3] == Step(
        "private /run, configuration and /dev",
        (
            WriteFile(f"{base}/sandbox.sh", render_script(f"{base}/run", tun)),
            WriteFile(f"{base}/run/strongswan.conf", "CONF"),
            Spawn("holder", ("unshare", "--mount", "--propagation", "private",
                             "sh", f"{base}/sandbox.sh"), where="netns"),
        ),
        (),
    )  # fmt: skip


def test_plan_up_step_5_starts_charon_in_the_jail(driver):
    assert driver.plan_up(make(), LINK, "C").steps[4] == Step(
        "charon",
        (
            Spawn(
                "charon",
                ("/usr/lib/ipsec/charon",),
                "jail",
                (("STRONGSWAN_CONF", "/run/strongswan.conf"),),
            ),
        ),
        (),
    )


def test_plan_down_removes_firewall_link_and_namespace(driver):
    absent_ok = (0, 1)  # removing what is already gone is fine
    assert driver.plan_down("office").steps == [
        Step(
            "remove stack, link and firewall",
            (
                Run(("nft", "delete", "table", "ip", "vpnjail_office"), "host", None,
                    absent_ok),
                Run(("ip", "link", "delete", "vj-office"), "host", None, absent_ok),
                Run(("ip", "netns", "delete", "vpnjail-office"), "system", None,
                    absent_ok),
            ),
        )
    ]  # fmt: skip


def test_every_argv_element_is_a_separate_string(driver):
    profile = make(name="a-long-name-123")
    plans = [driver.plan_up(profile, LINK, "C"), driver.plan_down(profile.name)]
    for plan in plans:
        for step in plan.steps:
            for action in step.do + step.undo:
                if isinstance(action, (Run, Spawn)):
                    assert isinstance(action.argv, tuple)
                    assert all(type(arg) is str for arg in action.argv), action
                    assert not any(" " in arg for arg in action.argv), action


# -- nftables -----------------------------------------------------------------


def test_render_nft_masquerades_and_forwards_every_port(driver):
    profile = make()
    assert linux.render_nft(profile, driver.layout(profile), LINK) == (
        "table ip vpnjail_office {\n"
        "  chain prerouting {\n"
        "    type nat hook prerouting priority dstnat; policy accept;\n"
        '    iifname != "vj-office" fib daddr type local tcp dport 2222 '
        "dnat to 192.0.2.2:22\n"
        '    iifname != "vj-office" fib daddr type local udp dport 5353 '
        "dnat to 192.0.2.2:53\n"
        # A forward into the tunnel reaches the jail on its host port.
        '    iifname != "vj-office" fib daddr type local tcp dport 8443 '
        "dnat to 192.0.2.2:8443\n"
        "  }\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        '    ip saddr 192.0.2.0/30 oifname != "vj-office" masquerade\n'
        "  }\n"
        "}\n"
    )


def test_render_nft_without_nat_or_forwards_has_empty_chains(driver):
    profile = make(nat=False, port_forwards=[])
    assert linux.render_nft(profile, driver.layout(profile), LINK) == (
        "table ip vpnjail_office {\n"
        "  chain prerouting {\n"
        "    type nat hook prerouting priority dstnat; policy accept;\n"
        "  }\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        "  }\n"
        "}\n"
    )


def test_tunnel_forward_nft_is_none_without_tunnel_forwards():
    profile = make(port_forwards=[{"host_port": 2222, "port": 22}])
    assert linux.tunnel_forward_nft(profile, "vpnjail_forward", "203.0.113.77") is None


def test_tunnel_forward_nft_sends_forwards_on_from_the_virtual_ip():
    assert linux.tunnel_forward_nft(make(), "vpnjail_forward", "203.0.113.77") == (
        "table ip vpnjail_forward {\n"
        "  chain prerouting {\n"
        "    type nat hook prerouting priority dstnat; policy accept;\n"
        "    tcp dport 8443 dnat to 203.0.113.10:443\n"
        "  }\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        "    ip daddr 203.0.113.10 tcp dport 443 snat to 203.0.113.77\n"
        "  }\n"
        "}\n"
    )


# -- the sandbox script -------------------------------------------------------


@pytest.mark.parametrize("tun", [True, False])
def test_the_sandbox_has_dev_net_tun_only_when_asked(tun):
    script = render_script("/srv/vj/office/run", tun)
    assert ("mknod -m 0600 /dev/net/tun c 10 200\n" in script) is tun
    assert script.endswith(": > /run/sandbox.ready\nexec sleep infinity\n")


def test_the_sandbox_quotes_its_run_directory():
    script = render_script("/srv/my state/office/run", False)
    assert "mount --bind '/srv/my state/office/run' /run\n" in script


# -- where actions run ----------------------------------------------------------


def write_holder_pid(state_dir: str, text: str) -> None:
    os.makedirs(f"{state_dir}/office", exist_ok=True)
    with open(f"{state_dir}/office/holder.pid", "w") as out:
        out.write(text)


@pytest.mark.parametrize(
    ("where", "host_netns", "prefix"),
    [
        ("host", None, []),
        ("host", "vjhost", ["ip", "netns", "exec", "vjhost"]),
        ("system", None, []),
        ("system", "vjhost", []),
        ("netns", None, ["ip", "netns", "exec", "vpnjail-office"]),
        ("netns", "vjhost", ["ip", "netns", "exec", "vpnjail-office"]),
        ("jail", None, ["ip", "netns", "exec", "vpnjail-office"]),
        ("jail", "vjhost", ["ip", "netns", "exec", "vpnjail-office"]),
    ],
)
def test_argv_for_prefixes_by_where(state_dir, where, host_netns, prefix):
    driver = linux.LinuxDriver(state_dir, host_netns=host_netns)
    action = Run(("ip", "link", "show"), where)
    argv = driver.argv_for(action, driver.layout("office"))
    assert argv == [*prefix, "ip", "link", "show"]


def test_jail_actions_enter_a_live_holder_with_nsenter(driver, state_dir):
    # Our own pid stands for a live holder; nothing is entered.
    write_holder_pid(state_dir, str(os.getpid()))
    argv = driver.argv_for(Run(("true",), "jail"), driver.layout("office"))
    assert argv == ["nsenter", f"--target={os.getpid()}", "--mount", "--net", "--",
                    "true"]  # fmt: skip


@pytest.mark.parametrize("pid_text", ["99999999", "not-a-pid", ""])
def test_jail_actions_fall_back_without_a_live_holder(driver, state_dir, pid_text):
    write_holder_pid(state_dir, pid_text)
    argv = driver.argv_for(Run(("true",), "jail"), driver.layout("office"))
    assert argv == ["ip", "netns", "exec", "vpnjail-office", "true"]


def test_run_passes_an_argv_list_and_never_a_shell(driver, monkeypatch):
    calls = []

    class Recorder:
        @staticmethod
        def run(argv, **kwargs):
            calls.append((argv, kwargs))
            return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(linux, "subprocess", Recorder)
    driver.host_netns = "vjhost"
    driver.run(Run(("nft", "-f", "-"), input_text="RULES"), driver.layout("office"))
    [(argv, kwargs)] = calls
    assert argv == ["ip", "netns", "exec", "vjhost", "nft", "-f", "-"]
    assert kwargs == {"input": "RULES", "capture_output": True, "text": True,
                      "check": False}  # fmt: skip
