"""The FreeBSD driver: a vnet jail per profile.

Each profile gets a jail named ``vpnjail-<name>`` with its own network stack,
an epair to the host (the host end renamed ``vj<name>``), a root of its own
under the state directory, a devfs ruleset of its own and a pf anchor
``vpnjail/<name>`` in the host's ruleset for its NAT and port forwards.

The jail root borrows the host's programs through read-only nullfs mounts of
/bin, /sbin, /lib, /libexec, /usr and /usr/local; its /etc, /var/run and /tmp
are its own, so two charons never share a pid file, a VICI socket or a
configuration. jail(8) mounts and unmounts those file systems itself, from an
fstab kept outside the jail root where the jail cannot rewrite it.

Numbers the kernel needs (the epair unit and the devfs ruleset) come from a
hash of the profile name, the profile's *slot*, so that ``plan_down`` can be
made from the name alone; preflight reports profiles whose slots collide.
"""

import ipaddress
import logging
import os
import re
import subprocess
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vpnjail import strongswan
from vpnjail.drivers.base import Driver, Layout, LinkAddresses, Needs
from vpnjail.plan import Plan, Run, Spawn, WriteFile
from vpnjail.profile import NAME_PATTERN, PortForward, Profile, ProfileError

log = logging.getLogger(__name__)

# Absolute paths, so neither the caller's PATH nor a jail's can swap a program.
CP = "/bin/cp"
DAEMON = "/usr/sbin/daemon"
DEVFS = "/sbin/devfs"
IFCONFIG = "/sbin/ifconfig"
JAIL = "/usr/sbin/jail"
JEXEC = "/usr/sbin/jexec"
JLS = "/usr/sbin/jls"
KLDSTAT = "/sbin/kldstat"
LN = "/bin/ln"
MKDIR = "/bin/mkdir"
MOUNT = "/sbin/mount"
PFCTL = "/sbin/pfctl"
PKG = "/usr/sbin/pkg"
RM = "/bin/rm"
RMDIR = "/bin/rmdir"
ROUTE = "/sbin/route"
SH = "/bin/sh"
SYSCTL = "/sbin/sysctl"
TEST = "/bin/test"
UMOUNT = "/sbin/umount"

CHARON = strongswan.CHARON_PATHS["freebsd"]
LIBIPSEC_PLUGIN = "/usr/local/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so"

JAIL_PREFIX = "vpnjail-"
HOST_IF_PREFIX = "vj"
ANCHOR_ROOT = "vpnjail"
IFNAMSIZ = 15  # characters; the kernel keeps the 16th byte for the NUL
SLOT_BASE = 20000
SLOT_COUNT = 12000  # epair units stop at IF_MAXUNIT (32767)
DEVFSRULES_JAIL_VNET = 5
RULE_INCLUDE = "100"
RULE_TUN = "200"
TUNNEL_TAG = "vpnjail_tunnel"

# The host's read-only directories in every jail root, parents first.
HOST_DIRS = ("/bin", "/sbin", "/lib", "/libexec", "/usr", "/usr/local")
# Host files a jail reads: port and protocol names, and the run-time linker's
# search path (charon's libraries live in /usr/local/lib and lib/ipsec).
HOST_ETC_FILES = ("/etc/services", "/etc/protocols")
LINKER_HINTS = "/var/run/ld-elf.so.hints"

# Paths as the jail sees them.
JAIL_RUN = "/var/run"
JAIL_CONF_DIR = "/etc/vpnjail"
STRONGSWAN_CONF = f"{JAIL_CONF_DIR}/strongswan.conf"
JAIL_PF_CONF = f"{JAIL_CONF_DIR}/pf.conf"
# Not /var/run/charon.pid: charon writes and checks that file itself.
SUPERVISOR_PIDFILE = f"{JAIL_RUN}/daemon-charon.pid"
CHARON_OUT = f"{JAIL_RUN}/charon.out"

_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/-]*$")
_SAFE_IFNAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.]{0,14}$")
_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")

# Runs inside the jail, so every path in it is the jail's own and nothing
# from a profile is pasted into it. A cloned tun still open when the jail is
# removed keeps it DYING on kernels without FreeBSD commit 3b263fa76c08, so
# charon is stopped first and any tun it left behind is destroyed.
STOP_CHARON = """\
pidfile=/var/run/daemon-charon.pid
if /bin/pkill -TERM -L -F "$pidfile" 2>/dev/null; then
  tries=50
  while [ "$tries" -gt 0 ] && /bin/pgrep -q -L -F "$pidfile" 2>/dev/null; do
    /bin/sleep 0.2
    tries=$((tries - 1))
  done
fi
for tun in $(/sbin/ifconfig -g tun 2>/dev/null); do
  /sbin/ifconfig "$tun" destroy
done
exit 0
"""

# $1 is the jail name, handed over as its own argument.
JAIL_GONE_CHECK = """\
dying=$(/usr/sbin/jls -d -j "$1" dying 2>/dev/null) || exit 0
if [ "$dying" = true ]; then
  echo "jail $1 is stuck in DYING: a tun interface outlived charon" \\
    "(if_tuntap refcount bug, fixed by FreeBSD commit 3b263fa76c08);" \\
    "its vnet stays until reboot; upgrade the kernel" >&2
else
  echo "jail $1 still exists: jail -r failed" >&2
fi
exit 1
"""

Probe = Callable[[Sequence[str]], tuple[int, str]]
Runner = Callable[[Sequence[str], str | None, dict | None], subprocess.CompletedProcess]


def run_probe(argv: Sequence[str]) -> tuple[int, str]:
    """Run a read-only command on the host; its exit status and output."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, check=False, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.debug("probe %s failed: %s", argv[0], exc)
        return 127, ""
    return done.returncode, done.stdout


def run_command(
    argv: Sequence[str], input_text: str | None, env: dict | None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(argv),
        input=input_text,
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )


def slot(name: str) -> int:
    """The profile's epair unit and devfs ruleset number."""
    return SLOT_BASE + zlib.crc32(name.encode()) % SLOT_COUNT


