"""lab/vm/freebsd_provision.py: the exact commands a FreeBSD guest gets.

Nothing here runs a command: the steps are data, compared word for word,
and a fake node records what :func:`run_steps` would send.
"""

import datetime
import shlex

import pytest
import yaml

from lab.vm import freebsd_provision as fp
from lab.vm import seed

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx0bGFia2V5Zm9ydGVzdHM vjlab-freebsd"
PKG = ["env", "ASSUME_ALWAYS_YES=yes", "IGNORE_OSVERSION=yes", "pkg"]


def argvs(steps) -> list[list[str]]:
    return [list(step.argv) for step in steps]


def test_user_data_gives_nuageinit_the_key_for_its_default_user_only():
    text = fp.nuageinit_user_data(KEY + "\n")

    first, _, body = text.partition("\n")
    assert first == "#cloud-config"  # nuageinit compares this line with ==
    assert yaml.safe_load(body) == {"ssh_authorized_keys": [KEY]}
    # No `users` key: nuageinit then creates its default user (freebsd,
    # group wheel) and gives it the top-level keys.
    assert "users" not in text and "runcmd" not in text and "packages" not in text


def test_user_data_refuses_anything_but_one_key_line():
    with pytest.raises(ValueError, match="one OpenSSH public key"):
        fp.nuageinit_user_data(KEY + "\n" + KEY)
    with pytest.raises(ValueError):
        fp.nuageinit_user_data("not a key")


def test_seed_iso_carries_the_nuageinit_files(tmp_path):
    path = tmp_path / "seed.iso"

    seed.build_seed_iso(
        str(path), fp.nuageinit_user_data(KEY), fp.nuageinit_meta_data("vjlab-g1")
    )

    volume, files = seed.read_seed_iso(str(path))
    assert volume == "cidata"
    assert files["user-data"] == fp.nuageinit_user_data(KEY)
    assert yaml.safe_load(files["meta-data"]) == {
        "instance-id": "vjlab-g1",
        "local-hostname": "vjlab-g1",
    }


def test_cloudinit_login_su_to_root_installs_the_key_and_locks_sshd():
    [step] = fp.root_login_steps("cloudinit", KEY)

    assert step.argv == ("su", "-m", "root", "-c", "/bin/sh -s")
    script = step.input_text.splitlines()
    assert script[:3] == ["set -eu", "umask 077", "mkdir -p ~root/.ssh"]
    assert f"printf '%s\\n' {shlex.quote(KEY)} >> ~root/.ssh/authorized_keys" in script
    assert (
        "sed -i '' -E '/^[[:space:]]*(PermitRootLogin|PasswordAuthentication|"
        "PermitEmptyPasswords|KbdInteractiveAuthentication)[[:space:]]/d' "
        "/etc/ssh/sshd_config"
    ) in script
    assert (
        "printf '%s\\n' 'PermitRootLogin prohibit-password' "
        "'PasswordAuthentication no' 'PermitEmptyPasswords no' "
        "'KbdInteractiveAuthentication no' >> /etc/ssh/sshd_config"
    ) in script
    assert script[-2:] == ["/usr/sbin/sshd -t", "service sshd reload"]


def test_basic_ci_login_is_already_root():
    [step] = fp.root_login_steps("empty-root", KEY)

    assert step.argv == ("/bin/sh", "-s")
    assert "PermitEmptyPasswords no" in step.input_text
    assert fp.login_user("empty-root") == "root"
    assert fp.login_user("cloudinit") == "freebsd"


def test_plain_images_cannot_be_provisioned():
    with pytest.raises(ValueError, match="cannot be provisioned"):
        fp.root_login_steps("none", KEY)
    with pytest.raises(ValueError, match="cannot be provisioned"):
        fp.login_user("none")


