"""The Linux driver: a network namespace per profile.

Each profile gets a network namespace with a veth pair to the host stack, a
mount namespace (held by a ``sleep`` process) with a private /run and
strongSwan configuration, ``/dev/net/tun`` only when the profile needs it,
and an nftables table in the host stack for its NAT and port forwards.

The host stack is the root namespace by default; ``host_netns`` names
another one, so the lab can run vpnjail inside its own ``host`` namespace
without touching the machine's real stack.
"""

import hashlib
import ipaddress
import logging
import os
import shutil
import subprocess
import time

from vpnjail import linux_sandbox, strongswan, vici_control
from vpnjail.drivers.base import Driver, Layout, LinkAddresses, Needs
from vpnjail.plan import Plan, Run, Spawn, WriteFile
from vpnjail.processes import alive as pid_alive
from vpnjail.processes import read_pid, terminate
from vpnjail.profile import Profile

log = logging.getLogger(__name__)

IFNAMSIZ = 15
FORWARD_TABLE = "vpnjail_forward"  # inside the profile's own stack
HOLDER = "holder"
CHARON = "charon"


class LinuxDriver(Driver):
    system = "linux"

    def __init__(
        self,
        state_dir: str = "/run/vpnjail",
        prefix: str = "vpnjail-",
        host_netns: str | None = None,
    ):
        self.state_dir = state_dir
        self.prefix = prefix
        self.host_netns = host_netns

    # -- naming -----------------------------------------------------------

    def layout(self, profile: Profile | str) -> Layout:
        name = profile if isinstance(profile, str) else profile.name
        base = os.path.join(self.state_dir, name)
        run_dir = os.path.join(base, "run")
        return Layout(
            name=name,
            stack=f"{self.prefix}{name}",
            host_if=host_interface(name),
            jail_if="eth0",
            run_dir=run_dir,
            conf_dir=run_dir,
            vici_socket=os.path.join(run_dir, "charon.vici"),
            log_file=os.path.join(run_dir, "charon.log"),
            firewall=nft_table(self.prefix, name),
        )

    def needs(self, profile: Profile) -> Needs:
        # On Linux kernel-netlink puts a virtual IP on an existing interface;
        # only kernel-libipsec needs a tun device.
        needed = profile.backend == "libipsec"
        tun = {"auto": needed, "exposed": True, "hidden": False}[profile.tun]
        return Needs(tun=tun, kernel_ipsec=profile.backend == "kernel")

    # -- plans --------------------------------------------------------------

    def plan_up(self, profile: Profile, link: LinkAddresses, charon_conf: str) -> Plan:
        lay = self.layout(profile)
        plan = Plan(profile.name)
        self._plan_stack(plan, lay)
        self._plan_link(plan, lay, link)
        self._plan_firewall(plan, profile, lay, link)
        self._plan_sandbox(plan, profile, lay, charon_conf)
        return plan

    def _plan_stack(self, plan: Plan, lay: Layout) -> None:
        plan.add(
            f"network namespace {lay.stack}",
            [
                Run(("ip", "netns", "add", lay.stack), "system"),
                Run(("ip", "-n", lay.stack, "link", "set", "lo", "up"), "system"),
            ],
            [Run(("ip", "netns", "delete", lay.stack), "system", ok_codes=(0, 1))],
        )

    def _plan_link(self, plan: Plan, lay: Layout, link: LinkAddresses) -> None:
        host_ip = str(ipaddress.ip_interface(link.host).ip)
        plan.add(
            f"veth {lay.host_if} <-> {lay.stack}:{lay.jail_if}",
            [
                Run(("ip", "link", "add", lay.host_if, "type", "veth", "peer",
                     "name", lay.jail_if, "netns", lay.stack)),
                Run(("ip", "addr", "add", link.host, "dev", lay.host_if)),
                Run(("ip", "link", "set", lay.host_if, "up")),
                Run(("ip", "addr", "add", link.jail, "dev", lay.jail_if), "jail"),
                Run(("ip", "link", "set", lay.jail_if, "up"), "jail"),
                Run(("ip", "route", "add", "default", "via", host_ip), "jail"),
            ],
            [Run(("ip", "link", "delete", lay.host_if), ok_codes=(0, 1))],
        )  # fmt: skip

    def _plan_firewall(
        self, plan: Plan, profile: Profile, lay: Layout, link: LinkAddresses
    ) -> None:
        ruleset = render_nft(profile, lay, link)
        plan.add(
            f"nftables table {lay.firewall}",
            [Run(("nft", "-f", "-"), input_text=ruleset)],
            [Run(("nft", "delete", "table", "ip", lay.firewall), ok_codes=(0, 1))],
        )

    def _plan_sandbox(
        self, plan: Plan, profile: Profile, lay: Layout, charon_conf: str
    ) -> None:
        script = os.path.join(os.path.dirname(lay.run_dir), "sandbox.sh")
        needs = self.needs(profile)
        plan.add(
            "private /run, configuration and /dev",
            [
                WriteFile(script, linux_sandbox.render_script(lay.run_dir, needs.tun)),
                WriteFile(os.path.join(lay.run_dir, "strongswan.conf"), charon_conf),
                Spawn(HOLDER, ("unshare", "--mount", "--propagation", "private",
                               "sh", script), where="netns"),
            ],
        )  # fmt: skip
        plan.add(
            "charon",
            [
                Spawn(
                    CHARON,
                    (strongswan.CHARON_PATHS["linux"],),
                    env=(("STRONGSWAN_CONF", "/run/strongswan.conf"),),
                )
            ],
        )

    def plan_after_up(self, profile: Profile, virtual_ip: str | None) -> Plan:
        plan = Plan(profile.name)
        ruleset = tunnel_forward_nft(profile, FORWARD_TABLE, virtual_ip or "VIRTUAL_IP")
        if ruleset is None:
            return plan
        plan.add(
            "forwards into the tunnel, from the virtual IP (once it is known)",
            [
                Run(("sysctl", "-q", "-w", "net.ipv4.ip_forward=1"), "jail"),
                Run(("nft", "delete", "table", "ip", FORWARD_TABLE), "jail",
                    ok_codes=(0, 1)),
                Run(("nft", "-f", "-"), "jail", input_text=ruleset),
            ],
        )  # fmt: skip
        return plan

    def existing_objects(self, profile: Profile) -> list[str]:
        lay = self.layout(profile)
        found = []
        if (
            subprocess.run(
                ["ip", "netns", "pids", lay.stack], capture_output=True, check=False
            ).returncode
            == 0
        ):
            found.append(f"namespace {lay.stack}")
        link = self.host_prefix() + ["ip", "link", "show", "dev", lay.host_if]
        if subprocess.run(link, capture_output=True, check=False).returncode == 0:
            found.append(f"interface {lay.host_if}")
        table = self.host_prefix() + ["nft", "list", "table", "ip", lay.firewall]
        if subprocess.run(table, capture_output=True, check=False).returncode == 0:
            found.append(f"nftables table {lay.firewall}")
        return found  # fmt: skip

    def display_argv(self, action, layout: Layout) -> list[str]:
        if isinstance(action, Spawn) and action.where == "jail":
            # Daemons start inside the sandbox, whose holder has no pid yet.
            return ["nsenter", "--target=<holder pid>", "--mount", "--net", "--",
                    *action.argv]  # fmt: skip
        return self.argv_for(action, layout)

    def plan_down(self, profile_name: str) -> Plan:
        lay = self.layout(profile_name)
        plan = Plan(profile_name)
        plan.add(
            "remove stack, link and firewall",
            [
                Run(("nft", "delete", "table", "ip", lay.firewall), ok_codes=(0, 1)),
                Run(("ip", "link", "delete", lay.host_if), ok_codes=(0, 1)),
                Run(("ip", "netns", "delete", lay.stack), "system", ok_codes=(0, 1)),
            ],
        )
        return plan

    # -- carrying out ---------------------------------------------------------

    def host_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.host_netns] if self.host_netns else []

    def jail_prefix(self, lay: Layout) -> list[str]:
        holder = read_pid(os.path.join(os.path.dirname(lay.run_dir), f"{HOLDER}.pid"))
        if holder is not None and pid_alive(holder):
            return ["nsenter", f"--target={holder}", "--mount", "--net", "--"]
        return ["ip", "netns", "exec", lay.stack]

    def argv_for(self, action: Run | Spawn, lay: Layout) -> list[str]:
        # "system" actions touch only the filesystem's view of namespaces
        # (`ip netns add/delete` bind-mount under /run/netns) and must run in
        # the root mount namespace, whichever stack is the host.
        if action.where == "system":
            return list(action.argv)
        if action.where == "host":
            return self.host_prefix() + list(action.argv)
        if action.where == "netns":
            return ["ip", "netns", "exec", lay.stack, *action.argv]
        return self.jail_prefix(lay) + list(action.argv)

    def run(self, action: Run, layout: Layout) -> subprocess.CompletedProcess:
        argv = self.argv_for(action, layout)
        log.debug("run %s", " ".join(argv))
        return subprocess.run(
            argv, input=action.input_text, capture_output=True, text=True, check=False
        )

    def spawn(self, action: Spawn, layout: Layout) -> int:
        os.makedirs(layout.run_dir, exist_ok=True)
        argv = self.argv_for(action, layout)
        env = dict(os.environ, **dict(action.env))
        out_path = os.path.join(os.path.dirname(layout.run_dir), f"{action.name}.out")
        log.debug("spawn %s", " ".join(argv))
        with open(out_path, "ab") as out:
            process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        pid_file = os.path.join(os.path.dirname(layout.run_dir), f"{action.name}.pid")
        with open(pid_file, "w") as pid_out:
            pid_out.write(str(process.pid))
        return process.pid

    def wait_started(self, action: Spawn, layout: Layout, pid: int, timeout: float):
        if action.name == HOLDER:
            ready = os.path.join(layout.run_dir, linux_sandbox.READY_FILE)
        else:
            ready = layout.vici_socket
        deadline = time.monotonic() + timeout
        while not self._ready(action, ready):
            if not pid_alive(pid):
                raise RuntimeError(
                    f"{action.name} exited during start{self._why(layout)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{action.name} not ready within {timeout:.0f}s")
            time.sleep(0.05)

    def _ready(self, action: Spawn, path: str) -> bool:
        if not os.path.exists(path):
            return False
        # charon creates its socket before it accepts connections on it.
        return action.name == HOLDER or vici_control.reachable(path)

    def _why(self, layout: Layout) -> str:
        try:
            with open(layout.log_file, errors="replace") as src:
                lines = src.read().strip().splitlines()
        except OSError:
            return ""
        return f": {lines[-1]}" if lines else ""

    def stop(self, layout: Layout) -> None:
        """Stop charon, then the holder; leave nothing running for the profile."""
        base = os.path.dirname(layout.run_dir)
        for name in (CHARON, HOLDER):
            pid = read_pid(os.path.join(base, f"{name}.pid"))
            if pid is not None:
                terminate(pid)

    def forget(self, layout: Layout) -> None:
        shutil.rmtree(os.path.dirname(layout.run_dir), ignore_errors=True)

    # -- host checks and leftovers --------------------------------------------

    def preflight(self, profiles: list[Profile]) -> list[str]:
        from vpnjail.linux_checks import preflight

        return preflight(self, profiles)

    def leftovers(self, running: set[str]) -> list[str]:
        # Ownership is recorded in the state directory, so `gc` removes a
        # dead profile's objects by name; nothing is found by scanning for a
        # prefix another tool may share.
        return []

    def remove_leftover(self, item: str) -> None:
        raise ValueError(f"the Linux driver finds no leftovers by scanning: {item}")