def host_interface(name: str) -> str:
    """``vj<name>``, or a shortened name with a hash when that is too long."""
    candidate = HOST_IF_PREFIX + name
    if len(candidate) <= IFNAMSIZ:
        return candidate
    digest = f"{zlib.crc32(name.encode()) & 0xFFFF:04x}"
    keep = IFNAMSIZ - len(HOST_IF_PREFIX) - len(digest)
    return HOST_IF_PREFIX + name[:keep] + digest


@dataclass(frozen=True)
class JailNames:
    """Everything one profile's jail is called, derived from the name alone."""

    profile: str
    state_dir: str
    host_dirs: tuple[str, ...]

    @property
    def jail(self) -> str:
        return JAIL_PREFIX + self.profile

    @property
    def slot(self) -> int:
        return slot(self.profile)

    @property
    def epair(self) -> str:
        return f"epair{self.slot}"

    @property
    def host_if(self) -> str:
        return host_interface(self.profile)

    @property
    def jail_if(self) -> str:
        return f"{self.epair}b"

    @property
    def anchor(self) -> str:
        return f"{ANCHOR_ROOT}/{self.profile}"

    @property
    def label(self) -> str:
        return f"{ANCHOR_ROOT}:{self.profile}"

    @property
    def tag(self) -> str:
        return f"{ANCHOR_ROOT}_{self.profile}"

    @property
    def root(self) -> str:
        return os.path.join(self.state_dir, "jails", self.profile)

    @property
    def conf(self) -> str:
        """Host-only files about the jail, out of the jail's reach."""
        return os.path.join(self.state_dir, "conf", self.profile)

    @property
    def jail_conf(self) -> str:
        return os.path.join(self.conf, "jail.conf")

    @property
    def fstab(self) -> str:
        return os.path.join(self.conf, "fstab")

    @property
    def anchor_file(self) -> str:
        return os.path.join(self.conf, "anchor.pf")

    def host_path(self, jail_path: str) -> str:
        """Where the host finds *jail_path* of this jail."""
        return self.root + jail_path

    def mountpoints(self) -> list[str]:
        """Directories the fstab mounts on, in mount order."""
        return [self.host_path(d) for d in self.host_dirs] + [self.host_path("/tmp")]

    def own_mountpoints(self) -> list[str]:
        """Mount points made in the jail root itself (not inside a mount)."""
        outer = [
            d
            for d in self.host_dirs
            if not any(d.startswith(other + "/") for other in self.host_dirs)
        ]
        return [self.host_path(d) for d in (*outer, "/tmp", "/dev")]