def test_base_steps_bootstrap_pkg_without_questions():
    assert argvs(fp.base_steps()) == [
        [*PKG, "bootstrap", "-y"],
        [*PKG, "update", "-f"],
        [*PKG, "install", "-y", "python3"],
        ["python3", "-c", "import sys; sys.exit(sys.version_info < (3, 11))"],
        ["sh", "-c", fp.VPNJAIL_DEPENDENCIES],
        ["sysrc", "ifconfig_vtnet0=DHCP", "ifconfig_vtnet1=up"],
        ["mkdir", "-p", "/var/db/vjlab/packages"],
    ]


def test_vpnjail_dependencies_follow_the_guests_python():
    assert fp.VPNJAIL_DEPENDENCIES == (
        "p=$(python3 -c 'import sys; print(\"py%d%d\" % sys.version_info[:2])') && "
        "env ASSUME_ALWAYS_YES=yes IGNORE_OSVERSION=yes pkg install -y "
        '"$p-pyyaml" "$p-pydantic2" "$p-vici"'
    )


def test_strongswan_from_pkg():
    assert argvs(fp.strongswan_steps("pkg")) == [[*PKG, "install", "-y", "strongswan"]]


def test_ports_build_is_the_port_with_kernellibipsec_as_a_package():
    steps = fp.ports_build_steps("2026Q2")

    assert argvs(steps)[0] == [*PKG, "install", "-y", "git"]
    assert argvs(steps)[1] == [
        "git", "clone", "--depth", "1", "--branch", "2026Q2",
        "https://git.FreeBSD.org/ports.git", "/usr/ports",
    ]  # fmt: skip
    assert steps[2].check is False  # ready-made dependencies are a shortcut
    assert "build-depends-list run-depends-list" in steps[2].argv[2]
    assert argvs(steps)[3] == [
        "make", "-C", "/usr/ports/security/strongswan", "WITH=KERNELLIBIPSEC",
        "BATCH=yes", "package",
    ]  # fmt: skip
    assert argvs(steps)[4] == [
        "make", "-C", "/usr/ports/security/strongswan", "WITH=KERNELLIBIPSEC",
        "BATCH=yes", "-V", "PKGFILE",
    ]  # fmt: skip


def test_ports_strongswan_is_the_kept_package_with_libipsec_enabled():
    steps = fp.strongswan_steps("ports")
    package = "/var/db/vjlab/packages/strongswan-kernellibipsec.pkg"
    conf = "/usr/local/etc/strongswan.d/charon/kernel-libipsec.conf"

    assert steps[0].argv[:2] == ("sh", "-c")
    assert f"pkg query -F {package} '%dn'" in steps[0].argv[2]
    assert argvs(steps)[1:] == [
        [*PKG, "add", package],
        ["test", "-f", "/usr/local/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so"],
        ["sed", "-i", "", "-E",
         r"s/^([[:space:]]*load[[:space:]]*=[[:space:]]*)no[[:space:]]*$/\1yes/",
         conf],
        ["grep", "-Eq", r"^[[:space:]]*load[[:space:]]*=[[:space:]]*yes", conf],
    ]  # fmt: skip


def test_unknown_build_is_refused():
    with pytest.raises(ValueError, match="allowed"):
        fp.strongswan_steps("source")


@pytest.mark.parametrize(
    ("day", "branch"),
    [((2026, 1, 1), "2026Q1"), ((2026, 3, 31), "2026Q1"), ((2026, 4, 1), "2026Q2"),
     ((2025, 12, 2), "2025Q4")],
)  # fmt: skip
def test_ports_branch_is_the_quarter(day, branch):
    assert fp.ports_branch(datetime.date(*day)) == branch


