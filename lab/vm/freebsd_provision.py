"""Provisioning a FreeBSD guest, as exact command sequences.

The first boot installs one thing without a person: nuageinit puts the lab's
SSH key in place for the image's default user (BASIC-CLOUDINIT), or the
image lets root in with an empty password (BASIC-CI). Everything else runs
over SSH as the steps below, which are data: tests compare them word for
word, and the provisioned disk layer is keyed on their text.

Layers: the release image, then a provisioned layer (pkg, python3,
strongSwan from pkg or from ports with KERNELLIBIPSEC), then one throw-away
layer per cell, in which the cell's kernel modules are loaded and its world
is made: devfs ruleset, jail, addresses, routes and pf (the second half of
this module).
"""

import datetime
import logging
import shlex
from dataclasses import dataclass

log = logging.getLogger(__name__)

GUEST_DIR = "/var/db/vjlab"
PKG = ("env", "ASSUME_ALWAYS_YES=yes", "IGNORE_OSVERSION=yes", "pkg")
PORT = "/usr/ports/security/strongswan"
PORT_BUILD = ("make", "-C", PORT, "WITH=KERNELLIBIPSEC", "BATCH=yes")
PORTS_GIT = "https://git.FreeBSD.org/ports.git"
GUEST_PACKAGE = f"{GUEST_DIR}/packages/strongswan-kernellibipsec.pkg"
LIBIPSEC_CONF = "/usr/local/etc/strongswan.d/charon/kernel-libipsec.conf"
LIBIPSEC_PLUGIN = "/usr/local/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so"
SSHD_CONFIG = "/etc/ssh/sshd_config"
DEFAULT_USER = "freebsd"  # nuageinit's default user (libexec/nuageinit)
MGMT_IF = "vtnet0"  # first NIC: SSH from the lab, DHCP
WAN_IF = "vtnet1"  # second NIC: the cell's wan link, addressed per cell
BUILDS = ("pkg", "ports")
# Packages carry the python flavour in their names (py311-pyyaml); security/
# py-vici depends on no strongSwan, so it cannot pull in the package build.
VPNJAIL_DEPENDENCIES = (
    "p=$(python3 -c 'import sys; print(\"py%d%d\" % sys.version_info[:2])') && "
    "env ASSUME_ALWAYS_YES=yes IGNORE_OSVERSION=yes pkg install -y "
    '"$p-pyyaml" "$p-pydantic2" "$p-vici"'
)

# sshd keeps the first value it reads for a keyword, and both images append
# theirs (release/tools/basic-ci.conf, basic-cloudinit.conf): delete those
# lines before appending the lab's.
_SSHD_KEYWORDS = (
    "PermitRootLogin",
    "PasswordAuthentication",
    "PermitEmptyPasswords",
    "KbdInteractiveAuthentication",
)
_SSHD_SETTINGS = (
    "PermitRootLogin prohibit-password",
    "PasswordAuthentication no",
    "PermitEmptyPasswords no",
    "KbdInteractiveAuthentication no",
)


@dataclass(frozen=True)
class Step:
    """One command on the guest, run as root unless the flavour says not."""

    what: str
    argv: tuple[str, ...]
    input_text: str | None = None
    timeout: float = 600.0
    check: bool = True

    def text(self) -> str:
        """The step as one line, for layer keys and transcripts."""
        shown = shlex.join(self.argv)
        return f"{shown} <<< {self.input_text!r}" if self.input_text else shown


def nuageinit_user_data(public_key: str) -> str:
    """NoCloud user-data that installs *public_key* for nuageinit's default user.

    nuageinit reads YAML only when the first line is exactly ``#cloud-config``;
    top-level ``ssh_authorized_keys`` go to the default user ``freebsd`` (in
    group wheel), and with no ``users`` key that user is created. Nothing else
    is asked of it: packages, runcmd and write_files changed between releases.
    """
    key = _one_line_key(public_key)
    return f"#cloud-config\nssh_authorized_keys:\n  - {key}\n"


def nuageinit_meta_data(hostname: str) -> str:
    # nuageinit fails on empty meta-data; local-hostname names the guest.
    return f"instance-id: {hostname}\nlocal-hostname: {hostname}\n"


def _one_line_key(public_key: str) -> str:
    key = public_key.strip()
    if "\n" in key or not key.startswith("ssh-"):
        raise ValueError("expected one OpenSSH public key line (ssh-ed25519 ...)")
    return key