class FreeBSDDriver(Driver):
    system = "freebsd"

    def __init__(
        self,
        egress: str,
        state_dir: str = "/var/db/vpnjail",
        host_dirs: Sequence[str] = HOST_DIRS,
        probe: Probe | None = None,
        runner: Runner | None = None,
        start_timeout: float = 10.0,
    ):
        """*egress*: the host's outside interface, for NAT and port forwards.

        *probe* runs read-only commands for preflight and leftovers; *runner*
        carries out actions. Both default to running the real commands.
        """
        if not _SAFE_IFNAME.match(egress):
            raise ValueError(f"egress {egress!r} is not an interface name")
        _check_paths("state_dir", [state_dir])
        _check_paths("host_dirs", host_dirs)
        self.egress = egress
        self.state_dir = state_dir.rstrip("/") or "/"
        self.host_dirs = tuple(host_dirs)
        self.probe = probe or run_probe
        self.runner = runner or run_command
        self.start_timeout = start_timeout

    # -- naming --------------------------------------------------------------

    def names(self, profile: Profile | str) -> JailNames:
        name = profile if isinstance(profile, str) else profile.name
        if not re.match(NAME_PATTERN, name):
            raise ValueError(f"{name!r} is not a profile name")
        return JailNames(name, self.state_dir, self.host_dirs)

    def layout(self, profile: Profile | str) -> Layout:
        names = self.names(profile)
        return Layout(
            name=names.profile,
            stack=names.jail,
            host_if=names.host_if,
            jail_if=names.jail_if,
            run_dir=names.host_path(JAIL_RUN),
            conf_dir=names.host_path(JAIL_CONF_DIR),
            vici_socket=names.host_path(f"{JAIL_RUN}/charon.vici"),
            log_file=names.host_path(f"{JAIL_RUN}/charon.log"),
            firewall=names.anchor,
        )

    def needs(self, profile: Profile) -> Needs:
        # kernel-pfroute puts a virtual IP on a tun device whatever the IPsec
        # backend, so a mode-config profile needs /dev/tun even with PF_KEY.
        wanted = profile.backend == "libipsec" or profile.mode_config != "off"
        tun = {"auto": wanted, "exposed": True, "hidden": False}[profile.tun]
        return Needs(
            tun=tun,
            kernel_ipsec=profile.backend == "kernel",
            extra={
                "slot": slot(profile.name),
                "pf_in_jail": bool(tunnel_forwards(profile)),
            },
        )

    # -- bringing a profile up -----------------------------------------------

    def plan_up(self, profile: Profile, link: LinkAddresses, charon_conf: str) -> Plan:
        _check_tunnel_forwards(profile, link)
        names = self.names(profile)
        plan = Plan(profile.name)
        self._plan_directories(plan, names)
        self._plan_files(plan, profile, names, link, charon_conf)
        self._plan_devfs(plan, names, self.needs(profile).tun)
        self._plan_epair(plan, names)
        self._plan_host_end(plan, names, link)
        self._plan_anchor(plan, names)
        self._plan_jail(plan, names)
        self._plan_jail_network(plan, names, link)
        if tunnel_forwards(profile):
            self._plan_jail_pf(plan, names, link)
        self._plan_charon(plan, names)
        return plan

    def _plan_directories(self, plan: Plan, names: JailNames) -> None:
        root = names.root
        # The jail could have left symlinks in its writable trees; start them
        # afresh before the host writes there.
        writable = _writable(names)
        made = [*names.own_mountpoints(), f"{root}{JAIL_CONF_DIR}"]
        made += [f"{root}{JAIL_RUN}", names.conf]
        plan.add(
            f"jail root {root} and {names.conf}",
            [
                Run((RM, "-rf", *writable)),
                Run((MKDIR, "-p", *made)),
                # /run and /var/run are one private directory: the rendered
                # strongswan.conf names /run, FreeBSD programs /var/run.
                Run((LN, "-s", "var/run", f"{root}/run")),
            ],
            [
                Run((RM, "-rf", *writable, names.conf)),
                Run((RMDIR, *names.own_mountpoints(), root), ok_codes=(0, 1)),
            ],
        )

    def _plan_files(
        self,
        plan: Plan,
        profile: Profile,
        names: JailNames,
        link: LinkAddresses,
        charon_conf: str,
    ) -> None:
        files = [
            WriteFile(names.jail_conf, render_jail_conf(names)),
            WriteFile(names.fstab, render_fstab(names)),
            WriteFile(
                names.anchor_file, render_anchor(profile, names, link, self.egress)
            ),
            WriteFile(names.host_path("/etc/hosts"), render_hosts(names)),
            WriteFile(names.host_path(STRONGSWAN_CONF), charon_conf, 0o600),
        ]
        jail_pf = render_jail_pf(profile, names, link)
        if jail_pf is not None:
            files.append(WriteFile(names.host_path(JAIL_PF_CONF), jail_pf))
        copies = [
            Run((CP, *HOST_ETC_FILES, names.host_path("/etc/"))),
            Run((CP, LINKER_HINTS, names.host_path(f"{JAIL_RUN}/"))),
        ]
        copied = [names.host_path(path) for path in (*HOST_ETC_FILES, LINKER_HINTS)]
        plan.add(
            f"configuration of jail {names.jail}",
            [*files, *copies],
            [Run((RM, "-f", *[f.path for f in files], *copied))],
        )

    def _plan_devfs(self, plan: Plan, names: JailNames, tun: bool) -> None:
        ruleset = str(names.slot)
        add = (DEVFS, "rule", "-s", ruleset, "add")
        rules = [
            # A ruleset left by an earlier run would otherwise gain duplicates.
            Run((DEVFS, "rule", "-s", ruleset, "delset")),
            Run((*add, RULE_INCLUDE, "include", str(DEVFSRULES_JAIL_VNET))),
        ]
        if tun:
            rules.append(Run((*add, RULE_TUN, "path", "tun*", "unhide")))
        plan.add(
            f"devfs ruleset {ruleset}: devfsrules_jail_vnet"
            + (" and tun*" if tun else ""),
            rules,
            [Run((DEVFS, "rule", "-s", ruleset, "delset"))],
        )

    def _plan_epair(self, plan: Plan, names: JailNames) -> None:
        plan.add(
            f"epair {names.epair}a/{names.epair}b",
            [Run((IFCONFIG, names.epair, "create"))],
            [Run((IFCONFIG, f"{names.epair}a", "destroy"))],
        )

    def _plan_host_end(self, plan: Plan, names: JailNames, link: LinkAddresses) -> None:
        address = ipaddress.ip_interface(link.host)
        actions = [
            Run((IFCONFIG, f"{names.epair}a", "name", names.host_if)),
            Run((IFCONFIG, names.host_if, "description", names.label)),
            *_address_actions(names.host_if, address),
        ]
        # Renaming back lets the epair step's undo find the interface again.
        plan.add(
            f"host end {names.host_if} {link.host}",
            actions,
            [Run((IFCONFIG, names.host_if, "name", f"{names.epair}a"))],
        )

    def _plan_anchor(self, plan: Plan, names: JailNames) -> None:
        plan.add(
            f"pf anchor {names.anchor}",
            [Run((PFCTL, "-a", names.anchor, "-f", names.anchor_file))],
            _anchor_removal(names),
        )

    def _plan_jail(self, plan: Plan, names: JailNames) -> None:
        plan.add(
            f"jail {names.jail}",
            [Run((JAIL, "-f", names.jail_conf, "-c", names.jail))],
            [Run((JAIL, "-f", names.jail_conf, "-r", names.jail))],
        )

    def _plan_jail_network(
        self, plan: Plan, names: JailNames, link: LinkAddresses
    ) -> None:
        address = ipaddress.ip_interface(link.jail)
        gateway = str(ipaddress.ip_interface(link.host).ip)
        family = "-inet" if address.version == 4 else "-inet6"
        actions = [
            Run((IFCONFIG, "lo0", "inet", "127.0.0.1/8", "up"), "jail"),
            *_address_actions(names.jail_if, address, "jail"),
            Run((ROUTE, "-n", "add", family, "default", gateway), "jail"),
        ]
        # Undone by removing the jail: its vnet and routes go with it.
        plan.add(f"network in jail {names.jail}: {link.jail} via {gateway}", actions)

    def _plan_jail_pf(self, plan: Plan, names: JailNames, link: LinkAddresses) -> None:
        forwarding = {4: "net.inet.ip.forwarding=1", 6: "net.inet6.ip6.forwarding=1"}
        # Undone by removing the jail: its pf and sysctls belong to its vnet.
        plan.add(
            f"forwards into the tunnel: pf in jail {names.jail}",
            [
                Run((SYSCTL, forwarding[_family(link.jail)]), "jail"),
                Run((PFCTL, "-e", "-f", JAIL_PF_CONF), "jail"),
            ],
        )

    def _plan_charon(self, plan: Plan, names: JailNames) -> None:
        plan.add(
            f"charon in jail {names.jail}",
            [
                # -f: daemon(8) lets go of the caller's stdout and stderr,
                # so the command starting it returns once it has detached.
                Spawn(
                    "charon",
                    (DAEMON, "-f", "-P", SUPERVISOR_PIDFILE, "-o", CHARON_OUT, CHARON),
                    where="jail",
                    env=(("STRONGSWAN_CONF", STRONGSWAN_CONF),),
                )
            ],
            [stop_charon_action()],
        )

    # -- taking a profile down -----------------------------------------------

    def plan_down(self, profile_name: str) -> Plan:
        names = self.names(profile_name)
        plan = Plan(profile_name)
        plan.add(
            "stop charon and destroy its tun interfaces before jail -r "
            "(FreeBSD commit 3b263fa76c08)",
            [stop_charon_action()],
        )
        plan.add(f"remove pf anchor {names.anchor}", _anchor_removal(names))
        plan.add(
            f"remove jail {names.jail}",
            [
                Run((JAIL, "-f", names.jail_conf, "-r", names.jail), ok_codes=(0, 1)),
                # Left mounted only when jail -r failed or had no jail.conf.
                Run((UMOUNT, *_unmount_order(names)), ok_codes=(0, 1)),
            ],
        )
        plan.add(
            f"destroy epair {names.host_if} (both ends)",
            [Run((IFCONFIG, names.host_if, "destroy"), ok_codes=(0, 1))],
        )
        plan.add(
            f"remove devfs ruleset {names.slot}",
            [Run((DEVFS, "rule", "-s", str(names.slot), "delset"))],
        )
        root = names.root
        plan.add(
            f"remove {root} and {names.conf}",
            [
                Run((RM, "-rf", *_writable(names), names.conf)),
                Run((RMDIR, *names.own_mountpoints(), root), ok_codes=(0, 1)),
            ],
        )
        plan.add(
            f"check jail {names.jail} is gone, not stuck in DYING",
            [Run((SH, "-c", JAIL_GONE_CHECK, "sh", names.jail))],
        )
        return plan

    # -- carrying out ----------------------------------------------------------

    def argv_for(self, action: Run | Spawn, layout: Layout) -> list[str]:
        if action.where == "host":
            return list(action.argv)
        if action.where == "jail":
            return [JEXEC, layout.stack, *action.argv]
        raise ValueError(
            f"FreeBSD actions run on the host or in the jail, not {action.where!r}"
        )

    def run(self, action: Run, layout: Layout) -> subprocess.CompletedProcess:
        argv = self.argv_for(action, layout)
        log.debug("run %s", argv)
        return self.runner(argv, action.input_text, None)

    def spawn(self, action: Spawn, layout: Layout) -> int:
        """Start *action* under daemon(8); return the supervisor's pid."""
        pidfile = self.names(layout.name).host_path(_supervisor_pidfile(action))
        env = {**os.environ, **dict(action.env)}
        argv = self.argv_for(action, layout)
        log.debug("spawn %s", argv)
        done = self.runner(argv, None, env)
        if done.returncode != 0:
            raise RuntimeError(
                f"{action.name} did not start: {_last_line(done.stderr)}"
            )
        return self._read_pid(pidfile, action.name)

    def _read_pid(self, pidfile: str, what: str) -> int:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            try:
                with open(pidfile) as src:
                    return int(src.read().split()[0])
            except (OSError, ValueError, IndexError):
                time.sleep(0.05)
        raise RuntimeError(f"{what}: no pid in {pidfile} after {self.start_timeout}s")

    def wait_started(self, action: Spawn, layout: Layout, pid: int, timeout: float):
        """Wait for charon's VICI socket while its supervisor lives."""
        deadline = time.monotonic() + timeout
        while not os.path.exists(layout.vici_socket):
            if not self._pid_alive(pid):
                raise RuntimeError(
                    f"{action.name} exited during start: {self._why(layout)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{action.name} not ready within {timeout:.0f}s")
            time.sleep(0.05)

    @staticmethod
    def _pid_alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _why(self, layout: Layout) -> str:
        # Before charon's own log exists, daemon(8) has its stderr, where the
        # run-time linker reports missing libraries.
        out = self.names(layout.name).host_path(CHARON_OUT)
        for path in (layout.log_file, out):
            try:
                with open(path, errors="replace") as src:
                    text = src.read()
            except OSError:
                continue
            if text.strip():
                return _last_line(text)
        return "no output"

    def stop(self, layout: Layout) -> None:
        """Stop charon and destroy its tun interfaces, if the jail exists."""
        done = self.run(stop_charon_action(), layout)
        if done.returncode not in (0, 1):
            log.info("%s: stopping charon: %s", layout.name, _last_line(done.stderr))

    def forget(self, layout: Layout) -> None:
        """Nothing to do: the plans remove every file they create."""
        log.debug("%s: nothing kept outside the plans", layout.name)

    # -- host checks ---------------------------------------------------------

    def preflight(self, profiles: list[Profile]) -> list[str]:
        """Host problems for *profiles*, each line with the command fixing it.

        Version advisories are logged, not returned: they do not stop a
        profile, see :meth:`advisories`.
        """
        problems = self._name_clashes(profiles) + self._profile_problems(profiles)
        problems += self._kernel_problems(profiles)
        problems += self._devfs_problems(profiles)
        problems += self._pf_problems(profiles)
        problems += self._strongswan_problems(profiles)
        for line in self.advisories(profiles):
            log.warning("%s", line)
        return problems

    def _ok(self, *argv: str) -> bool:
        return self.probe(argv)[0] == 0

    def _sysctl(self, name: str) -> str | None:
        code, out = self.probe((SYSCTL, "-n", name))
        return out.strip() if code == 0 else None

    def _name_clashes(self, profiles: list[Profile]) -> list[str]:
        problems = []
        for what, key in (("slot", slot), ("host interface", host_interface)):
            seen: dict = {}
            for profile in profiles:
                value = key(profile.name)
                if value in seen:
                    problems.append(
                        f"profiles {seen[value]} and {profile.name} share the {what} "
                        f"{value}: rename one"
                    )
                seen.setdefault(value, profile.name)
        return problems

    def _profile_problems(self, profiles: list[Profile]) -> list[str]:
        problems = []
        for profile in profiles:
            if tunnel_forwards(profile) and profile.backend != "libipsec":
                problems.append(_KERNEL_TUNNEL_FORWARD.format(name=profile.name))
        return problems

    def _kernel_problems(self, profiles: list[Profile]) -> list[str]:
        problems = []
        if self._sysctl("kern.features.vimage") != "1":
            problems.append(
                "the kernel lacks VIMAGE (kern.features.vimage), which vnet jails "
                "need: boot a GENERIC kernel or build one with `options VIMAGE`"
            )
        if not self._ok(KLDSTAT, "-q", "-m", "if_epair"):
            problems.append(
                "if_epair is not loaded: kldload if_epair && sysrc kld_list+=if_epair"
            )
        problems += self._ipsec_problems(profiles)
        problems += self._tun_problems(profiles)
        problems += self._forwarding_problems(profiles)
        if not self._ok(IFCONFIG, self.egress):
            problems.append(
                f"egress interface {self.egress} does not exist: pass --egress with "
                "the host's outside interface (`route -n get default` names it)"
            )
        return problems

    def _ipsec_problems(self, profiles: list[Profile]) -> list[str]:
        users = _names(p for p in profiles if p.backend == "kernel")
        if not users or self._sysctl("kern.features.ipsec") == "1":
            return []
        return [
            f"the ipsec kernel module is not loaded, needed by {users} (backend "
            "kernel): GENERIC has only IPSEC_SUPPORT, and without ipsec.ko every "
            "SADB_ADD fails with EINVAL: kldload ipsec && sysrc kld_list+=ipsec"
        ]

    def _tun_problems(self, profiles: list[Profile]) -> list[str]:
        users = _names(p for p in profiles if self.needs(p).tun)
        if not users:
            return []
        problems = []
        if not self._ok(KLDSTAT, "-q", "-m", "if_tuntap"):
            problems.append(
                f"if_tuntap is not loaded, needed by {users} (tun device): "
                "kldload if_tuntap && sysrc kld_list+=if_tuntap"
            )
        if self._sysctl("net.link.tun.devfs_cloning") != "1":
            problems.append(
                f"net.link.tun.devfs_cloning is not 1, so charon in {users} cannot "
                "open /dev/tun: sysctl net.link.tun.devfs_cloning=1 && "
                "echo net.link.tun.devfs_cloning=1 >> /etc/sysctl.conf"
            )
        return problems

    def _forwarding_problems(self, profiles: list[Profile]) -> list[str]:
        problems = []
        if self._sysctl("net.inet.ip.forwarding") != "1":
            problems.append(
                "IPv4 forwarding is off (net.inet.ip.forwarding): "
                "sysctl net.inet.ip.forwarding=1 && sysrc gateway_enable=YES"
            )
        ipv6 = [p for p in profiles if p.link and _family(p.link.host) == 6]
        if ipv6 and self._sysctl("net.inet6.ip6.forwarding") != "1":
            problems.append(
                f"IPv6 forwarding is off, needed by {_names(ipv6)} "
                "(net.inet6.ip6.forwarding): sysctl net.inet6.ip6.forwarding=1 && "
                "sysrc ipv6_gateway_enable=YES"
            )
        return problems

    def _devfs_problems(self, profiles: list[Profile]) -> list[str]:
        code, out = self.probe((DEVFS, "rule", "-s", str(DEVFSRULES_JAIL_VNET), "show"))
        if profiles and (code != 0 or not out.strip()):
            return [
                "devfs ruleset 5 (devfsrules_jail_vnet), which every vpnjail "
                "ruleset includes, is not loaded: service devfs restart"
            ]
        return []

    def _pf_problems(self, profiles: list[Profile]) -> list[str]:
        if not self._ok(KLDSTAT, "-q", "-m", "pf"):
            return ["pf is not loaded: sysrc pf_enable=YES && service pf start"]
        code, out = self.probe((PFCTL, "-s", "info"))
        problems = []
        if code != 0 or "Status: Enabled" not in out:
            problems.append(
                "pf is loaded but not enabled: sysrc pf_enable=YES && service pf start"
            )
        return problems + self._anchor_problems()

    def _anchor_problems(self) -> list[str]:
        translation = self.probe((PFCTL, "-s", "nat"))[1]
        filtering = self.probe((PFCTL, "-s", "rules"))[1]
        problems = []
        for kind, shown in (
            ("nat-anchor", translation),
            ("rdr-anchor", translation),
            ("anchor", filtering),
        ):
            line = f'{kind} "{ANCHOR_ROOT}/*"'
            if not any(row.strip().startswith(line) for row in shown.splitlines()):
                problems.append(
                    f"the main pf ruleset does not evaluate vpnjail's anchors: add "
                    f"the line `{line}` to /etc/pf.conf ({_ANCHOR_PLACE[kind]}), "
                    "then pfctl -f /etc/pf.conf"
                )
        return problems

    def _strongswan_problems(self, profiles: list[Profile]) -> list[str]:
        if not self._ok(TEST, "-x", CHARON):
            return [f"strongSwan is not installed ({CHARON}): pkg install strongswan"]
        users = _names(p for p in profiles if p.backend == "libipsec")
        if users and not self._ok(TEST, "-e", LIBIPSEC_PLUGIN):
            return [_NO_LIBIPSEC.format(users=users, plugin=LIBIPSEC_PLUGIN)]
        return []

    def strongswan_version(self) -> tuple[int, int, int] | None:
        for argv in ((PKG, "query", "%v", "strongswan"), (CHARON, "--version")):
            code, out = self.probe(argv)
            found = _VERSION.search(out) if code == 0 else None
            if found:
                return tuple(int(part) for part in found.groups())
        return None

    def advisories(self, profiles: list[Profile]) -> list[str]:
        """strongSwan releases with known FreeBSD bugs these profiles would hit."""
        version = self.strongswan_version()
        if version is None or not profiles:
            return []
        shown = ".".join(str(part) for part in version)
        lines = []
        for fixed, applies, text in _VERSION_GATES:
            users = _names(p for p in profiles if applies(p))
            if version < fixed and users:
                lines.append(
                    f"warning: strongSwan {shown} (used by {users}): {text}; "
                    "pkg upgrade strongswan"
                )
        return lines

    # -- leftovers -----------------------------------------------------------

    def leftovers(self, running: set[str]) -> list[str]:
        """What profiles not in *running* left behind, most dependent first."""
        kept = [self.names(name) for name in sorted(running)]
        jails, dying = self._leftover_jails(running)
        return (
            jails
            + self._leftover_mounts(running)
            + self._leftover_epairs({n.host_if for n in kept})
            + self._leftover_anchors(running)
            + self._leftover_rulesets({n.slot for n in kept})
            + self._leftover_dirs("conf", running)
            + self._leftover_dirs("jails", running)
            + dying
        )

    def _leftover_jails(self, running: set[str]) -> tuple[list[str], list[str]]:
        jails, dying = [], []
        for line in self.probe((JLS, "-d", "name", "dying"))[1].splitlines():
            fields = line.split()
            if len(fields) != 2 or not fields[0].startswith(JAIL_PREFIX):
                continue
            if fields[0][len(JAIL_PREFIX) :] in running:
                continue
            (dying if fields[1] == "true" else jails).append(fields[0])
        return [f"jail:{j}" for j in jails], [f"dying-jail:{j}" for j in dying]

    def _leftover_mounts(self, running: set[str]) -> list[str]:
        roots = os.path.join(self.state_dir, "jails") + "/"
        found = []
        for line in self.probe((MOUNT, "-p"))[1].splitlines():
            fields = line.split()
            if len(fields) < 2 or not fields[1].startswith(roots):
                continue
            if fields[1][len(roots) :].split("/")[0] not in running:
                found.append(fields[1])
        # Deepest first, so /usr/local comes off before /usr.
        return [f"mount:{m}" for m in sorted(found, key=len, reverse=True)]

    def _leftover_epairs(self, running_ifs: set[str]) -> list[str]:
        members = self.probe((IFCONFIG, "-g", "epair"))[1].split()
        return [
            f"epair:{name}"
            for name in members
            if name.startswith(HOST_IF_PREFIX) and name not in running_ifs
        ]

    def _leftover_anchors(self, running: set[str]) -> list[str]:
        code, out = self.probe((PFCTL, "-a", ANCHOR_ROOT, "-s", "Anchors"))
        prefix = ANCHOR_ROOT + "/"
        found = []
        for line in out.splitlines() if code == 0 else []:
            anchor = line.strip()
            if anchor.startswith(prefix) and anchor[len(prefix) :] not in running:
                found.append(f"anchor:{anchor}")
        return found

    def _leftover_rulesets(self, running_slots: set[int]) -> list[str]:
        found = []
        for line in self.probe((DEVFS, "rule", "showsets"))[1].split():
            number = int(line) if line.isdigit() else -1
            if number in running_slots or not _is_slot(number):
                continue
            # Only sets that look like vpnjail's, in case another tool
            # picked a number in the same range.
            shown = self.probe((DEVFS, "rule", "-s", line, "show"))[1]
            if shown.startswith(f"{RULE_INCLUDE} include {DEVFSRULES_JAIL_VNET}"):
                found.append(f"devfs-ruleset:{number}")
        return found

    def _leftover_dirs(self, kind: str, running: set[str]) -> list[str]:
        parent = os.path.join(self.state_dir, kind)
        if not os.path.isdir(parent):
            return []
        return [
            f"{'conf' if kind == 'conf' else 'root'}:{os.path.join(parent, entry)}"
            for entry in sorted(os.listdir(parent))
            if entry not in running and re.match(NAME_PATTERN, entry)
        ]

    def remove_leftover(self, item: str) -> None:
        kind, _, what = item.partition(":")
        removers = {
            "jail": self._remove_jail,
            "mount": self._remove_mount,
            "epair": self._remove_epair,
            "anchor": self._remove_anchor,
            "devfs-ruleset": self._remove_ruleset,
            "conf": self._remove_conf,
            "root": self._remove_root,
            "dying-jail": self._report_dying,
        }
        if kind not in removers:
            raise ValueError(f"not a vpnjail leftover: {item!r}")
        removers[kind](what)

    def _host(self, *argv: str, ok: tuple[int, ...] = (0,)) -> bool:
        done = self.runner(argv, None, None)
        if done.returncode not in ok:
            log.info("%s: %s", argv[0], _last_line(done.stderr))
        return done.returncode in ok

    def _profile_of(self, jail: str) -> JailNames:
        if not jail.startswith(JAIL_PREFIX):
            raise ValueError(f"{jail!r} is not a vpnjail jail")
        return self.names(jail[len(JAIL_PREFIX) :])

    def _remove_jail(self, jail: str) -> None:
        names = self._profile_of(jail)
        self._host(JEXEC, jail, SH, "-c", STOP_CHARON, ok=(0, 1))
        if os.path.exists(names.jail_conf):
            self._host(JAIL, "-f", names.jail_conf, "-r", jail, ok=(0, 1))
        else:
            self._host(JAIL, "-r", jail, ok=(0, 1))

    def _remove_mount(self, path: str) -> None:
        self._inside("mount", path, "jails")
        self._host(UMOUNT, path, ok=(0, 1))

    def _remove_epair(self, ifname: str) -> None:
        if not ifname.startswith(HOST_IF_PREFIX) or not _SAFE_IFNAME.match(ifname):
            raise ValueError(f"{ifname!r} is not a vpnjail interface")
        self._host(IFCONFIG, ifname, "destroy", ok=(0, 1))

    def _remove_anchor(self, anchor: str) -> None:
        names = self.names(anchor.removeprefix(ANCHOR_ROOT + "/"))
        for action in _anchor_removal(names):
            self._host(*action.argv, ok=action.ok_codes)

    def _remove_ruleset(self, number: str) -> None:
        if not number.isdigit() or not _is_slot(int(number)):
            raise ValueError(f"{number!r} is not a vpnjail devfs ruleset")
        self._host(DEVFS, "rule", "-s", number, "delset")

    def _remove_conf(self, path: str) -> None:
        names = self.names(self._inside("conf", path, "conf"))
        if path != names.conf:
            raise ValueError(f"conf {path!r} is not a profile's directory")
        self._host(RM, "-rf", path)

    def _remove_root(self, path: str) -> None:
        names = self.names(self._inside("root", path, "jails"))
        if path != names.root:
            raise ValueError(f"root {path!r} is not a jail root")
        mounted = [
            line.split()[1]
            for line in self.probe((MOUNT, "-p"))[1].splitlines()
            if len(line.split()) > 1 and line.split()[1].startswith(path + "/")
        ]
        if mounted:
            log.warning("%s: still mounted, not removed: %s", path, " ".join(mounted))
            return
        self._host(RM, "-rf", *_writable(names))
        self._host(RMDIR, *names.own_mountpoints(), path, ok=(0, 1))

    def _inside(self, kind: str, path: str, area: str) -> str:
        """The profile *path* belongs to; refuses paths outside vpnjail's."""
        parent = os.path.join(self.state_dir, area) + "/"
        rest = path[len(parent) :] if path.startswith(parent) else ""
        name = rest.split("/")[0]
        if ".." in path.split("/") or not re.match(NAME_PATTERN, name):
            raise ValueError(f"{kind} {path!r} is not under {parent}")
        return name

    def _report_dying(self, jail: str) -> None:
        raise RuntimeError(
            f"jail {jail} is stuck in DYING: a tun interface outlived charon "
            "(if_tuntap refcount bug, fixed by FreeBSD commit 3b263fa76c08); "
            "nothing can remove it before a reboot; upgrade the kernel"
        )