def host_interface(name: str) -> str:
    """The host end of a profile's veth: ``vj-<name>``, shortened if needed."""
    candidate = f"vj-{name}"
    if len(candidate) <= IFNAMSIZ:
        return candidate
    digest = hashlib.sha1(name.encode()).hexdigest()[:4]
    return f"vj-{name[:7]}-{digest}"


def nft_table(prefix: str, name: str) -> str:
    return (prefix + name).replace("-", "_")


def render_nft(profile: Profile, lay: Layout, link: LinkAddresses) -> str:
    """The profile's table: masquerade of its link, and its port forwards."""
    network = ipaddress.ip_interface(link.jail).network
    jail_ip = str(ipaddress.ip_interface(link.jail).ip)
    lines = [
        f"table ip {lay.firewall} {{",
        "  chain prerouting {",
        "    type nat hook prerouting priority dstnat; policy accept;",
    ]
    for forward in profile.port_forwards:
        # Forwards into the tunnel land on the jail at the same host port;
        # the jail's own table sends them on (see tunnel_forward_nft).
        port = forward.port if forward.to == "jail" else forward.host_port
        lines.append(
            f'    iifname != "{lay.host_if}" fib daddr type local '
            f"{forward.proto} dport {forward.host_port} dnat to {jail_ip}:{port}"
        )
    lines += [
        "  }",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
    ]
    if profile.nat:
        lines.append(f'    ip saddr {network} oifname != "{lay.host_if}" masquerade')
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def tunnel_forward_nft(profile: Profile, table: str, virtual_ip: str) -> str | None:
    """The jail's table sending forwards on into the tunnel, from the VIP."""
    forwards = [f for f in profile.port_forwards if f.to != "jail"]
    if not forwards:
        return None
    lines = [
        f"table ip {table} {{",
        "  chain prerouting {",
        "    type nat hook prerouting priority dstnat; policy accept;",
    ]
    for f in forwards:
        lines.append(f"    {f.proto} dport {f.host_port} dnat to {f.to}:{f.port}")
    lines += [
        "  }",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
    ]
    for f in forwards:
        lines.append(
            f"    ip daddr {f.to} {f.proto} dport {f.port} snat to {virtual_ip}"
        )
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"