def login_user(flavour_login: str) -> str:
    """The account the first SSH login uses for a flavour's ``login`` value."""
    users = {"cloudinit": DEFAULT_USER, "empty-root": "root"}
    if flavour_login not in users:
        raise ValueError(f"images with login {flavour_login!r} cannot be provisioned")
    return users[flavour_login]


def root_login_steps(flavour_login: str, public_key: str) -> list[Step]:
    """From the first login to root with the lab's key and nothing weaker.

    BASIC-CLOUDINIT: as ``freebsd`` (wheel), ``su`` to root, whose password is
    empty in FreeBSD's master.passwd and accepted by pam_unix ``nullok``.
    BASIC-CI: already root, over an sshd that takes empty passwords.
    """
    script = _root_key_script(_one_line_key(public_key))
    if flavour_login == "cloudinit":
        argv = ("su", "-m", "root", "-c", "/bin/sh -s")
    elif flavour_login == "empty-root":
        argv = ("/bin/sh", "-s")
    else:
        raise ValueError(f"images with login {flavour_login!r} cannot be provisioned")
    return [Step("root login by key only; no password logins", argv, script, 60)]


def _root_key_script(key: str) -> str:
    keywords = "|".join(_SSHD_KEYWORDS)
    settings = " ".join(shlex.quote(line) for line in _SSHD_SETTINGS)
    return "\n".join(
        [
            "set -eu",
            "umask 077",
            "mkdir -p ~root/.ssh",
            f"printf '%s\\n' {shlex.quote(key)} >> ~root/.ssh/authorized_keys",
            f"sed -i '' -E '/^[[:space:]]*({keywords})[[:space:]]/d' {SSHD_CONFIG}",
            f"printf '%s\\n' {settings} >> {SSHD_CONFIG}",
            "/usr/sbin/sshd -t",
            "service sshd reload",
            "",
        ]
    )


def first_boot_steps() -> list[Step]:
    """Wait out rc(8)'s first boot, which may still be running under sshd."""
    wait = (
        "n=0; while [ -e /firstboot ] && [ $n -lt 300 ]; do sleep 1; n=$((n+1)); "
        "done; [ ! -e /firstboot ]"
    )
    return [Step("first boot finished (/firstboot removed by rc)", ("sh", "-c", wait))]


def reboot_pending_step() -> Step:
    # firstboot-freebsd-update asks rc for a reboot with this file.
    return Step(
        "a first-boot reboot is pending", ("test", "-e", "/firstboot-reboot"),
        check=False,
    )  # fmt: skip


def base_steps() -> list[Step]:
    """pkg, python3 and the boot settings every lab guest shares."""
    return [
        Step("bootstrap pkg", (*PKG, "bootstrap", "-y")),
        Step("refresh the package catalogue", (*PKG, "update", "-f")),
        Step("python3 for the PF_KEY probe and the lab's services",
             (*PKG, "install", "-y", "python3")),
        Step("python3 is 3.11 or later",
             ("python3", "-c", "import sys; sys.exit(sys.version_info < (3, 11))")),
        Step("vpnjail's Python dependencies, built for that python3",
             ("sh", "-c", VPNJAIL_DEPENDENCIES)),
        Step("DHCP on the management NIC only; the wan NIC is set per cell",
             ("sysrc", f"ifconfig_{MGMT_IF}=DHCP", f"ifconfig_{WAN_IF}=up")),
        Step("the lab's directory", ("mkdir", "-p", f"{GUEST_DIR}/packages")),
    ]  # fmt: skip


def strongswan_steps(build: str) -> list[Step]:
    """strongSwan from the package repository, or the ports build installed."""
    if build == "pkg":
        return [Step("strongSwan from pkg", (*PKG, "install", "-y", "strongswan"))]
    if build == "ports":
        return package_add_steps(GUEST_PACKAGE) + enable_libipsec_steps()
    raise ValueError(f"unknown strongSwan build {build!r}; allowed: {BUILDS}")


def ports_branch(today: datetime.date) -> str:
    """The quarterly ports branch the quarterly package set is built from."""
    return f"{today.year}Q{(today.month - 1) // 3 + 1}"