# -- rendering --------------------------------------------------------------------


def render_jail_conf(names: JailNames) -> str:
    """jail.conf(5) for ``jail -f FILE -c NAME`` and ``jail -f FILE -r NAME``."""
    return "\n".join(
        [
            f"# vpnjail: the jail of profile {names.profile}; written by vpnjail.",
            "# Network, charon and pf are set up by vpnjail itself, step by step,",
            "# so no exec.* commands run here.",
            f'"{names.jail}" {{',
            f'\tpath = "{names.root}";',
            f'\thost.hostname = "{names.profile}";',
            '\tvnet = "new";',
            f'\tvnet.interface = "{names.jail_if}";',
            "\tpersist;",
            "\tallow.raw_sockets;",
            "\tmount.devfs;",
            f"\tdevfs_ruleset = {names.slot};",
            f'\tmount.fstab = "{names.fstab}";',
            "}",
            "",
        ]
    )


def render_fstab(names: JailNames) -> str:
    """fstab(5) lines jail(8) mounts in order and unmounts in reverse."""
    lines = [
        f"# vpnjail: file systems of jail {names.jail}; the host's programs",
        "# read-only, a private /tmp. /etc and /var/run are plain directories.",
    ]
    for source in names.host_dirs:
        lines.append(f"{source}\t{names.host_path(source)}\tnullfs\tro\t0\t0")
    lines.append(
        f"tmpfs\t{names.host_path('/tmp')}\ttmpfs\trw,nosuid,mode=1777,size=16m\t0\t0"
    )
    return "\n".join(lines) + "\n"