def test_module_steps_load_or_keep_out_ipsec():
    loaded = argvs(fp.module_steps("loaded"))
    unloaded = argvs(fp.module_steps("unloaded", pf=False))

    assert loaded == [
        ["kldload", "-n", "if_epair"],
        ["kldload", "-n", "if_tuntap"],
        ["kldload", "-n", "pf"],
        ["kldload", "-n", "ipsec"],
        ["sysctl", "-n", "kern.features.ipsec"],
    ]
    assert unloaded == [
        ["kldload", "-n", "if_epair"],
        ["kldload", "-n", "if_tuntap"],
        ["sh", "-c", "! kldstat -q -m ipsec || kldunload ipsec"],
        ["sh", "-c", "! sysctl -n kern.features.ipsec >/dev/null 2>&1"],
    ]
    with pytest.raises(ValueError):
        fp.module_steps("maybe")


def test_provision_plan_and_its_text_key_the_layer():
    pkg = fp.provision_plan("cloudinit", KEY, "pkg")
    ports = fp.provision_plan("cloudinit", KEY, "ports")

    assert pkg[0].argv[0] == "su" and pkg[-1].argv[-1] == "strongswan"
    assert fp.plan_text(pkg) != fp.plan_text(ports)
    assert fp.plan_text(pkg) == fp.plan_text(fp.provision_plan("cloudinit", KEY, "pkg"))
    assert "env ASSUME_ALWAYS_YES=yes IGNORE_OSVERSION=yes pkg bootstrap -y" in (
        fp.plan_text(pkg)
    )


def test_first_boot_waits_for_rc_and_checks_for_a_reboot():
    [wait] = fp.first_boot_steps()
    assert wait.argv[:2] == ("sh", "-c") and "/firstboot" in wait.argv[2]
    assert fp.reboot_pending_step().argv == ("test", "-e", "/firstboot-reboot")
    assert fp.reboot_pending_step().check is False


class RecordingNode:
    def __init__(self):
        self.calls = []

    def run(self, argv, check=True, timeout=60.0, input_text=None):
        self.calls.append((argv, check, timeout, input_text))
        return "ok"


def test_run_steps_sends_each_step_as_given():
    node = RecordingNode()
    steps = fp.root_login_steps("empty-root", KEY) + fp.strongswan_steps("pkg")

    assert fp.run_steps(node, steps) == ["ok", "ok"]

    assert node.calls[0][0] == ["/bin/sh", "-s"] and node.calls[0][3].startswith("set")
    assert node.calls[1] == ([*PKG, "install", "-y", "strongswan"], True, 600.0, None)


# -- the cell layer ------------------------------------------------------------------


def test_devfs_rulesets_per_cell_value():
    assert fp.devfs_steps("hostdev") == []
    assert argvs(fp.devfs_steps("rs4")) == [
        ["sh", "-c", "devfs rule -s 4 show | grep -q ."]
    ]
    assert argvs(fp.devfs_steps("rs5tun")) == [
        ["sh", "-c", "devfs rule -s 5 show | grep -q ."],
        ["devfs", "rule", "-s", "100", "delset"],
        ["devfs", "rule", "-s", "100", "add", "include", "5"],
        ["devfs", "rule", "-s", "100", "add", "path", "tun*", "unhide"],
    ]
    with pytest.raises(ValueError, match="allowed"):
        fp.devfs_steps("rs6")


def test_vnet_jail_conf():
    text = fp.render_jail_conf("vnet", "rs5tun", "/var/db/vjlab/jails/lab", "192.0.2.2")

    assert text.splitlines() == [
        "# vjlab: the cell's jail",
        "lab {",
        '\tpath = "/var/db/vjlab/jails/lab";',
        '\thost.hostname = "lab";',
        "\tpersist;",
        "\tallow.raw_sockets;",
        "\tmount.devfs;",
        "\tdevfs_ruleset = 100;",
        '\tmount.fstab = "/var/db/vjlab/jail.fstab";',
        '\tvnet = "new";',
        '\tvnet.interface = "epair0b";',
        "}",
    ]


def test_classic_jail_conf_gets_its_address_and_socket_families():
    text = fp.render_jail_conf("jail", "rs4", "/r", "192.0.2.2")

    assert "\tdevfs_ruleset = 4;" in text
    assert "\tallow.socket_af;" in text
    assert '\tip4.addr = "lo1|192.0.2.2/32";' in text
    assert "vnet" not in text
    with pytest.raises(ValueError):
        fp.render_jail_conf("host", "rs4", "/r", "192.0.2.2")