def ports_build_steps(branch: str) -> list[Step]:
    """Build strongSwan with KERNELLIBIPSEC into a package file; install nothing."""
    deps = (
        f"deps=$({shlex.join(PORT_BUILD)} build-depends-list run-depends-list "
        "| sed 's|^/usr/ports/||' | sort -u); "
        f'[ -z "$deps" ] || {shlex.join(PKG)} install -y $deps'
    )
    return [
        Step("git for the ports tree", (*PKG, "install", "-y", "git")),
        Step(f"ports tree, branch {branch}",
             ("git", "clone", "--depth", "1", "--branch", branch, PORTS_GIT,
              "/usr/ports"), timeout=1800),
        # Ready-made dependencies save hours; make builds whatever is missing.
        Step("dependencies from pkg where they exist", ("sh", "-c", deps),
             timeout=1800, check=False),
        Step("strongSwan with KERNELLIBIPSEC as a package",
             (*PORT_BUILD, "package"), timeout=7200),
        Step("where the package file is", (*PORT_BUILD, "-V", "PKGFILE")),
    ]  # fmt: skip


def package_add_steps(guest_package: str) -> list[Step]:
    """Install a package file kept from an earlier build, dependencies first."""
    deps = (
        f"deps=$(pkg query -F {shlex.quote(guest_package)} '%dn'); "
        f'[ -z "$deps" ] || {shlex.join(PKG)} install -y $deps'
    )
    return [
        Step("runtime dependencies of the kept package", ("sh", "-c", deps)),
        Step("strongSwan from the kept package", (*PKG, "add", guest_package)),
        Step(
            "the kernel-libipsec plugin is installed", ("test", "-f", LIBIPSEC_PLUGIN)
        ),
    ]


def enable_libipsec_steps() -> list[Step]:
    """Turn on kernel-libipsec, which the port ships with ``load = no``.

    files/patch-conf_plugins_kernel-libipsec.conf changes the upstream
    ``load = yes``; the file is installed from its ``.sample``. The lab's own
    charon lists its plugins itself, but ``swanctl --stats`` and the rc.d
    script read this file.
    """
    edit = r"s/^([[:space:]]*load[[:space:]]*=[[:space:]]*)no[[:space:]]*$/\1yes/"
    check = r"^[[:space:]]*load[[:space:]]*=[[:space:]]*yes"
    return [
        Step(
            "kernel-libipsec: load = yes", ("sed", "-i", "", "-E", edit, LIBIPSEC_CONF)
        ),
        Step("kernel-libipsec is enabled", ("grep", "-Eq", check, LIBIPSEC_CONF)),
    ]


def version_steps() -> list[Step]:
    return [
        Step("FreeBSD version", ("freebsd-version", "-kru"), check=False),
        Step("strongSwan version", ("pkg", "query", "%v", "strongswan"), check=False),
    ]


def module_steps(ipsec: str, pf: bool = True) -> list[Step]:
    """The cell's kernel modules; a jail cannot load any of them itself.

    ``ipsec`` is ``loaded`` or ``unloaded``. GENERIC has IPSEC_SUPPORT only,
    so kern.features.ipsec exists exactly when ipsec.ko is loaded.
    """
    steps = [
        Step("if_epair for the jail's link", ("kldload", "-n", "if_epair")),
        Step("if_tuntap for kernel-libipsec", ("kldload", "-n", "if_tuntap")),
    ]
    if pf:
        steps.append(Step("pf for NAT and the port forward", ("kldload", "-n", "pf")))
    if ipsec == "loaded":
        steps += [
            Step("ipsec.ko loaded", ("kldload", "-n", "ipsec")),
            Step(
                "kern.features.ipsec present", ("sysctl", "-n", "kern.features.ipsec")
            ),
        ]
    elif ipsec == "unloaded":
        gone = "! kldstat -q -m ipsec || kldunload ipsec"
        steps += [
            Step("ipsec.ko not loaded", ("sh", "-c", gone)),
            Step("kern.features.ipsec absent",
                 ("sh", "-c", "! sysctl -n kern.features.ipsec >/dev/null 2>&1")),
        ]  # fmt: skip
    else:
        raise ValueError(f"ipsec must be loaded or unloaded, not {ipsec!r}")
    return steps


def provision_plan(flavour_login: str, public_key: str, build: str) -> list[Step]:
    """Every step from the first login to a provisioned layer, in order."""
    return [
        *root_login_steps(flavour_login, public_key),
        *base_steps(),
        *strongswan_steps(build),
    ]


def plan_text(steps: list[Step]) -> str:
    """The plan as text: one input of the provisioned layer's key."""
    return "\n".join(step.text() for step in steps) + "\n"


def run_steps(node, steps: list[Step]) -> list:
    """Run *steps* in order on *node* (a lab.node.Node); their results."""
    results = []
    for step in steps:
        log.info("provision: %s", step.what)
        results.append(
            node.run(
                list(step.argv),
                check=step.check,
                timeout=step.timeout,
                input_text=step.input_text,
            )
        )
    return results