def render_hosts(names: JailNames) -> str:
    return (
        f"# vpnjail: /etc/hosts of jail {names.jail}\n"
        f"127.0.0.1\tlocalhost {names.profile}\n"
        f"::1\tlocalhost {names.profile}\n"
    )


def tunnel_forwards(profile: Profile) -> list[PortForward]:
    return [f for f in profile.port_forwards if f.to != "jail"]


def render_anchor(
    profile: Profile, names: JailNames, link: LinkAddresses, egress: str
) -> str:
    """The profile's pf anchor: NAT, port forwards and the rules passing them."""
    jail = ipaddress.ip_interface(link.jail)
    af = "inet" if jail.version == 4 else "inet6"
    lines = [
        f"# vpnjail: pf anchor {names.anchor} of profile {profile.name}",
        f"# loaded with: pfctl -a {names.anchor} -f {names.anchor_file}",
    ]
    if profile.nat:
        lines += [
            "# No static-port: pf then gives each jail its own source port, so",
            "# several jails can talk IKE/NAT-T (500, 4500) to the same gateway",
            "# through one egress address; NAT-T copes with the changed port.",
            f"nat on {egress} {af} from {jail.network} to any -> ({egress})",
        ]
    for forward in profile.port_forwards:
        lines.append(
            f"rdr on {egress} {af} proto {forward.proto} from any to ({egress}) "
            f"port {forward.host_port} -> {jail.ip} port {_jail_port(forward)}"
        )
    lines += _pass_rules(profile, names, jail, egress, af)
    return "\n".join(lines) + "\n"


