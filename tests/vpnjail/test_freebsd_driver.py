"""vpnjail/drivers/freebsd.py: the exact files and commands of a vnet jail.

Nothing here runs a FreeBSD command: plans are data, the probe and the
runner are fakes fed with recorded answers.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from vpnjail.drivers import freebsd
from vpnjail.drivers.base import LinkAddresses
from vpnjail.drivers.freebsd import FreeBSDDriver
from vpnjail.plan import Run, Spawn, WriteFile
from vpnjail.profile import Profile, ProfileError

LINK = LinkAddresses("192.0.2.1/30", "192.0.2.2/30")
STATE = "/var/db/vpnjail"
ROOT = "/var/db/vpnjail/jails/office"
CONF = "/var/db/vpnjail/conf/office"
RC_SCRIPT = Path(freebsd.__file__).parent.parent / "data" / "vpnjail.rc"


def make_profile(**fields) -> Profile:
    data = {
        "name": "office",
        "gateway": "198.51.100.10",
        "ike": {"proposals": ["aes256-sha256-modp2048"], "esp_proposals": ["aes256"]},
        "local_id": {"type": "fqdn", "value": "client.example.com"},
        "auth": {"psk": {"env": "VPNJAIL_TEST_PSK"}},
    }
    data.update(fields)
    return Profile.model_validate(data)


def make_driver(**options) -> FreeBSDDriver:
    options.setdefault("state_dir", STATE)
    return FreeBSDDriver(egress="vtnet0", **options)


def steps_by_title(plan) -> dict:
    return {step.title: step for step in plan.steps}


def argvs(actions) -> list[tuple[str, ...]]:
    return [a.argv for a in actions if isinstance(a, Run | Spawn)]


# -- names ----------------------------------------------------------------------


def test_names_of_a_short_profile():
    names = make_driver().names("office")
    assert names.jail == "vpnjail-office"
    assert names.slot == 24866
    assert (names.epair, names.host_if, names.jail_if) == (
        "epair24866",
        "vjoffice",
        "epair24866b",
    )
    assert (names.anchor, names.label, names.tag) == (
        "vpnjail/office",
        "vpnjail:office",
        "vpnjail_office",
    )
    assert (names.root, names.conf) == (ROOT, CONF)


def test_long_names_are_shortened_to_distinct_interface_names():
    first = freebsd.host_interface("branch-office-1")
    second = freebsd.host_interface("branch-office-2")
    assert len(first) == len(second) == 15
    assert first != second
    assert first.startswith("vjbranch-o")
    assert freebsd.host_interface("abcdefghijklm") == "vjabcdefghijklm"


def test_slots_fit_epair_units_and_devfs_rulesets():
    for name in ("a", "office", "branch-office-1", "z23456789012345"):
        assert 20000 <= freebsd.slot(name) < 32000


def test_layout_points_into_the_jails_private_run_directory():
    layout = make_driver().layout("office")
    assert layout.stack == "vpnjail-office"
    assert layout.host_if == "vjoffice"
    assert layout.jail_if == "epair24866b"
    assert layout.run_dir == f"{ROOT}/var/run"
    assert layout.conf_dir == f"{ROOT}/etc/vpnjail"
    assert layout.vici_socket == f"{ROOT}/var/run/charon.vici"
    assert layout.log_file == f"{ROOT}/var/run/charon.log"
    assert layout.firewall == "vpnjail/office"
    assert make_driver().layout(make_profile()) == layout


@pytest.mark.parametrize("name", ["../etc", "Office", "a b", "x;reboot", ""])
def test_names_that_are_not_profile_names_are_refused(name):
    with pytest.raises(ValueError, match="is not a profile name"):
        make_driver().layout(name)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("egress", "em0\npass all"),
        ("egress", "em0 proto"),
        ("state_dir", "/var/db/vpn jail"),
        ("state_dir", "/var/db/$x"),
        ("state_dir", "relative"),
        ("state_dir", "/var/db/../tmp"),
    ],
)
def test_options_that_would_be_read_as_syntax_are_refused(option, value):
    options = {"egress": "vtnet0", "state_dir": STATE, option: value}
    with pytest.raises(ValueError):
        FreeBSDDriver(**options)


# -- needs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "tun"),
    [
        ({"backend": "libipsec", "mode_config": "off"}, True),
        ({"backend": "kernel", "mode_config": "pull"}, True),
        ({"backend": "kernel", "mode_config": "off"}, False),
        ({"backend": "libipsec", "tun": "hidden"}, False),
        ({"backend": "kernel", "mode_config": "off", "tun": "exposed"}, True),
    ],
)
def test_tun_is_needed_for_libipsec_and_for_virtual_ips(fields, tun):
    needs = make_driver().needs(make_profile(**fields))
    assert needs.tun is tun
    assert needs.kernel_ipsec is (fields["backend"] == "kernel")
    assert needs.extra["slot"] == 24866


# -- files ----------------------------------------------------------------------


def test_jail_conf():
    text = freebsd.render_jail_conf(make_driver().names("office"))
    assert text == (
        "# vpnjail: the jail of profile office; written by vpnjail.\n"
        "# Network, charon and pf are set up by vpnjail itself, step by step,\n"
        "# so no exec.* commands run here.\n"
        '"vpnjail-office" {\n'
        f'\tpath = "{ROOT}";\n'
        '\thost.hostname = "office";\n'
        '\tvnet = "new";\n'
        '\tvnet.interface = "epair24866b";\n'
        "\tpersist;\n"
        "\tallow.raw_sockets;\n"
        "\tmount.devfs;\n"
        "\tdevfs_ruleset = 24866;\n"
        f'\tmount.fstab = "{CONF}/fstab";\n'
        "}\n"
    )


def test_fstab_mounts_host_programs_read_only_and_a_private_tmp():
    text = freebsd.render_fstab(make_driver().names("office"))
    assert text.splitlines()[2:] == [
        f"/bin\t{ROOT}/bin\tnullfs\tro\t0\t0",
        f"/sbin\t{ROOT}/sbin\tnullfs\tro\t0\t0",
        f"/lib\t{ROOT}/lib\tnullfs\tro\t0\t0",
        f"/libexec\t{ROOT}/libexec\tnullfs\tro\t0\t0",
        f"/usr\t{ROOT}/usr\tnullfs\tro\t0\t0",
        f"/usr/local\t{ROOT}/usr/local\tnullfs\tro\t0\t0",
        f"tmpfs\t{ROOT}/tmp\ttmpfs\trw,nosuid,mode=1777,size=16m\t0\t0",
    ]
    assert all(line.startswith("#") for line in text.splitlines()[:2])


def plan_files(profile: Profile) -> dict[str, WriteFile]:
    plan = make_driver().plan_up(profile, LINK, "charon {\n}\n")
    return {f.path: f for f in plan.files()}


def test_private_configuration_is_written_inside_the_jail_root():
    files = plan_files(make_profile())
    conf = files[f"{ROOT}/etc/vpnjail/strongswan.conf"]
    assert (conf.content, conf.mode) == ("charon {\n}\n", 0o600)
    assert files[f"{ROOT}/etc/hosts"].content.splitlines()[1:] == [
        "127.0.0.1\tlocalhost office",
        "::1\tlocalhost office",
    ]
    assert sorted(files) == sorted(
        [
            f"{CONF}/jail.conf",
            f"{CONF}/fstab",
            f"{CONF}/anchor.pf",
            f"{ROOT}/etc/hosts",
            f"{ROOT}/etc/vpnjail/strongswan.conf",
        ]
    )


def anchor_rules(profile: Profile) -> list[str]:
    text = plan_files(profile)[f"{CONF}/anchor.pf"].content
    return [line for line in text.splitlines() if not line.startswith("#")]


PASS_FROM_JAIL = (
    'pass in quick on vjoffice inet from 192.0.2.2 to any tag "vpnjail_office" '
    'label "vpnjail:office"'
)
PASS_TAGGED_OUT = (
    'pass out quick inet all tagged "vpnjail_office" label "vpnjail:office"'
)


def test_anchor_with_nat_and_a_forward_into_the_jail():
    profile = make_profile(port_forwards=[{"host_port": 8022, "port": 22}])
    assert anchor_rules(profile) == [
        "nat on vtnet0 inet from 192.0.2.0/30 to any -> (vtnet0)",
        "rdr on vtnet0 inet proto tcp from any to (vtnet0) port 8022 -> "
        "192.0.2.2 port 22",
        PASS_FROM_JAIL,
        "pass in quick on vtnet0 inet proto tcp from any to 192.0.2.2 port 22 "
        'tag "vpnjail_office" label "vpnjail:office"',
        PASS_TAGGED_OUT,
    ]


def test_anchor_without_nat_has_no_nat_rule():
    assert anchor_rules(make_profile(nat=False)) == [PASS_FROM_JAIL, PASS_TAGGED_OUT]


def test_anchor_explains_why_there_is_no_static_port():
    text = plan_files(make_profile())[f"{CONF}/anchor.pf"].content
    assert "static-port" not in anchor_rules(make_profile())[0]
    assert "# No static-port: pf then gives each jail its own source port" in text


TUNNEL = [
    {"host_port": 8443, "to": "203.0.113.10", "port": 443},
    {"host_port": 5353, "proto": "udp", "to": "203.0.113.53", "port": 53},
]


def test_forwards_into_the_tunnel_land_on_the_jail_at_the_host_port():
    rules = anchor_rules(make_profile(backend="libipsec", port_forwards=TUNNEL))
    assert rules[1:3] == [
        "rdr on vtnet0 inet proto tcp from any to (vtnet0) port 8443 -> "
        "192.0.2.2 port 8443",
        "rdr on vtnet0 inet proto udp from any to (vtnet0) port 5353 -> "
        "192.0.2.2 port 5353",
    ]


def test_the_jail_relays_tunnel_forwards_from_its_virtual_ip():
    files = plan_files(make_profile(backend="libipsec", port_forwards=TUNNEL))
    text = files[f"{ROOT}/etc/vpnjail/pf.conf"].content
    assert [line for line in text.splitlines() if not line.startswith("#")] == [
        'nat on tun inet from any to any tagged "vpnjail_tunnel" -> (tun)',
        "rdr on epair24866b inet proto tcp from any to 192.0.2.2 port 8443 "
        'tag "vpnjail_tunnel" -> 203.0.113.10 port 443',
        "rdr on epair24866b inet proto udp from any to 192.0.2.2 port 5353 "
        'tag "vpnjail_tunnel" -> 203.0.113.53 port 53',
    ]


def test_tunnel_forwards_with_kernel_ipsec_are_refused():
    profile = make_profile(backend="kernel", port_forwards=TUNNEL[:1])
    with pytest.raises(ProfileError, match="need backend libipsec on FreeBSD"):
        make_driver().plan_up(profile, LINK, "")


def test_tunnel_forwards_across_address_families_are_refused():
    profile = make_profile(
        backend="libipsec",
        port_forwards=[{"host_port": 8443, "to": "2001:db8::10", "port": 443}],
    )
    with pytest.raises(ProfileError, match="cannot translate between families"):
        make_driver().plan_up(profile, LINK, "")


# -- plan_up ----------------------------------------------------------------------

UP_TITLES = [
    f"jail root {ROOT} and {CONF}",
    "configuration of jail vpnjail-office",
    "devfs ruleset 24866: devfsrules_jail_vnet and tun*",
    "epair epair24866a/epair24866b",
    "host end vjoffice 192.0.2.1/30",
    "pf anchor vpnjail/office",
    "jail vpnjail-office",
    "network in jail vpnjail-office: 192.0.2.2/30 via 192.0.2.1",
    "charon in jail vpnjail-office",
]


def test_plan_up_steps_in_order():
    plan = make_driver().plan_up(make_profile(), LINK, "")
    assert [step.title for step in plan.steps] == UP_TITLES


def test_plan_up_adds_the_jails_pf_only_for_tunnel_forwards():
    profile = make_profile(backend="libipsec", port_forwards=TUNNEL)
    steps = steps_by_title(make_driver().plan_up(profile, LINK, ""))
    step = steps["forwards into the tunnel: pf in jail vpnjail-office"]
    assert [(a.where, a.argv) for a in step.do] == [
        ("jail", ("/sbin/sysctl", "net.inet.ip.forwarding=1")),
        ("jail", ("/sbin/pfctl", "-e", "-f", "/etc/vpnjail/pf.conf")),
    ]


def test_devfs_ruleset_includes_devfsrules_jail_vnet_and_unhides_tun():
    steps = steps_by_title(make_driver().plan_up(make_profile(), LINK, ""))
    step = steps["devfs ruleset 24866: devfsrules_jail_vnet and tun*"]
    assert argvs(step.do) == [
        ("/sbin/devfs", "rule", "-s", "24866", "delset"),
        ("/sbin/devfs", "rule", "-s", "24866", "add", "100", "include", "5"),
        ("/sbin/devfs", "rule", "-s", "24866", "add", "200", "path", "tun*", "unhide"),
    ]
    assert argvs(step.undo) == [("/sbin/devfs", "rule", "-s", "24866", "delset")]


def test_devfs_ruleset_hides_tun_where_no_tun_is_needed():
    profile = make_profile(backend="kernel", mode_config="off")
    plan = make_driver().plan_up(profile, LINK, "")
    step = plan.steps[2]
    assert step.title == "devfs ruleset 24866: devfsrules_jail_vnet"
    assert not [a for a in step.do if "tun*" in a.argv]


def test_epair_and_host_end():
    steps = steps_by_title(make_driver().plan_up(make_profile(), LINK, ""))
    epair = steps["epair epair24866a/epair24866b"]
    assert argvs(epair.do) == [("/sbin/ifconfig", "epair24866", "create")]
    assert argvs(epair.undo) == [("/sbin/ifconfig", "epair24866a", "destroy")]
    host = steps["host end vjoffice 192.0.2.1/30"]
    assert argvs(host.do) == [
        ("/sbin/ifconfig", "epair24866a", "name", "vjoffice"),
        ("/sbin/ifconfig", "vjoffice", "description", "vpnjail:office"),
        ("/sbin/ifconfig", "vjoffice", "inet", "192.0.2.1/30", "up"),
    ]
    assert argvs(host.undo) == [("/sbin/ifconfig", "vjoffice", "name", "epair24866a")]


def test_jail_side_network_runs_in_the_jail():
    steps = steps_by_title(make_driver().plan_up(make_profile(), LINK, ""))
    step = steps["network in jail vpnjail-office: 192.0.2.2/30 via 192.0.2.1"]
    assert [(a.where, a.argv) for a in step.do] == [
        ("jail", ("/sbin/ifconfig", "lo0", "inet", "127.0.0.1/8", "up")),
        ("jail", ("/sbin/ifconfig", "epair24866b", "inet", "192.0.2.2/30", "up")),
        ("jail", ("/sbin/route", "-n", "add", "-inet", "default", "192.0.2.1")),
    ]


def test_ipv6_link_enables_inet6_on_both_ends():
    link = LinkAddresses("2001:db8:0:1::1/64", "2001:db8:0:1::2/64")
    plan = make_driver().plan_up(make_profile(), link, "")
    jail_side = [a.argv for a in plan.steps[7].do]
    assert jail_side[1:] == [
        ("/sbin/ifconfig", "epair24866b", "inet6", "-ifdisabled"),
        ("/sbin/ifconfig", "epair24866b", "inet6", "2001:db8:0:1::2/64", "up"),
        ("/sbin/route", "-n", "add", "-inet6", "default", "2001:db8:0:1::1"),
    ]
    assert "nat on vtnet0 inet6 from 2001:db8:0:1::/64 to any -> (vtnet0)" in (
        plan.files()[2].content
    )


def test_charon_runs_under_daemon_with_private_config_and_pid_file():
    plan = make_driver().plan_up(make_profile(), LINK, "")
    (spawn,) = plan.steps[-1].do
    assert isinstance(spawn, Spawn)
    assert spawn.where == "jail"
    assert spawn.argv == (
        "/usr/sbin/daemon",
        "-f",
        "-P",
        "/var/run/daemon-charon.pid",
        "-o",
        "/var/run/charon.out",
        "/usr/local/libexec/ipsec/charon",
    )
    assert spawn.env == (("STRONGSWAN_CONF", "/etc/vpnjail/strongswan.conf"),)
    (undo,) = plan.steps[-1].undo
    assert (undo.where, undo.argv) == ("jail", ("/bin/sh", "-c", freebsd.STOP_CHARON))


def test_directories_are_made_afresh_and_run_links_to_var_run():
    step = make_driver().plan_up(make_profile(), LINK, "").steps[0]
    assert argvs(step.do)[0] == (
        "/bin/rm",
        "-rf",
        f"{ROOT}/etc",
        f"{ROOT}/var",
        f"{ROOT}/run",
    )
    assert argvs(step.do)[2] == ("/bin/ln", "-s", "var/run", f"{ROOT}/run")
    made = argvs(step.do)[1][2:]
    assert f"{ROOT}/usr/local" not in made  # lives inside the /usr mount
    assert f"{ROOT}/etc/vpnjail" in made and CONF in made


OWN_MOUNTPOINTS = ("bin", "sbin", "lib", "libexec", "usr", "tmp", "dev")
# Creation undone by each step, listed in the order they must run.
EXPECTED_UNDO = {
    UP_TITLES[0]: [
        ("/bin/rm", "-rf", f"{ROOT}/etc", f"{ROOT}/var", f"{ROOT}/run", CONF),
        ("/bin/rmdir", *(f"{ROOT}/{d}" for d in OWN_MOUNTPOINTS), ROOT),
    ],
    UP_TITLES[2]: [("/sbin/devfs", "rule", "-s", "24866", "delset")],
    UP_TITLES[3]: [("/sbin/ifconfig", "epair24866a", "destroy")],
    UP_TITLES[4]: [("/sbin/ifconfig", "vjoffice", "name", "epair24866a")],
    UP_TITLES[5]: [
        ("/sbin/pfctl", "-k", "label", "-k", "vpnjail:office"),
        ("/sbin/pfctl", "-a", "vpnjail/office", "-F", "all"),
    ],
    UP_TITLES[6]: [
        ("/usr/sbin/jail", "-f", f"{CONF}/jail.conf", "-r", "vpnjail-office")
    ],
    UP_TITLES[8]: [("/bin/sh", "-c", freebsd.STOP_CHARON)],
}


def test_every_creating_step_has_its_undo():
    steps = steps_by_title(make_driver().plan_up(make_profile(), LINK, ""))
    for title, undo in EXPECTED_UNDO.items():
        assert argvs(steps[title].undo) == undo, title
    # The jail's own network dies with its vnet; nothing to undo there.
    assert steps[UP_TITLES[7]].undo == ()


def test_configuration_step_removes_exactly_what_it_wrote():
    step = make_driver().plan_up(make_profile(), LINK, "").steps[1]
    written = [a.path for a in step.do if isinstance(a, WriteFile)]
    copied = [f"{ROOT}/etc/services", f"{ROOT}/etc/protocols"]
    copied.append(f"{ROOT}/var/run/ld-elf.so.hints")
    assert argvs(step.undo) == [("/bin/rm", "-f", *written, *copied)]


def test_rollback_order_stops_charon_before_the_jail_goes():
    plan = make_driver().plan_up(make_profile(), LINK, "")
    order = [a.argv for step in reversed(plan.steps) for a in step.undo]
    position = {argv[0:2] + argv[2:3]: i for i, argv in enumerate(order)}
    stop = position[("/bin/sh", "-c", freebsd.STOP_CHARON)]
    jail = position[("/usr/sbin/jail", "-f", f"{CONF}/jail.conf")]
    rename = position[("/sbin/ifconfig", "vjoffice", "name")]
    destroy = position[("/sbin/ifconfig", "epair24866a", "destroy")]
    delset = position[("/sbin/devfs", "rule", "-s")]
    rmdir = position[("/bin/rmdir", f"{ROOT}/bin", f"{ROOT}/sbin")]
    assert stop < jail < rename < destroy < delset < rmdir


# -- plan_down ----------------------------------------------------------------------


def test_plan_down_from_the_name_alone():
    plan = make_driver().plan_down("office")
    assert [(s.title, [(a.where, a.argv, a.ok_codes) for a in s.do])
            for s in plan.steps] == [
        ("stop charon and destroy its tun interfaces before jail -r "
         "(FreeBSD commit 3b263fa76c08)",
         [("jail", ("/bin/sh", "-c", freebsd.STOP_CHARON), (0, 1))]),
        ("remove pf anchor vpnjail/office",
         [("host", ("/sbin/pfctl", "-k", "label", "-k", "vpnjail:office"), (0, 1)),
          ("host", ("/sbin/pfctl", "-a", "vpnjail/office", "-F", "all"), (0, 1))]),
        ("remove jail vpnjail-office",
         [("host", ("/usr/sbin/jail", "-f", f"{CONF}/jail.conf", "-r",
                    "vpnjail-office"), (0, 1)),
          ("host", ("/sbin/umount", f"{ROOT}/dev", f"{ROOT}/tmp",
                    f"{ROOT}/usr/local", f"{ROOT}/usr", f"{ROOT}/libexec",
                    f"{ROOT}/lib", f"{ROOT}/sbin", f"{ROOT}/bin"), (0, 1))]),
        ("destroy epair vjoffice (both ends)",
         [("host", ("/sbin/ifconfig", "vjoffice", "destroy"), (0, 1))]),
        ("remove devfs ruleset 24866",
         [("host", ("/sbin/devfs", "rule", "-s", "24866", "delset"), (0,))]),
        (f"remove {ROOT} and {CONF}",
         [("host", ("/bin/rm", "-rf", f"{ROOT}/etc", f"{ROOT}/var", f"{ROOT}/run",
                    CONF), (0,)),
          ("host", ("/bin/rmdir", f"{ROOT}/bin", f"{ROOT}/sbin", f"{ROOT}/lib",
                    f"{ROOT}/libexec", f"{ROOT}/usr", f"{ROOT}/tmp", f"{ROOT}/dev",
                    ROOT), (0, 1))]),
        ("check jail vpnjail-office is gone, not stuck in DYING",
         [("host", ("/bin/sh", "-c", freebsd.JAIL_GONE_CHECK, "sh",
                    "vpnjail-office"), (0,))]),
    ]  # fmt: skip


def test_stop_script_destroys_tuns_after_charon_and_names_no_profile():
    script = freebsd.STOP_CHARON
    assert script.index("pkill -TERM -L -F") < script.index('ifconfig "$tun" destroy')
    assert "/sbin/ifconfig -g tun" in script
    assert "office" not in script


def test_dying_check_reports_the_if_tuntap_bug():
    script = freebsd.JAIL_GONE_CHECK
    assert '/usr/sbin/jls -d -j "$1" dying' in script
    assert "stuck in DYING" in script and "3b263fa76c08" in script


# -- commands are argument vectors --------------------------------------------------

CONSTANT_SCRIPTS = {freebsd.STOP_CHARON, freebsd.JAIL_GONE_CHECK}


def all_actions(driver: FreeBSDDriver, profile: Profile) -> list[Run | Spawn]:
    up = driver.plan_up(profile, LINK, "charon {\n}\n")
    plans = [up, driver.plan_down(profile.name)]
    return [
        action
        for plan in plans
        for step in plan.steps
        for action in (*step.do, *step.undo)
        if isinstance(action, Run | Spawn)
    ]


def test_every_argv_element_is_a_separate_string():
    forwards = [*TUNNEL, {"host_port": 8022, "port": 22}]
    profile = make_profile(name="my-vpn", backend="libipsec", port_forwards=forwards)
    for action in all_actions(make_driver(), profile):
        assert isinstance(action.argv, tuple)
        for element in action.argv:
            assert isinstance(element, str)
            # Only the two constant scripts hold spaces or shell syntax.
            if element not in CONSTANT_SCRIPTS:
                assert not set(element) & set(" \t\n;&|`$<>()'\""), element


def test_profile_names_never_reach_a_shell_as_text():
    for action in all_actions(make_driver(), make_profile(name="my-vpn")):
        argv = list(action.argv)
        if argv[:2] == ["/bin/sh", "-c"]:
            assert argv[2] in CONSTANT_SCRIPTS
            assert all("my-vpn" not in script for script in CONSTANT_SCRIPTS)


def test_a_profile_name_cannot_carry_shell_syntax():
    with pytest.raises(ValueError):
        make_profile(name="x;reboot")
    with pytest.raises(ValueError, match="is not a profile name"):
        make_driver().plan_down("x$(reboot)")


# -- carrying out ---------------------------------------------------------------------


class RecordingRunner:
    def __init__(self, returncode: int = 0, stderr: str = "", on_run=None):
        self.calls = []
        self.returncode = returncode
        self.stderr = stderr
        self.on_run = on_run

    def __call__(self, argv, input_text, env):
        self.calls.append((tuple(argv), input_text, env))
        if self.on_run is not None:
            self.on_run(argv)
        return subprocess.CompletedProcess(argv, self.returncode, "", self.stderr)


def test_run_uses_jexec_for_the_jail_and_nothing_for_the_host():
    runner = RecordingRunner()
    driver = make_driver(runner=runner)
    layout = driver.layout("office")
    driver.run(Run(("/sbin/ifconfig", "lo0", "up"), "jail"), layout)
    driver.run(Run(("/sbin/pfctl", "-s", "info"), input_text="x\n"), layout)
    assert [(c[0], c[1]) for c in runner.calls] == [
        (("/usr/sbin/jexec", "vpnjail-office", "/sbin/ifconfig", "lo0", "up"), None),
        (("/sbin/pfctl", "-s", "info"), "x\n"),
    ]


def test_run_refuses_places_the_driver_does_not_know():
    driver = make_driver(runner=RecordingRunner())
    with pytest.raises(ValueError, match="not 'netns'"):
        driver.run(Run(("/bin/true",), "netns"), driver.layout("office"))


def charon_spawn(driver: FreeBSDDriver) -> Spawn:
    plan = driver.plan_up(make_profile(), LINK, "")
    return plan.steps[-1].do[0]


def test_spawn_starts_charon_in_the_jail_and_returns_the_supervisor_pid(tmp_path):
    pidfile = tmp_path / "jails/office/var/run/daemon-charon.pid"

    def daemonize(argv):
        pidfile.parent.mkdir(parents=True)
        pidfile.write_text("4242\n")

    runner = RecordingRunner(on_run=daemonize)
    driver = make_driver(state_dir=str(tmp_path), runner=runner)
    pid = driver.spawn(charon_spawn(driver), driver.layout("office"))
    assert pid == 4242
    ((argv, _, env),) = runner.calls
    assert argv[:2] == ("/usr/sbin/jexec", "vpnjail-office")
    assert argv[2:5] == ("/usr/sbin/daemon", "-f", "-P")
    assert env["STRONGSWAN_CONF"] == "/etc/vpnjail/strongswan.conf"


def test_spawn_reports_a_failed_start(tmp_path):
    runner = RecordingRunner(returncode=1, stderr="jexec: jail not found\n")
    driver = make_driver(state_dir=str(tmp_path), runner=runner)
    with pytest.raises(RuntimeError, match="charon did not start: jexec: jail not"):
        driver.spawn(charon_spawn(driver), driver.layout("office"))


def test_wait_started_names_what_charon_said_before_dying(tmp_path, monkeypatch):
    driver = make_driver(state_dir=str(tmp_path))
    layout = driver.layout("office")
    os.makedirs(layout.run_dir)
    Path(layout.run_dir, "charon.out").write_text(
        'ld-elf.so.1: Shared object "libcharon.so.0" not found\n'
    )
    monkeypatch.setattr(FreeBSDDriver, "_pid_alive", staticmethod(lambda pid: False))
    with pytest.raises(RuntimeError, match="exited during start: ld-elf.so.1: Sh"):
        driver.wait_started(charon_spawn(driver), layout, 4242, 1.0)


def test_wait_started_returns_once_the_vici_socket_exists(tmp_path):
    driver = make_driver(state_dir=str(tmp_path))
    layout = driver.layout("office")
    os.makedirs(layout.run_dir)
    Path(layout.vici_socket).touch()
    driver.wait_started(charon_spawn(driver), layout, os.getpid(), 1.0)


def test_stop_runs_the_stop_script_in_the_jail():
    runner = RecordingRunner()
    driver = make_driver(runner=runner)
    driver.stop(driver.layout("office"))
    assert runner.calls[0][0] == (
        "/usr/sbin/jexec",
        "vpnjail-office",
        "/bin/sh",
        "-c",
        freebsd.STOP_CHARON,
    )


# -- preflight ----------------------------------------------------------------------

PF_INFO = "Status: Enabled for 0 days 01:02:03           Debug: Urgent\n"
PF_NAT = 'nat-anchor "vpnjail/*" all\nrdr-anchor "vpnjail/*" all\n'
PF_RULES = 'block drop in all\nanchor "vpnjail/*" all\npass out all flags S/SA\n'
HEALTHY = {
    ("/sbin/sysctl", "-n", "kern.features.vimage"): (0, "1\n"),
    ("/sbin/sysctl", "-n", "kern.features.ipsec"): (0, "1\n"),
    ("/sbin/sysctl", "-n", "net.link.tun.devfs_cloning"): (0, "1\n"),
    ("/sbin/sysctl", "-n", "net.inet.ip.forwarding"): (0, "1\n"),
    ("/sbin/sysctl", "-n", "net.inet6.ip6.forwarding"): (0, "1\n"),
    ("/sbin/kldstat", "-q", "-m", "if_epair"): (0, ""),
    ("/sbin/kldstat", "-q", "-m", "if_tuntap"): (0, ""),
    ("/sbin/kldstat", "-q", "-m", "pf"): (0, ""),
    ("/sbin/ifconfig", "vtnet0"): (0, "vtnet0: flags=1008843<UP>\n"),
    ("/sbin/devfs", "rule", "-s", "5", "show"): (0, "100 include 1\n"),
    ("/sbin/pfctl", "-s", "info"): (0, PF_INFO),
    ("/sbin/pfctl", "-s", "nat"): (0, PF_NAT),
    ("/sbin/pfctl", "-s", "rules"): (0, PF_RULES),
    ("/bin/test", "-x", "/usr/local/libexec/ipsec/charon"): (0, ""),
    ("/bin/test", "-e", freebsd.LIBIPSEC_PLUGIN): (0, ""),
    ("/usr/sbin/pkg", "query", "%v", "strongswan"): (0, "6.0.1_1\n"),
}


class FakeProbe:
    """Recorded answers by argv; anything not recorded fails."""

    def __init__(self, answers: dict):
        self.answers = answers
        self.asked = []

    def __call__(self, argv):
        self.asked.append(tuple(argv))
        return self.answers.get(tuple(argv), (1, ""))


def preflight(changes: dict, profiles=None) -> list[str]:
    probe = FakeProbe({**HEALTHY, **changes})
    profiles = profiles or [
        make_profile(name="office", backend="kernel"),
        make_profile(name="lab", backend="libipsec"),
    ]
    return make_driver(probe=probe).preflight(profiles)


def test_a_healthy_host_has_no_problems():
    assert preflight({}) == []


MISSING = [
    (
        ("/sbin/sysctl", "-n", "kern.features.ipsec"),
        "the ipsec kernel module is not loaded, needed by office (backend kernel): "
        "GENERIC has only IPSEC_SUPPORT, and without ipsec.ko every SADB_ADD fails "
        "with EINVAL: kldload ipsec && sysrc kld_list+=ipsec",
    ),
    (
        ("/sbin/kldstat", "-q", "-m", "if_tuntap"),
        "if_tuntap is not loaded, needed by office, lab (tun device): "
        "kldload if_tuntap && sysrc kld_list+=if_tuntap",
    ),
    (
        ("/sbin/kldstat", "-q", "-m", "if_epair"),
        "if_epair is not loaded: kldload if_epair && sysrc kld_list+=if_epair",
    ),
    (
        ("/sbin/sysctl", "-n", "net.link.tun.devfs_cloning"),
        "net.link.tun.devfs_cloning is not 1, so charon in office, lab cannot open "
        "/dev/tun: sysctl net.link.tun.devfs_cloning=1 && "
        "echo net.link.tun.devfs_cloning=1 >> /etc/sysctl.conf",
    ),
    (
        ("/sbin/sysctl", "-n", "net.inet.ip.forwarding"),
        "IPv4 forwarding is off (net.inet.ip.forwarding): "
        "sysctl net.inet.ip.forwarding=1 && sysrc gateway_enable=YES",
    ),
    (
        ("/sbin/sysctl", "-n", "kern.features.vimage"),
        "the kernel lacks VIMAGE (kern.features.vimage), which vnet jails need: "
        "boot a GENERIC kernel or build one with `options VIMAGE`",
    ),
    (
        ("/sbin/ifconfig", "vtnet0"),
        "egress interface vtnet0 does not exist: pass --egress with the host's "
        "outside interface (`route -n get default` names it)",
    ),
    (
        ("/sbin/devfs", "rule", "-s", "5", "show"),
        "devfs ruleset 5 (devfsrules_jail_vnet), which every vpnjail ruleset "
        "includes, is not loaded: service devfs restart",
    ),
    (
        ("/sbin/kldstat", "-q", "-m", "pf"),
        "pf is not loaded: sysrc pf_enable=YES && service pf start",
    ),
    (
        ("/sbin/pfctl", "-s", "info"),
        "pf is loaded but not enabled: sysrc pf_enable=YES && service pf start",
    ),
    (
        ("/bin/test", "-x", "/usr/local/libexec/ipsec/charon"),
        "strongSwan is not installed (/usr/local/libexec/ipsec/charon): "
        "pkg install strongswan",
    ),
    (
        ("/bin/test", "-e", freebsd.LIBIPSEC_PLUGIN),
        "lab use backend libipsec, but /usr/local/lib/ipsec/plugins/"
        "libstrongswan-kernel-libipsec.so is missing (the FreeBSD package is built "
        "without it): make -C /usr/ports/security/strongswan WITH=KERNELLIBIPSEC "
        "BATCH=yes install clean (vpnjail lists its plugins in charon.load, so the "
        "port's load = no in strongswan.d/charon/kernel-libipsec.conf does not "
        "apply to it)",
    ),
]


@pytest.mark.parametrize(("argv", "line"), MISSING, ids=[m[0][-1] for m in MISSING])
def test_each_missing_piece_is_one_line_with_its_fix(argv, line):
    assert preflight({argv: (1, "")}) == [line]


def test_a_disabled_pf_is_reported_from_its_status_line():
    info = "Status: Disabled for 0 days 00:00:10           Debug: Urgent\n"
    problems = preflight({("/sbin/pfctl", "-s", "info"): (0, info)})
    assert problems == [
        "pf is loaded but not enabled: sysrc pf_enable=YES && service pf start"
    ]


@pytest.mark.parametrize(
    ("probe", "shown", "kind", "where"),
    [
        ("nat", 'rdr-anchor "vpnjail/*" all\n', "nat-anchor",
         "with the translation rules, before the filter rules"),
        ("nat", 'nat-anchor "vpnjail/*" all\n', "rdr-anchor",
         "with the translation rules, before the filter rules"),
        ("rules", 'anchor "other/*" all\n', "anchor", "among the filter rules"),
    ],
)  # fmt: skip
def test_missing_anchor_lines_are_printed_to_add(probe, shown, kind, where):
    problems = preflight({("/sbin/pfctl", "-s", probe): (0, shown)})
    assert problems == [
        "the main pf ruleset does not evaluate vpnjail's anchors: add the line "
        f'`{kind} "vpnjail/*"` to /etc/pf.conf ({where}), then pfctl -f /etc/pf.conf'
    ]


def test_kernel_ipsec_is_not_asked_for_when_no_profile_uses_it():
    problems = preflight(
        {("/sbin/sysctl", "-n", "kern.features.ipsec"): (1, "")},
        [make_profile(name="lab", backend="libipsec")],
    )
    assert problems == []


def test_tun_is_not_asked_for_when_no_profile_needs_it():
    profiles = [make_profile(backend="kernel", mode_config="off")]
    problems = preflight(
        {("/sbin/kldstat", "-q", "-m", "if_tuntap"): (1, "")}, profiles
    )
    assert problems == []


def test_ipv6_links_need_ipv6_forwarding():
    profile = make_profile(
        link={"host": "2001:db8:0:1::1/64", "jail": "2001:db8:0:1::2/64"}
    )
    problems = preflight(
        {("/sbin/sysctl", "-n", "net.inet6.ip6.forwarding"): (0, "0\n")}, [profile]
    )
    assert problems == [
        "IPv6 forwarding is off, needed by office (net.inet6.ip6.forwarding): "
        "sysctl net.inet6.ip6.forwarding=1 && sysrc ipv6_gateway_enable=YES"
    ]


def test_tunnel_forwards_with_kernel_ipsec_are_a_preflight_problem():
    profile = make_profile(backend="kernel", port_forwards=TUNNEL[:1])
    (problem,) = preflight({}, [profile])
    assert problem.startswith(
        "profile office: port_forwards into the tunnel need backend libipsec"
    )


def test_profiles_sharing_a_slot_are_reported(monkeypatch):
    monkeypatch.setattr(freebsd, "slot", lambda name: 20001)
    problems = preflight({}, [make_profile(name="a"), make_profile(name="b")])
    assert problems == ["profiles a and b share the slot 20001: rename one"]


# -- version advisories -------------------------------------------------------------


def advisories(version_answers: dict, profiles=None) -> list[str]:
    probe = FakeProbe(version_answers)
    return make_driver(probe=probe).advisories(profiles or [make_profile()])


def test_old_strongswan_gets_every_freebsd_warning_that_applies():
    old = {("/usr/sbin/pkg", "query", "%v", "strongswan"): (0, "5.9.5\n")}
    assert advisories(old) == [
        "warning: strongSwan 5.9.5 (used by office): full-tunnel exclude routes "
        "break IKE on FreeBSD (strongSwan #910); pkg upgrade strongswan",
        "warning: strongSwan 5.9.5 (used by office): routes may miss the virtual "
        "IP as source on FreeBSD (strongSwan #1807); pkg upgrade strongswan",
        "warning: strongSwan 5.9.5 (used by office): IPv6 virtual IPs fail with "
        "EINVAL on FreeBSD (strongSwan #2465); pkg upgrade strongswan",
    ]


def test_split_tunnel_without_virtual_ip_escapes_the_route_warnings():
    profile = make_profile(mode_config="off", remote_networks=["203.0.113.0/24"])
    old = {("/usr/sbin/pkg", "query", "%v", "strongswan"): (0, "5.9.5\n")}
    assert advisories(old, [profile]) == []


def test_charon_version_is_the_fallback_without_pkg():
    answers = {
        ("/usr/local/libexec/ipsec/charon", "--version"): (
            0,
            "FreeBSD strongSwan 5.9.11\n",
        )
    }
    lines = advisories(answers)
    assert [line.split(":")[2].strip() for line in lines] == [
        "routes may miss the virtual IP as source on FreeBSD (strongSwan #1807); "
        "pkg upgrade strongswan",
        "IPv6 virtual IPs fail with EINVAL on FreeBSD (strongSwan #2465); "
        "pkg upgrade strongswan",
    ]


def test_current_strongswan_has_no_advisories_and_preflight_stays_clean():
    assert advisories(HEALTHY) == []
    assert preflight({}) == []


# -- leftovers ----------------------------------------------------------------------


def leftover_probe(tmp_path: Path) -> FakeProbe:
    jails = tmp_path / "jails"
    return FakeProbe({
        ("/usr/sbin/jls", "-d", "name", "dying"): (
            0, "vpnjail-office false\nvpnjail-old false\nvpnjail-gone true\n"
               "www false\n"),
        ("/sbin/mount", "-p"): (
            0, f"/usr\t{jails}/old/usr\tnullfs\tro\t0 0\n"
               f"/usr/local\t{jails}/old/usr/local\tnullfs\tro\t0 0\n"
               f"/usr\t{jails}/office/usr\tnullfs\tro\t0 0\n"
               "/dev/ada0p2\t/\tufs\trw\t1 1\n"),
        ("/sbin/ifconfig", "-g", "epair"): (
            0, "vjoffice\nvjold\nepair0a\nepair0b\n"),
        ("/sbin/pfctl", "-a", "vpnjail", "-s", "Anchors"): (
            0, "  vpnjail/office\n  vpnjail/old\n"),
        ("/sbin/devfs", "rule", "showsets"): (
            0, f"4\n5\n{freebsd.slot('office')}\n{freebsd.slot('old')}\n20000\n"),
        ("/sbin/devfs", "rule", "-s", str(freebsd.slot("old")), "show"): (
            0, "100 include 5\n200 path tun* unhide\n"),
        ("/sbin/devfs", "rule", "-s", "20000", "show"): (0, "100 path bpf unhide\n"),
    })  # fmt: skip


def test_leftovers_of_stopped_profiles_in_removal_order(tmp_path):
    for area in ("jails", "conf"):
        for name in ("office", "old"):
            (tmp_path / area / name).mkdir(parents=True)
    driver = make_driver(state_dir=str(tmp_path), probe=leftover_probe(tmp_path))
    assert driver.leftovers({"office"}) == [
        "jail:vpnjail-old",
        f"mount:{tmp_path}/jails/old/usr/local",
        f"mount:{tmp_path}/jails/old/usr",
        "epair:vjold",
        "anchor:vpnjail/old",
        f"devfs-ruleset:{freebsd.slot('old')}",
        f"conf:{tmp_path}/conf/old",
        f"root:{tmp_path}/jails/old",
        "dying-jail:vpnjail-gone",
    ]


def test_leftovers_without_pf_or_state_directory(tmp_path):
    driver = make_driver(state_dir=str(tmp_path / "none"), probe=FakeProbe({}))
    assert driver.leftovers(set()) == []


def removal(item: str, tmp_path: Path, probe=None) -> list[tuple[str, ...]]:
    runner = RecordingRunner()
    driver = make_driver(
        state_dir=str(tmp_path), runner=runner, probe=probe or FakeProbe({})
    )
    driver.remove_leftover(item)
    return [call[0] for call in runner.calls]


def test_removing_a_leftover_jail_stops_charon_first(tmp_path):
    calls = removal("jail:vpnjail-old", tmp_path)
    assert calls == [
        ("/usr/sbin/jexec", "vpnjail-old", "/bin/sh", "-c", freebsd.STOP_CHARON),
        ("/usr/sbin/jail", "-r", "vpnjail-old"),
    ]


def test_removing_leftover_network_and_firewall_objects(tmp_path):
    assert removal("epair:vjold", tmp_path) == [("/sbin/ifconfig", "vjold", "destroy")]
    assert removal("anchor:vpnjail/old", tmp_path) == [
        ("/sbin/pfctl", "-k", "label", "-k", "vpnjail:old"),
        ("/sbin/pfctl", "-a", "vpnjail/old", "-F", "all"),
    ]
    slot = str(freebsd.slot("old"))
    assert removal(f"devfs-ruleset:{slot}", tmp_path) == [
        ("/sbin/devfs", "rule", "-s", slot, "delset")
    ]


def test_removing_a_leftover_root_leaves_it_while_something_is_mounted(tmp_path):
    root = f"{tmp_path}/jails/old"
    mounted = FakeProbe(
        {("/sbin/mount", "-p"): (0, f"/usr {root}/usr nullfs ro 0 0\n")}
    )
    assert removal(f"root:{root}", tmp_path, mounted) == []
    calls = removal(f"root:{root}", tmp_path)
    assert calls[0] == ("/bin/rm", "-rf", f"{root}/etc", f"{root}/var", f"{root}/run")
    assert calls[1][0] == "/bin/rmdir" and calls[1][-1] == root


@pytest.mark.parametrize(
    "item",
    [
        "root:/etc",
        "root:{state}/jails/old/../../..",
        "conf:{state}/jails/old",
        "mount:/usr",
        "epair:em0",
        "devfs-ruleset:5",
        "jail:www",
        "netns:vpnjail-old",
    ],
)
def test_only_vpnjails_own_leftovers_can_be_removed(item, tmp_path):
    with pytest.raises(ValueError):
        removal(item.format(state=tmp_path), tmp_path)


def test_a_jail_stuck_dying_is_reported_not_removed(tmp_path):
    with pytest.raises(RuntimeError, match="vpnjail-gone is stuck in DYING"):
        removal("dying-jail:vpnjail-gone", tmp_path)


# -- rc.d script ----------------------------------------------------------------------


def rc_lines() -> list[str]:
    return RC_SCRIPT.read_text().splitlines()


def test_rc_script_header_follows_rcorder():
    lines = rc_lines()
    assert lines[0] == "#!/bin/sh"
    assert "# PROVIDE: vpnjail" in lines
    assert "# REQUIRE: NETWORKING pf" in lines
    assert "# KEYWORD: shutdown" in lines


def test_rc_script_sets_what_rc_subr_needs():
    lines = rc_lines()
    for line in (
        ". /etc/rc.subr",
        'name="vpnjail"',
        'rcvar="vpnjail_enable"',
        'load_rc_config "$name"',
        ': "${vpnjail_enable:=NO}"',
        ': "${vpnjail_profiles_dir:=/usr/local/etc/vpnjail/profiles}"',
        'pidfile="/var/run/${name}.pid"',
        'command="/usr/sbin/daemon"',
        'stop_cmd="vpnjail_stop"',
        'run_rc_command "$1"',
    ):
        assert line in lines, line
    assert lines[-1] == 'run_rc_command "$1"'


def test_rc_script_runs_vpnjail_under_daemon_and_stops_every_profile():
    text = RC_SCRIPT.read_text()
    assert (
        'command_args="-f -P ${pidfile} -o ${vpnjail_logfile} -t ${name} '
        '${vpnjail_bin} ${vpnjail_options} run"' in text
    )
    assert "\t${vpnjail_bin} ${vpnjail_options} down --all\n" in text
    assert 'vpnjail_options="--profiles ${vpnjail_profiles_dir}"' in text
    # rc.subr would swap the command for ${name}_program: leave that unset.
    assert "vpnjail_program" not in text


@pytest.mark.skipif(shutil.which("sh") is None, reason="no sh to parse with")
def test_rc_script_parses():
    done = subprocess.run(
        ["sh", "-n", str(RC_SCRIPT)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