# -- the cell layer: the cell's world inside the guest ------------------------------

JAIL = "lab"
JAILS_DIR = f"{GUEST_DIR}/jails"
GUEST_PY = f"{GUEST_DIR}/py"  # the lab's stdlib-only modules, for python3 -m
JAIL_CONF = f"{GUEST_DIR}/jail.conf"
JAIL_FSTAB = f"{GUEST_DIR}/jail.fstab"
PF_CONF = "/etc/pf.conf"
ANCHOR = "vpnjail/lab"
ANCHOR_FILE = f"{GUEST_DIR}/anchor.pf"
EPAIR = "epair0"
CLASSIC_IF = "lo1"
TUN_RULESET = 100
RULESETS = {"hostdev": None, "rs4": 4, "rs5": 5, "rs5tun": TUN_RULESET}
# The host's programs, read-only in the jail; /etc, /var/run, /tmp are its own.
JAIL_MOUNTS = ("/bin", "/sbin", "/lib", "/libexec", "/usr", GUEST_PY)


def ruleset_number(devfs: str) -> int | None:
    if devfs not in RULESETS:
        raise ValueError(f"devfs {devfs!r}: allowed {', '.join(RULESETS)}")
    return RULESETS[devfs]


def devfs_steps(devfs: str) -> list[Step]:
    """The cell's devfs ruleset: 4 and 5 ship in /etc/defaults/devfs.rules."""
    number = ruleset_number(devfs)
    if number is None:
        return []
    if number != TUN_RULESET:
        return [_ruleset_loaded(number)]
    rules = ("devfs", "rule", "-s", str(TUN_RULESET))
    return [
        _ruleset_loaded(5),
        Step(f"devfs ruleset {TUN_RULESET} afresh", (*rules, "delset")),
        Step(
            f"ruleset {TUN_RULESET}: devfsrules_jail_vnet",
            (*rules, "add", "include", "5"),
        ),
        Step(
            f"ruleset {TUN_RULESET}: and tun*",
            (*rules, "add", "path", "tun*", "unhide"),
        ),
    ]


def _ruleset_loaded(number: int) -> Step:
    shown = f"devfs rule -s {number} show | grep -q ."
    return Step(f"devfs ruleset {number} is loaded", ("sh", "-c", shown))


def jail_root(name: str = JAIL) -> str:
    return f"{JAILS_DIR}/{name}"


def jail_root_steps(root: str) -> list[Step]:
    """A jail root borrowing the host's programs; its own /etc and /var/run.

    ``/run`` links to ``var/run``: the lab's strongswan.conf names /run, and
    FreeBSD's own programs use /var/run. The run-time linker's hints are
    copied so charon finds its libraries under /usr/local/lib.
    """
    dirs = [f"{root}{path}" for path in (*JAIL_MOUNTS, "/var/run", "/tmp", "/dev")]
    return [
        Step(f"jail root {root}", ("mkdir", "-p", *dirs, f"{root}/root")),
        Step("its own /etc", ("cp", "-Rp", "/etc", f"{root}/")),
        Step(
            "the linker's hints", ("cp", "/var/run/ld-elf.so.hints", f"{root}/var/run/")
        ),
        Step("/run is /var/run", ("ln", "-sf", "var/run", f"{root}/run")),
        Step("/tmp for everyone", ("chmod", "1777", f"{root}/tmp")),
    ]


def render_fstab(root: str) -> str:
    lines = ["# vjlab: the jail's file systems, mounted by jail(8)"]
    lines += [f"{path}\t{root}{path}\tnullfs\tro\t0\t0" for path in JAIL_MOUNTS]
    return "\n".join(lines) + "\n"


def render_jail_conf(isolation: str, devfs: str, root: str, address: str) -> str:
    """jail.conf(5) for the cell's jail: vnet, or classic on the host's stack.

    A classic jail needs ``allow.socket_af`` for PF_KEY and
    ``allow.raw_sockets`` for PF_KEY's PRIV_NET_RAW and ping; a vnet jail is
    granted both by its own network stack.
    """
    ruleset = ruleset_number(devfs)
    lines = [
        "# vjlab: the cell's jail",
        f"{JAIL} {{",
        f'\tpath = "{root}";',
        f'\thost.hostname = "{JAIL}";',
        "\tpersist;",
        "\tallow.raw_sockets;",
        "\tmount.devfs;",
        f"\tdevfs_ruleset = {ruleset};",
        f'\tmount.fstab = "{JAIL_FSTAB}";',
    ]
    if isolation == "vnet":
        lines += ['\tvnet = "new";', f'\tvnet.interface = "{EPAIR}b";']
    elif isolation == "jail":
        lines += ["\tallow.socket_af;", f'\tip4.addr = "{CLASSIC_IF}|{address}/32";']
    else:
        raise ValueError(f"isolation {isolation!r} has no jail")
    return "\n".join([*lines, "}", ""])