def _pass_rules(
    profile: Profile,
    names: JailNames,
    jail: ipaddress.IPv4Interface | ipaddress.IPv6Interface,
    egress: str,
    af: str,
) -> list[str]:
    # Quick, and tagged so that only this jail's packets match: the main
    # ruleset may block by default, and these must win wherever the anchor
    # line sits. The label lets plan_down kill this jail's states.
    marks = f'tag "{names.tag}" label "{names.label}"'
    lines = [
        '# Filtering (evaluated at anchor "vpnjail/*").',
        f"pass in quick on {names.host_if} {af} from {jail.ip} to any {marks}",
    ]
    for forward in profile.port_forwards:
        lines.append(
            f"pass in quick on {egress} {af} proto {forward.proto} from any "
            f"to {jail.ip} port {_jail_port(forward)} {marks}"
        )
    lines.append(f'pass out quick {af} all tagged "{names.tag}" label "{names.label}"')
    return lines


def _jail_port(forward: PortForward) -> int:
    """The port the jail receives: its own service, or the tunnel relay's."""
    return forward.port if forward.to == "jail" else forward.host_port


def render_jail_pf(
    profile: Profile, names: JailNames, link: LinkAddresses
) -> str | None:
    """The jail's own pf.conf relaying forwards on into the tunnel."""
    forwards = tunnel_forwards(profile)
    if not forwards:
        return None
    jail = ipaddress.ip_interface(link.jail)
    af = "inet" if jail.version == 4 else "inet6"
    lines = [
        f"# vpnjail: pf of jail {names.jail}, relaying host port forwards",
        "# into the tunnel. kernel-libipsec routes the remote networks into its",
        "# tun device, whose address is the virtual IP: pf rewrites the source",
        "# to it there, so the traffic matches the IPsec policy. The tun group",
        "# address (tun) follows whichever tun charon creates.",
        f'nat on tun {af} from any to any tagged "{TUNNEL_TAG}" -> (tun)',
    ]
    for forward in forwards:
        lines.append(
            f"rdr on {names.jail_if} {af} proto {forward.proto} from any to "
            f'{jail.ip} port {forward.host_port} tag "{TUNNEL_TAG}" -> '
            f"{forward.to} port {forward.port}"
        )
    return "\n".join(lines) + "\n"