def test_jail_root_and_fstab():
    root = "/var/db/vjlab/jails/lab"
    steps = argvs(fp.jail_root_steps(root))

    assert steps[0][:2] == ["mkdir", "-p"] and f"{root}/var/run" in steps[0]
    assert ["cp", "-Rp", "/etc", f"{root}/"] in steps
    assert ["ln", "-sf", "var/run", f"{root}/run"] in steps
    assert fp.render_fstab(root).splitlines()[1:] == [
        f"{path}\t{root}{path}\tnullfs\tro\t0\t0"
        for path in ("/bin", "/sbin", "/lib", "/libexec", "/usr", "/var/db/vjlab/py")
    ]


def test_pf_main_ruleset_evaluates_the_vpnjail_anchors():
    lines = fp.render_pf_conf().splitlines()

    for kind in ("nat-anchor", "rdr-anchor", "anchor"):
        assert f'{kind} "vpnjail/*"' in lines


def test_anchor_nats_only_for_pf_cells_and_always_forwards():
    nat = fp.render_anchor("pf", "192.0.2.0/30", "192.0.2.2", 8022).splitlines()
    direct = fp.render_anchor("direct", "192.0.2.0/30", "192.0.2.2", 8022).splitlines()
    forward = (
        "rdr on vtnet1 inet proto tcp from any to (vtnet1) port 8022 "
        "-> 192.0.2.2 port 8022"
    )

    assert nat[1:] == [
        "nat on vtnet1 inet from 192.0.2.0/30 to any -> (vtnet1)",
        forward,
    ]
    assert direct[1:] == [forward]


def test_guest_network_steps():
    assert argvs(fp.wan_steps("198.51.100.66/26", "198.51.100.65")) == [
        ["ifconfig", "vtnet1", "inet", "198.51.100.66/26", "up"],
        ["route", "-n", "delete", "-inet", "default"],
        ["route", "-n", "add", "-inet", "default", "198.51.100.65"],
        ["sysctl", "net.inet.ip.forwarding=1"],
    ]
    assert argvs(fp.jail_link_steps("vnet", "192.0.2.1/30")) == [
        ["ifconfig", "epair0", "create"],
        ["ifconfig", "epair0a", "inet", "192.0.2.1/30", "up"],
    ]
    assert argvs(fp.jail_link_steps("jail", "192.0.2.1/30")) == [
        ["ifconfig", "lo1", "create"]
    ]
    assert fp.jail_link_steps("none", "192.0.2.1/30") == []
    assert argvs(fp.vnet_jail_network_steps("192.0.2.2/30", "192.0.2.1")) == [
        ["ifconfig", "lo0", "inet", "127.0.0.1/8", "up"],
        ["ifconfig", "epair0b", "inet", "192.0.2.2/30", "up"],
        ["route", "-n", "add", "-inet", "default", "192.0.2.1"],
    ]


def test_pf_steps_and_file_writes():
    assert argvs(fp.pf_steps()) == [
        ["pfctl", "-f", "/etc/pf.conf"],
        ["pfctl", "-a", "vpnjail/lab", "-f", "/var/db/vjlab/anchor.pf"],
        ["sh", "-c", "pfctl -s info | grep -q 'Status: Enabled' || pfctl -e"],
    ]
    assert len(fp.pf_steps(with_anchor=False)) == 2
    write = fp.write_file_step("/etc/pf.conf", "pass all\n")
    assert write.argv == ("sh", "-c", "cat > /etc/pf.conf")
    assert write.input_text == "pass all\n"
    assert fp.jail_create_step().argv == (
        "jail", "-f", "/var/db/vjlab/jail.conf", "-c", "lab",
    )  # fmt: skip