def render_pf_conf() -> str:
    """The guest's main ruleset: it evaluates the anchors under vpnjail/.

    vpnjail's driver puts each profile in ``vpnjail/<name>``; the lab's cell
    rules live in ``vpnjail/lab``, so one pfctl call shows both.
    """
    return "\n".join(
        [
            "# vjlab: main ruleset of the guest",
            "set skip on lo0",
            'nat-anchor "vpnjail/*"',
            'rdr-anchor "vpnjail/*"',
            "pass all",
            'anchor "vpnjail/*"',
            "",
        ]
    )


def render_anchor(nat: str, jail_network: str, jail_address: str, port: int) -> str:
    """The cell's NAT (``pf``) and the port forward into the jail (always)."""
    lines = [f"# vjlab: the cell's rules (pfctl -a {ANCHOR} -f {ANCHOR_FILE})"]
    if nat == "pf":
        lines.append(f"nat on {WAN_IF} inet from {jail_network} to any -> ({WAN_IF})")
    lines.append(
        f"rdr on {WAN_IF} inet proto tcp from any to ({WAN_IF}) port {port} "
        f"-> {jail_address} port {port}"
    )
    return "\n".join(lines) + "\n"


def write_file_step(path: str, text: str) -> Step:
    return Step(f"write {path}", ("sh", "-c", f"cat > {shlex.quote(path)}"), text)


def wan_steps(wan_cidr: str, gateway: str) -> list[Step]:
    """The guest's wan address and its default route through the wan."""
    return [
        Step("wan address", ("ifconfig", WAN_IF, "inet", wan_cidr, "up")),
        # DHCP on the management NIC may have set one; the cell's goes via wan.
        Step("no default route yet", ("route", "-n", "delete", "-inet", "default"),
             check=False),
        Step("default route via the wan",
             ("route", "-n", "add", "-inet", "default", gateway)),
        Step("forwarding", ("sysctl", "net.inet.ip.forwarding=1")),
    ]  # fmt: skip


def jail_link_steps(kind: str, host_cidr: str) -> list[Step]:
    """The guest's side of the jail's link: an epair for a vnet jail, a
    loopback for a classic jail's address, nothing without a jail."""
    if kind == "vnet":
        return [
            Step("epair to the jail", ("ifconfig", EPAIR, "create")),
            Step("host end of the jail link",
                 ("ifconfig", f"{EPAIR}a", "inet", host_cidr, "up")),
        ]  # fmt: skip
    if kind == "jail":
        return [
            Step("loopback for the jail's address", ("ifconfig", CLASSIC_IF, "create"))
        ]
    if kind == "none":
        return []
    raise ValueError(f"jail kind {kind!r}: allowed vnet, jail, none")


def jail_create_step() -> Step:
    return Step(f"jail {JAIL}", ("jail", "-f", JAIL_CONF, "-c", JAIL))


def vnet_jail_network_steps(jail_cidr: str, host_address: str) -> list[Step]:
    """Run inside the vnet jail: loopback, its end of the epair, its route."""
    return [
        Step("jail loopback", ("ifconfig", "lo0", "inet", "127.0.0.1/8", "up")),
        Step("jail end of the link",
             ("ifconfig", f"{EPAIR}b", "inet", jail_cidr, "up")),
        Step("jail default route",
             ("route", "-n", "add", "-inet", "default", host_address)),
    ]  # fmt: skip


def pf_steps(with_anchor: bool = True) -> list[Step]:
    enable = "pfctl -s info | grep -q 'Status: Enabled' || pfctl -e"
    steps = [Step("main pf ruleset", ("pfctl", "-f", PF_CONF))]
    if with_anchor:
        steps.append(
            Step(f"anchor {ANCHOR}", ("pfctl", "-a", ANCHOR, "-f", ANCHOR_FILE))
        )
    return [*steps, Step("pf enabled", ("sh", "-c", enable))]
