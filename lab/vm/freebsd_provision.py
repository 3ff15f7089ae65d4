"""Provisioning a FreeBSD guest, as exact command sequences.

The first boot installs one thing without a person: nuageinit puts the lab's
SSH key in place for the image's default user (BASIC-CLOUDINIT), or the
image lets root in with an empty password (BASIC-CI). Everything else runs
over SSH as the steps below, which are data: tests compare them word for
word, and the provisioned disk layer is keyed on their text.

Layers: the release image, then a provisioned layer (pkg, python3,
strongSwan from pkg or from ports with KERNELLIBIPSEC), then one throw-away
layer per cell, in which the cell's kernel modules are loaded.
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
            "mkdir -p /root/.ssh",
            f"printf '%s\\n' {shlex.quote(key)} >> /root/.ssh/authorized_keys",
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
        gone = "! kldstat -q -n ipsec.ko || kldunload ipsec.ko"
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