# -- helpers ------------------------------------------------------------------------

_ANCHOR_PLACE = {
    "nat-anchor": "with the translation rules, before the filter rules",
    "rdr-anchor": "with the translation rules, before the filter rules",
    "anchor": "among the filter rules",
}

_KERNEL_TUNNEL_FORWARD = (
    "profile {name}: port_forwards into the tunnel need backend libipsec on "
    "FreeBSD: the kernel looks up the IPsec policy before pf can rewrite the "
    "source to the virtual IP (ip_output); set backend: libipsec, or forward "
    "to: jail"
)

_NO_LIBIPSEC = (
    "{users} use backend libipsec, but {plugin} is missing (the FreeBSD "
    "package is built without it): make -C /usr/ports/security/strongswan "
    "WITH=KERNELLIBIPSEC BATCH=yes install clean (vpnjail lists its plugins in "
    "charon.load, so the port's load = no in strongswan.d/charon/"
    "kernel-libipsec.conf does not apply to it)"
)


def _wants_default_route(profile: Profile) -> bool:
    if profile.remote_networks == "pushed":
        return True
    return any(ipaddress.ip_network(n).prefixlen == 0 for n in profile.remote_networks)


def _wants_virtual_ip(profile: Profile) -> bool:
    return profile.mode_config != "off"


_VERSION_GATES = (
    (
        (5, 9, 6),
        _wants_default_route,
        "full-tunnel exclude routes break IKE on FreeBSD (strongSwan #910)",
    ),
    (
        (5, 9, 12),
        _wants_virtual_ip,
        "routes may miss the virtual IP as source on FreeBSD (strongSwan #1807)",
    ),
    (
        (6, 0, 0),
        _wants_virtual_ip,
        "IPv6 virtual IPs fail with EINVAL on FreeBSD (strongSwan #2465)",
    ),
)


def stop_charon_action() -> Run:
    # 1: jexec found no jail, so there is no charon to stop.
    return Run((SH, "-c", STOP_CHARON), "jail", ok_codes=(0, 1))


def _anchor_removal(names: JailNames) -> list[Run]:
    # States first (while their rules exist): stale NAT states would keep
    # sending a restarted jail's IKE through an old mapping.
    return [
        Run((PFCTL, "-k", "label", "-k", names.label), ok_codes=(0, 1)),
        Run((PFCTL, "-a", names.anchor, "-F", "all"), ok_codes=(0, 1)),
    ]


def _address_actions(ifname: str, address, where: str = "host") -> list[Run]:
    if address.version == 4:
        return [Run((IFCONFIG, ifname, "inet", str(address), "up"), where)]
    return [
        Run((IFCONFIG, ifname, "inet6", "-ifdisabled"), where),
        Run((IFCONFIG, ifname, "inet6", str(address), "up"), where),
    ]


def _writable(names: JailNames) -> list[str]:
    """The jail's own trees in its root: /etc, /var and the /run link."""
    return [names.host_path(path) for path in ("/etc", "/var", "/run")]


def _unmount_order(names: JailNames) -> list[str]:
    return [names.host_path("/dev"), *reversed(names.mountpoints())]


def _check_tunnel_forwards(profile: Profile, link: LinkAddresses) -> None:
    forwards = tunnel_forwards(profile)
    if forwards and profile.backend != "libipsec":
        raise ProfileError([_KERNEL_TUNNEL_FORWARD.format(name=profile.name)])
    family = _family(link.jail)
    for forward in forwards:
        if ipaddress.ip_address(forward.to).version != family:
            raise ProfileError(
                [
                    f"profile {profile.name}: port_forwards: {forward.to} is not of "
                    f"the link's address family (IPv{family}); pf cannot translate "
                    "between families"
                ]
            )


def _supervisor_pidfile(action: Spawn) -> str:
    argv = list(action.argv)
    if argv[:1] != [DAEMON] or "-P" not in argv:
        raise ValueError(f"{action.name}: FreeBSD spawns run under daemon -P")
    return argv[argv.index("-P") + 1]


def _check_paths(what: str, paths: Sequence[str]) -> None:
    # These paths go into jail.conf, fstab and pf files: no spaces, quotes,
    # '#' or '$' that those formats would read as syntax.
    for path in paths:
        if not _SAFE_PATH.match(path) or ".." in path.split("/"):
            raise ValueError(f"{what}: {path!r} must be an absolute plain path")


def _is_slot(number: int) -> bool:
    return SLOT_BASE <= number < SLOT_BASE + SLOT_COUNT


def _family(address: str) -> int:
    return ipaddress.ip_interface(address).version


def _names(profiles) -> str:
    return ", ".join(p.name for p in profiles)


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
