"""The FreeBSD platform: each cell's client in a FreeBSD guest of its own.

::

    lan ---- gw ==== wan ~~~~ [ guest: host ---- jail ]
    Linux namespaces       |   FreeBSD VM (QEMU)
                           relay: the wan's tap <-> the guest's vtnet1

The responder side is the local lab's: ``lan``, ``gw`` (the FortiGate-like
responder in a sandbox) and ``wan`` are Linux network namespaces, so the
responder is the same in every cell and on every platform. ``host`` is the
guest itself (its pf NATs and forwards) and ``jail`` a classic or vnet
jail in it, per the cell's isolation; commands reach them over SSH and
``jexec``. The guest's wan NIC is a QEMU UDP socket; a relay process,
started in the root namespace, moves its frames to a tap it creates inside
the ``wan`` namespace, so the root namespace gains no interface.

A guest boots from a throw-away overlay of a provisioned layer (kept under
images/cache/freebsd/layers/, keyed by what made it), which sits on the
release image. The cell's kernel modules are loaded in the overlay only.
"""

import argparse
import ctypes
import datetime
import fcntl
import hashlib
import json
import logging
import os
import select
import shutil
import socket
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lab import capabilities as linux_caps
from lab import cell as cell_runner
from lab import (
    classify,
    client,
    command,
    netns,
    responder,
    runid,
    sandbox,
    strongswan,
    topology,
    vici_client,
)
from lab.matrix import Cell
from lab.netns import NetnsNode
from lab.node import Node, Process
from lab.outcome import Outcome
from lab.platforms.base import Platform, Stack, World
from lab.vm import disks, freebsd_evidence, images, seed
from lab.vm import freebsd_provision as fp
from lab.vm import hypervisor as vm_hypervisor
from lab.vm.accel import resolve as resolve_accel
from lab.vm.spec import Nic, VmSpec
from lab.vm.ssh import SSHNode, generate_key, wait_for_ssh
from lab.wait import WaitTimeout, wait_until
from vpnjail import strongswan as shared_strongswan

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
LINUX_ROLES = ("lan", "gw", "wan")
MGMT_NET = "198.51.100.192/26"  # the slirp network of the management NIC
WAN_LINK = next(link for link in topology.CELL.links if link.b == "host")
JAIL_LINK = next(link for link in topology.CELL.links if link.b == "jail")
STACK_RUN = "/run"
CHARON_PID = "/var/run/charon.pid"
DAEMON_PID = f"{STACK_RUN}/daemon-charon.pid"
BOOT_SECONDS = 240.0  # to an SSH login under KVM; scaled under TCG
PROVISION_HINT = (
    "if pkg or git could not fetch: provisioning needs the guest to reach "
    "pkg.FreeBSD.org (and git.FreeBSD.org for the ports build), so its "
    "management NIC must allow outbound traffic"
)
# Modules copied to the guest: stdlib only, run by the guest's python3.
GUEST_MODULES = ("lab/__init__.py", "lab/service.py")
GUEST_PACKAGES = {"pfkey": "lab/pfkey", "vpnjail": "vpnjail"}


@dataclass
class Settings:
    """Where the images, layers and keys are, and the guests' size."""

    images: dict[str, images.Image]
    hypervisor: str | None = None
    cache: Path = images.CACHE
    memory_mib: int = 2048
    cpus: int = 2
    today: datetime.date = field(default_factory=datetime.date.today)

    @property
    def folder(self) -> Path:
        return Path(self.cache) / "freebsd"


@dataclass
class GuestWorld(World):
    """A world whose ``host`` and ``jail`` live in a FreeBSD guest."""

    guest: object = None
    overlay: str = ""
    relay: Process | None = None
    relay_ports: tuple[int, int] | None = None  # (relay's, QEMU's) UDP ports
    local: list[Process] = field(default_factory=list)


class _Local(Node):
    """Processes on the machine running the lab, outside any namespace."""

    def prefix(self) -> list[str]:
        return []


class JailNode(SSHNode):
    """A jail in the guest: commands through ``jexec``, files under its root."""

    def __init__(self, host: SSHNode, jail: str, root: str, role: str = "jail"):
        super().__init__(
            role, host.run_id, host.host, host.port, host.user, host.key_path
        )
        self.jail = jail
        self.root = root

    def run(self, argv, check=True, timeout=60.0, input_text=None):
        return super().run(["jexec", self.jail, *argv], check, timeout, input_text)

    def spawn(self, argv, log_path, env=None):
        return super().spawn(["jexec", self.jail, *argv], log_path, env)

    def put(self, local: str, remote: str) -> None:
        super().put(local, self.guest_path(remote))

    def get(self, remote: str, local: str) -> None:
        super().get(self.guest_path(remote), local)

    def guest_path(self, path: str) -> str:
        """*path* inside the jail, as the guest's own stack sees it."""
        return self.root + path


def guest_path(node: SSHNode, path: str) -> str:
    return node.guest_path(path) if isinstance(node, JailNode) else path


class GuestCharon(strongswan.Charon):
    """charon in a guest stack: lab.strongswan.Charon's paths and configuration,
    started, watched and read over SSH.

    The configuration is written locally (evidence) and copied in; charon
    runs under daemon(8); its VICI socket is forwarded to a local socket by
    the OpenSSH client, so the lab talks VICI exactly as on Linux; its log
    is fetched back whenever it is read.
    """

    def __init__(self, node: SSHNode, run_dir: str, run_id: str):
        super().__init__(node, run_dir)
        self.forward: Process | None = None
        self._local = _Local(role=f"{node.role}-vici", run_id=run_id)

    def write_config(self, charon: dict) -> str:
        os.makedirs(self.run_dir, exist_ok=True)
        return super().write_config(charon)

    def start(self, system: str = "freebsd", timeout: float = 30.0) -> None:
        """Start charon; return when VICI answers here, or charon has died."""
        self.node.run(["rm", "-f", *self._guest_files(), CHARON_PID], check=False)
        self.node.put(
            os.path.join(self.run_dir, "strongswan.conf"),
            f"{STACK_RUN}/strongswan.conf",
        )
        self.node.run(start_argv())
        try:
            wait_until(self._vici_or_dead, timeout, f"{self.node.label}: charon VICI")
        except WaitTimeout:
            log.debug("%s: charon did not open VICI in time", self.node.label)
            return
        if self.running():
            self._forward_vici(timeout)

    def _guest_files(self) -> list[str]:
        names = ("charon.vici", "charon.log", "charon.out", "daemon-charon.pid")
        return [f"{STACK_RUN}/{name}" for name in names]

    def _vici_or_dead(self) -> str | None:
        if self.node.run(["test", "-S", f"{STACK_RUN}/charon.vici"], check=False).ok:
            return None
        alive = self.node.run(["pgrep", "-q", "-F", DAEMON_PID], check=False).ok
        return "VICI socket not there yet" if alive else None

    def _forward_vici(self, timeout: float) -> None:
        remote = guest_path(self.node, f"{STACK_RUN}/charon.vici")
        if os.path.exists(self.vici_socket):
            os.remove(self.vici_socket)
        self.forward = self._local.spawn(
            vici_forward_argv(self.node, self.vici_socket, remote),
            log_path=os.path.join(self.run_dir, "vici-forward.log"),
        )
        wait_until(
            lambda: None if os.path.exists(self.vici_socket) else "no local socket",
            timeout,
            f"{self.node.label}: VICI forwarded to {self.vici_socket}",
        )

    def running(self) -> bool:
        return self.node.run(["pgrep", "-q", "-F", CHARON_PID], check=False).ok

    def read_log(self) -> str:
        for name in ("charon.log", "charon.out"):
            try:
                self.node.get(f"{STACK_RUN}/{name}", os.path.join(self.run_dir, name))
            except OSError as exc:
                log.debug("%s: %s not fetched: %s", self.node.label, name, exc)
        try:
            with open(self.log_path, errors="replace") as src:
                return src.read()
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.forward is not None:
            self.forward.stop()
        self.node.run(["pkill", "-TERM", "-F", DAEMON_PID], check=False)
        try:
            wait_until(
                lambda: "still running" if self.running() else None,
                15,
                f"{self.node.label}: charon stopped",
                interval=0.5,
            )
        except WaitTimeout:
            self.node.run(["pkill", "-KILL", "-F", CHARON_PID], check=False)
        self.read_log()


def start_argv() -> list[str]:
    """charon under daemon(8), its output kept, its config from /run."""
    return [
        "daemon", "-P", DAEMON_PID, "-o", f"{STACK_RUN}/charon.out",
        "env", f"STRONGSWAN_CONF={STACK_RUN}/strongswan.conf",
        shared_strongswan.CHARON_PATHS["freebsd"],
    ]  # fmt: skip


def vici_forward_argv(node: SSHNode, local: str, remote: str) -> list[str]:
    """``ssh -N -L local.sock:remote.sock``: a Unix socket forward over SSH."""
    login = node.prefix()
    return [
        *login[:-2],
        "-N",
        "-o", "ExitOnForwardFailure=yes",
        "-o", "StreamLocalBindUnlink=yes",
        "-L", f"{local}:{remote}",
        login[-2],
    ]  # fmt: skip


class FreeBSDPlatform(Platform):
    name = "freebsd"
    system = "freebsd"

    def __init__(self, settings: Settings):
        self.settings = settings
        self._responder_esp: bool | None = None
        self._run_prefix = f"{runid.PREFIX}-"
        self._hypervisor = vm_hypervisor.select(settings.hypervisor)

    # -- the Platform interface -------------------------------------------------

    def capabilities(self, run_id: str) -> dict[str, dict]:
        """What a guest's client stack can do, from a guest built to look.

        The answers depend on the cell (ipsec.ko, the devfs ruleset): cells
        are probed one by one with :meth:`probe_world`; this boots the
        reported cell's guest once, for a run-wide summary.
        """
        cell = reported_cell(sorted(self.settings.images))
        world = self.build(cell, run_id, runid.runtime_dir(run_id), "capabilities")
        try:
            return self.probe_world(world)
        finally:
            self.teardown(world)

    def responder_backend(self, capabilities: dict[str, bool]) -> str:
        # The responder runs on Linux: what the guest can do does not matter.
        if self._responder_esp is None:
            answer = linux_caps.probe_esp(f"{self._run_prefix}responder-esp")
            self._responder_esp = bool(answer["value"])
        return "netlink" if self._responder_esp else "libipsec"

    def build(
        self, cell: Cell, run_id: str, runtime_dir: str, label: str | None = None
    ) -> GuestWorld:
        label = label or cell.slug
        self._run_prefix = runid.namespace_prefix(run_id)
        world = self._world(run_id, runtime_dir, label)
        world.cell = cell
        try:
            if cell["client"] != "probe":
                self._build_linux_side(world, cell["nat"])
            self._boot_guest(world, cell)
            self._build_guest_side(world, cell)
            if cell["client"] == "charon":
                world.responder = self._responder_stack(world)
                world.client = self._client_stack(world, cell)
        except Exception:
            self.teardown(world)
            raise
        return world

    def build_gateways(self, run_id: str, runtime_dir: str, label: str) -> World:
        raise NotImplementedError(
            "vpnjail runs in FreeBSD guests as cells of the FreeBSD matrix "
            "(client: vpnjail), not against two gateways"
        )

    def teardown(self, world: World) -> list[str]:
        problems = self.stop_processes(world)
        problems += self._stop_guest(world)
        for process in [*getattr(world, "local", []), getattr(world, "relay", None)]:
            if process is not None:
                process.stop()
        problems += _delete_namespaces(world)
        shutil.rmtree(world.runtime_dir, ignore_errors=True)
        return problems

    def kernel_state(self, stack: Stack) -> dict[str, str]:
        """The client stack's SAD, SPD, routes and interfaces."""
        state = {}
        for capture in freebsd_evidence.client_captures():
            if capture.name.startswith("client/kernel/"):
                result = stack.node.run(list(capture.argv), check=False)
                name = capture.name.removeprefix("client/kernel/")
                state[name] = result.stdout + (result.stderr and f"\n{result.stderr}")
        return state

    # -- what lab/cell.py asks of a platform for guest nodes -------------------------

    def charon(self, stack: Stack):
        if isinstance(stack.node, SSHNode):
            return GuestCharon(stack.node, stack.run_dir, stack.node.run_id)
        return strongswan.Charon(stack.node, stack.run_dir)

    def system_of(self, stack: Stack) -> str:
        """The system a stack's charon runs on: the responder stays on Linux."""
        return "freebsd" if isinstance(stack.node, SSHNode) else "linux"

    def python_argv(self, node: Node, module: str, *args: str) -> list[str]:
        if isinstance(node, SSHNode):
            return ["env", f"PYTHONPATH={fp.GUEST_PY}", "python3", "-m", module, *args]
        return ["env", f"PYTHONPATH={REPO}", sys.executable, "-m", module, *args]

    def listening_argv(self, node: Node, port: int) -> list[str]:
        if isinstance(node, SSHNode):
            return ["sockstat", "-4", "-l", "-q", "-P", "tcp", "-p", str(port)]
        return ["ss", "-Hltn", f"sport = :{port}"]

    def ping_argv(self, node: Node, address: str) -> list[str]:
        if isinstance(node, SSHNode):
            # FreeBSD's -W is in milliseconds.
            return ["ping", "-c", "2", "-i", "0.2", "-W", "2000", address]
        return ["ping", "-c", "2", "-i", "0.2", "-W", "2", address]

    # -- FreeBSD evidence and probes --------------------------------------------

    def probe_world(self, world: GuestWorld) -> dict[str, dict]:
        """``esp``, ``tun`` and ``af_key`` of the cell's client stack."""
        host, client = world.node("host"), _client_node(world)
        return {
            "esp": _answer(
                host, ["sysctl", "-n", "kern.features.ipsec"], "kern.features.ipsec"
            ),
            "tun": _answer(client, ["test", "-c", "/dev/tun"], "/dev/tun visible"),
            "af_key": _answer(client, AF_KEY_ARGV, "socket(PF_KEY) opens"),
        }

    def before_cell(self, world: GuestWorld) -> None:
        host, client = world.node("host"), _client_node(world)
        for capture in freebsd_evidence.before_cell():
            node = client if capture.where == "client" else host
            node.run(list(capture.argv), check=False)
        host.run(list(freebsd_evidence.capture_prepare()), check=False)
        host.run(list(freebsd_evidence.capture_start(fp.WAN_IF)), check=False)

    def keep_evidence(self, world: GuestWorld, evidence) -> dict[str, str]:
        """Every capture of lab.vm.freebsd_evidence, the pcap, versions.json."""
        host, client = world.node("host"), _client_node(world)
        captures = freebsd_evidence.guest_captures(
            fp.ruleset_number(world.cell["devfs"])
        )
        if world.cell["client"] == "charon":
            captures += freebsd_evidence.client_captures()
        kept = freebsd_evidence.collect(captures, host, client, evidence)
        host.run(list(freebsd_evidence.capture_stop()), check=False)
        try:
            host.get(
                freebsd_evidence.CAPTURE_FILE,
                os.path.join(evidence.path, "freebsd", "wan.pcap"),
            )
        except OSError as exc:
            log.debug("guest capture not fetched: %s", exc)
        strongswan_version = host.run(
            ["pkg", "query", "%v", "strongswan"], check=False
        ).stdout
        found = freebsd_evidence.versions(
            kept.get("freebsd/freebsd-version.txt", ""), strongswan_version
        )
        evidence.write_json("freebsd/versions.json", found)
        return found

    def run_probe(self, world: GuestWorld, evidence) -> Outcome:
        """The PF_KEY probe in the client's stack; probe.json is its answer."""
        client = _client_node(world)
        result = client.run(
            ["sh", "-c", f"cd {fp.GUEST_PY} && exec python3 -m pfkey.probe --json"],
            check=False,
            timeout=120,
        )
        evidence.write_text("probe.out", result.stdout + result.stderr)
        try:
            report = json.loads(result.stdout) if result.ok else None
        except ValueError:
            report = None
        if report is not None:
            evidence.write_json("probe.json", report)
        return probe_outcome(result.returncode, report, result.stderr)

    def run_vpnjail(self, world: GuestWorld, config, evidence) -> Outcome:
        """vpnjail's FreeBSD driver brings one profile up in the guest.

        The responder and the protected service are the lab's; the client
        is whatever vpnjail makes (its own vnet jail, pf anchor, ruleset),
        judged from the charon log it leaves and the traffic it carries.
        """
        daemon = self._start_responder(world, config)
        try:
            if not daemon.started:
                return Outcome(
                    "ERROR", "", "the responder charon did not start; the lab "
                    "cannot judge the client",
                )  # fmt: skip
            host = world.node("host")
            overrides = config.matrix.auth[world.cell["auth"]]
            spec = client.with_overrides(config.client, overrides)
            _write_vpnjail_profile(host, spec, world.cell["backend"])
            up = host.run(vpnjail_argv("up", VPNJAIL_PROFILE), check=False, timeout=180)
            evidence.write_text("client/vpnjail-up.txt", up.stdout + up.stderr)
            outcome = self._judge_vpnjail(world, config, daemon, up.ok, evidence)
            host.run(vpnjail_argv("down", VPNJAIL_PROFILE), check=False, timeout=120)
            return outcome
        finally:
            cell_runner.stop({"responder": daemon})

    def _start_responder(self, world: GuestWorld, config) -> "cell_runner.Daemon":
        stack = self._responder_stack(world)
        daemon = cell_runner.Daemon(
            "responder", stack,
            responder.build(config.responder, topology.GATEWAY_ADDRESS),
            self.responder_backend({}),
        )  # fmt: skip
        cell_runner.start_service(
            world, topology.PROTECTED_SERVICE, f"{config.responder.name}-lan"
        )
        _start_linux_daemon(daemon, config.responder.name)
        return daemon

    def _judge_vpnjail(self, world, config, daemon, up_ok: bool, evidence) -> Outcome:
        host = world.node("host")
        log_text = _vpnjail_log(host, world.runtime_dir)
        evidence.write_text("client/charon.log", log_text)
        responder_log = daemon.charon.read_log() if daemon.charon else ""
        evidence.write_text("responder/charon.log", responder_log)
        status = host.run(vpnjail_argv("status", "--json"), check=False)
        children = _installed_children(status.stdout)
        traffic = _vpnjail_traffic(host, config.responder.name) if children else {}
        return classify.classify(
            classify.Evidence(
                client_log=log_text,
                responder_log=responder_log,
                client_started="initialization failed" not in log_text,
                client_alive=up_ok,
                initiate_error=None,
                children=children,
                traffic=traffic,
                backend=world.cell["backend"],
                loaded_plugins=_loaded_plugins(log_text),
            )
        )

    # -- building ---------------------------------------------------------------

    def _world(self, run_id: str, runtime_dir: str, label: str) -> GuestWorld:
        short = hashlib.sha1(label.encode()).hexdigest()[:8]
        prefix = runid.namespace_prefix(run_id)
        names = {role: f"{prefix}{short}-{role}" for role in LINUX_ROLES}
        names["guest"] = f"{prefix}{short}-guest"
        nodes = {
            role: NetnsNode(role=role, run_id=run_id, netns=names[role])
            for role in LINUX_ROLES
        }
        world = GuestWorld(
            None, nodes, None, None, os.path.join(runtime_dir, short), names
        )
        os.makedirs(world.runtime_dir, exist_ok=True)
        return world

    def _build_linux_side(self, world: GuestWorld, nat: str) -> None:
        names = world.names
        for role in LINUX_ROLES:
            netns.create(names[role])
        for link in topology.CELL.links:
            if link.a in LINUX_ROLES and link.b in LINUX_ROLES:
                netns.add_veth(names[link.a], link.a_if, names[link.b], link.b_if)
                netns.add_address(names[link.a], link.a_if, link.a_cidr)
                netns.add_address(names[link.b], link.b_if, link.b_cidr)
        world.relay = self._start_relay(world)
        netns.add_address(names["wan"], WAN_LINK.a_if, WAN_LINK.a_cidr)
        for route in topology.routes_for(nat):
            if route.node in LINUX_ROLES:
                netns.add_route(names[route.node], route.to, route.via)
        for role in ("gw", "wan"):
            netns.enable_forwarding(names[role])

    def _start_relay(self, world: GuestWorld) -> Process:
        listen, peer = _free_udp_port(), _free_udp_port()
        world.relay_ports = (listen, peer)
        local = _Local(role="relay", run_id=runid.run_of_namespace(world.names["wan"]))
        process = local.spawn(
            relay_argv(world.names["wan"], WAN_LINK.a_if, listen, peer),
            log_path=os.path.join(world.runtime_dir, "relay.log"),
        )
        wait_until(lambda: _relay_ready(process), 10, "wan relay: tap ready")
        command.run(
            ["ip", "-n", world.names["wan"], "link", "set", WAN_LINK.a_if, "up"]
        )
        return process

    def _boot_guest(self, world: GuestWorld, cell: Cell) -> None:
        if self._hypervisor.name == "bhyve":
            raise RuntimeError(
                "FreeBSD cells need the responder's Linux namespaces: run them on "
                "a Linux host with QEMU (--hypervisor qemu or libvirt:<uri>)"
            )
        layer = self.provisioned_layer(cell["freebsd"], cell["strongswan"])
        world.overlay = os.path.join(disks.OVERLAY_DIR, f"{world.names['guest']}.qcow2")
        disks.overlay(str(layer), world.overlay, "qcow2")
        port = vm_hypervisor.free_port()
        nics = [_mgmt_nic(port)]
        if world.relay_ports is not None:
            nics.append(_wan_nic(*world.relay_ports))
        world.guest = self._hypervisor.start(
            self._spec(world.names["guest"], world.overlay, "qcow2", nics, world)
        )
        host = self._login(world.guest, port, "root", "host")
        world.nodes["host"] = host
        fp.run_steps(host, fp.module_steps(cell["ipsec"].removeprefix("ipsec-")))

    def _spec(self, name, disk, disk_format, nics, world, seed_iso=None) -> VmSpec:
        return VmSpec(
            name=name,
            memory_mib=self.settings.memory_mib,
            cpus=self.settings.cpus,
            disk=disk,
            disk_format=disk_format,
            seed_iso=seed_iso,
            nics=tuple(nics),
            console_log=os.path.join(world.runtime_dir, f"{name}.console.log"),
        )

    def _login(self, guest, port: int, user: str, role: str) -> SSHNode:
        timeout = resolve_accel("auto").scaled(BOOT_SECONDS)
        return wait_for_ssh(
            guest, "127.0.0.1", port, user, str(self.key_path()), timeout, role=role
        )

    def _build_guest_side(self, world: GuestWorld, cell: Cell) -> None:
        host = world.node("host")
        _copy_guest_files(host)
        fp.run_steps(host, fp.devfs_steps(cell["devfs"]))
        jail = jail_kind(cell)
        steps = fp.jail_link_steps(jail, JAIL_LINK.a_cidr)
        if cell["client"] != "probe":
            gateway = WAN_LINK.a_cidr.split("/")[0]
            steps = fp.wan_steps(WAN_LINK.b_cidr, gateway) + steps
        fp.run_steps(host, steps)
        if cell["client"] != "probe":
            self._load_pf(host, cell)
        if jail != "none":
            self._make_jail(world, jail, jail_devfs(cell))

    def _load_pf(self, host: SSHNode, cell: Cell) -> None:
        steps = [fp.write_file_step(fp.PF_CONF, fp.render_pf_conf())]
        if cell["client"] == "charon":
            service = topology.JAIL_SERVICE
            anchor = fp.render_anchor(
                cell["nat"], topology.JAIL_NETWORK, service.address, service.port
            )
            steps.append(fp.write_file_step(fp.ANCHOR_FILE, anchor))
        fp.run_steps(host, steps + fp.pf_steps(with_anchor=len(steps) > 1))

    def _make_jail(self, world: GuestWorld, isolation: str, devfs: str) -> None:
        host = world.node("host")
        root = fp.jail_root()
        address = JAIL_LINK.b_cidr.split("/")[0]
        fp.run_steps(
            host,
            [
                *fp.jail_root_steps(root),
                fp.write_file_step(fp.JAIL_FSTAB, fp.render_fstab(root)),
                fp.write_file_step(
                    fp.JAIL_CONF, fp.render_jail_conf(isolation, devfs, root, address)
                ),
                fp.jail_create_step(),
            ],
        )
        jail = JailNode(host, fp.JAIL, root)
        world.nodes["jail"] = jail
        if isolation == "vnet":
            fp.run_steps(
                jail,
                fp.vnet_jail_network_steps(
                    JAIL_LINK.b_cidr, JAIL_LINK.a_cidr.split("/")[0]
                ),
            )

    def _responder_stack(self, world: GuestWorld) -> Stack:
        node = world.node("gw")
        run_dir = os.path.join(world.runtime_dir, "gw")
        holder = sandbox.start(node, run_dir, "tun-visible")
        node.sandbox_pid = holder.pid
        stack = Stack(node, run_dir, "tun-visible")
        world.stacks["gw"] = stack
        return stack

    def _client_stack(self, world: GuestWorld, cell: Cell) -> Stack:
        role = "host" if cell["isolation"] == "host" else "jail"
        node = world.node(role)
        node.run(["mkdir", "-p", STACK_RUN])
        run_dir = os.path.join(world.runtime_dir, role)
        os.makedirs(run_dir, exist_ok=True)
        stack = Stack(node, run_dir, cell["devfs"])
        world.stacks[role] = stack
        return stack

    def _stop_guest(self, world: World) -> list[str]:
        guest = getattr(world, "guest", None)
        problems = []
        if guest is not None:
            try:
                guest.stop(timeout=60)
            except Exception as exc:  # the overlay goes anyway
                problems.append(f"{guest.name}: stopping: {exc}")
        overlay = getattr(world, "overlay", "")
        if overlay and os.path.exists(overlay):
            os.remove(overlay)
        return problems

    # -- layers -----------------------------------------------------------------

    def key_path(self) -> Path:
        """The lab's SSH key for guests, made once and kept in the cache."""
        path = self.settings.folder / "keys" / "lab_ed25519"
        if not path.exists():
            generate_key(str(path), "vjlab-freebsd")
        return path

    def public_key(self) -> str:
        return Path(f"{self.key_path()}.pub").read_text().strip()

    def provisioned_layer(self, version: str, build: str) -> Path:
        """The provisioned layer of *version* with strongSwan *build*.

        Keyed on the release image and the provisioning commands, so a
        second run reuses it and any change makes a new one.
        """
        image = self.settings.images[version]
        branch = fp.ports_branch(self.settings.today) if build == "ports" else ""
        plan = fp.provision_plan(_login_kind(image), self.public_key(), build)
        key = disks.layer_key(
            "freebsd-provisioned", _image_identity(image), build, branch,
            fp.plan_text(plan),
        )  # fmt: skip
        layer = self.settings.folder / "layers" / f"{version}-{build}-{key}.qcow2"
        if layer.exists():
            log.info("FreeBSD %s (%s): reusing %s", version, build, layer)
            return layer
        self._provision(image, build, branch, layer)
        return layer

    def _provision(
        self, image: images.Image, build: str, branch: str, layer: Path
    ) -> None:
        run_id = runid.new_run_id()
        name = f"{runid.namespace_prefix(run_id)}provision-{image.version}-{build}"
        scratch = os.path.join(disks.OVERLAY_DIR, f"{name}.qcow2")
        folder = runid.runtime_dir(run_id)
        os.makedirs(folder, exist_ok=True)
        disks.overlay(str(image.path), scratch, image.format)
        world = GuestWorld(None, {}, None, None, folder)
        try:
            self._provision_guest(image, build, branch, name, scratch, world)
        except Exception:
            if os.path.exists(scratch):
                os.remove(scratch)
            raise
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        layer.parent.mkdir(parents=True, exist_ok=True)
        os.replace(scratch, layer)

    def _provision_guest(self, image, build, branch, name, scratch, world) -> None:
        port = vm_hypervisor.free_port()
        seed_iso = self._seed(image, name, world.runtime_dir)
        spec = self._spec(name, scratch, "qcow2", [_mgmt_nic(port)], world, seed_iso)
        guest = self._hypervisor.start(spec)
        try:
            if self._first_login(guest, image, port, spec):
                # firstboot-freebsd-update asked rc for a reboot: make it one
                # we control, on the same disk (nuageinit does not run again).
                guest.stop(timeout=120)
                guest = self._hypervisor.start(spec)
            root = self._login(guest, port, "root", "provision")
            self._provision_root(root, image, build, branch)
        except command.CommandError as exc:
            raise RuntimeError(f"{name}: {exc}; {PROVISION_HINT}") from exc
        finally:
            guest.stop(timeout=120)

    def _seed(self, image: images.Image, name: str, folder: str) -> str | None:
        if _login_kind(image) != "cloudinit":
            return None
        path = os.path.join(folder, f"{name}-seed.iso")
        seed.build_seed_iso(
            path,
            fp.nuageinit_user_data(self.public_key()),
            fp.nuageinit_meta_data(name[-60:].strip("-.") or "vjlab"),
        )
        return path

    def _first_login(self, guest, image, port: int, spec: VmSpec) -> bool:
        """Root by key from the first login; whether a reboot is pending."""
        login = _login_kind(image)
        if login == "empty-root":
            first = _empty_password_login(guest, port, spec)
        else:
            first = self._login(guest, port, fp.login_user(login), "first-login")
        fp.run_steps(first, fp.first_boot_steps())
        fp.run_steps(first, fp.root_login_steps(login, self.public_key()))
        pending = fp.run_steps(first, [fp.reboot_pending_step()])[0].ok
        first.close()
        return pending

    def _provision_root(self, root: SSHNode, image, build: str, branch: str) -> None:
        fp.run_steps(root, fp.base_steps())
        if build == "ports":
            root.put(str(self._ports_package(root, image.version, branch)),
                     fp.GUEST_PACKAGE)  # fmt: skip
        fp.run_steps(root, fp.strongswan_steps(build))
        versions = fp.run_steps(root, fp.version_steps())
        log.info(
            "provisioned FreeBSD %s: %s",
            image.version,
            " / ".join(result.stdout.strip() for result in versions),
        )

    def _ports_package(self, root: SSHNode, version: str, branch: str) -> Path:
        """The KERNELLIBIPSEC package, built in *root* unless already kept."""
        kept = self.settings.folder / "packages" / version / branch / "strongswan.pkg"
        if kept.exists():
            return kept
        results = fp.run_steps(root, fp.ports_build_steps(branch))
        built = results[-1].stdout.strip()
        kept.parent.mkdir(parents=True, exist_ok=True)
        root.get(built, str(kept))
        return kept


VPNJAIL_DIR = f"{fp.GUEST_DIR}/vpnjail"
VPNJAIL_STATE = "/var/db/vpnjail"
VPNJAIL_PROFILE = "cell"
VPNJAIL_JAIL = f"vpnjail-{VPNJAIL_PROFILE}"
VPNJAIL_LINKS = "192.0.2.0/26"  # documentation addresses for its epairs


def vpnjail_argv(*args: str) -> list[str]:
    return [
        "env", f"PYTHONPATH={fp.GUEST_PY}", "python3", "-m", "vpnjail",
        "--profiles", f"{VPNJAIL_DIR}/profiles", "--state-dir", VPNJAIL_STATE,
        "--link-pool", VPNJAIL_LINKS, "--egress", fp.WAN_IF, *args,
    ]  # fmt: skip


def vpnjail_profile(spec, backend: str) -> dict:
    """The lab's client settings as a vpnjail profile for the lab's gateway."""
    gateway = topology.GATEWAY_ADDRESS
    return {
        "name": VPNJAIL_PROFILE,
        "gateway": gateway,
        "ike": {
            "mode": "aggressive",
            "proposals": list(spec.ike_proposals),
            "esp_proposals": list(spec.esp_proposals),
        },
        "local_id": spec.local_id.model_dump(exclude_none=True),
        "remote_id": {"type": "address", "value": gateway},
        "auth": {
            "psk": {"file": f"{VPNJAIL_DIR}/secrets/psk"},
            "xauth": {
                "user": spec.xauth.user,
                "password": {"file": f"{VPNJAIL_DIR}/secrets/xauth"},
            },
        },
        "backend": "kernel" if backend == "pfkey" else "libipsec",
        "tun": "auto",
    }


def _write_vpnjail_profile(host: SSHNode, spec, backend: str) -> None:
    import yaml

    profile = yaml.safe_dump(vpnjail_profile(spec, backend), sort_keys=False)
    steps = [
        fp.Step("vpnjail directories", ("sh", "-c", f"umask 077; mkdir -p "
                f"{VPNJAIL_DIR}/profiles {VPNJAIL_DIR}/secrets")),
        fp.write_file_step(f"{VPNJAIL_DIR}/profiles/{VPNJAIL_PROFILE}.yaml", profile),
        fp.write_file_step(f"{VPNJAIL_DIR}/secrets/psk", spec.psk + "\n"),
        fp.write_file_step(f"{VPNJAIL_DIR}/secrets/xauth", spec.xauth.password + "\n"),
        fp.Step("secrets for root only", ("chmod", "-R", "go-rwx", f"{VPNJAIL_DIR}")),
    ]  # fmt: skip
    fp.run_steps(host, steps)


def _vpnjail_log(host: SSHNode, folder: str) -> str:
    local = os.path.join(folder, "vpnjail-charon.log")
    remote = f"{VPNJAIL_STATE}/jails/{VPNJAIL_PROFILE}/var/run/charon.log"
    try:
        host.get(remote, local)
    except OSError as exc:
        log.debug("vpnjail's charon log not fetched: %s", exc)
        return ""
    with open(local, errors="replace") as src:
        return src.read()


def _start_linux_daemon(daemon, name: str) -> None:
    """The responder's charon, as lab/cell.py starts it, on Linux.

    lab.cell.start_daemon takes the system from the platform, which here is
    FreeBSD; the responder runs on Linux whatever the platform.
    """
    daemon.charon = strongswan.Charon(daemon.stack.node, daemon.stack.run_dir)
    settings = strongswan.charon_settings("linux", daemon.backend, daemon.config.charon)
    daemon.charon.write_config(settings)
    daemon.charon.start("linux")
    if not daemon.charon.running():
        log.debug("%s: the responder's charon exited during start", name)
        return
    daemon.session = vici_client.connect(daemon.charon.vici_socket)
    vici_client.load(
        daemon.session, daemon.config.conns, daemon.config.secrets, daemon.config.pools
    )
    daemon.started = True


def _loaded_plugins(log_text: str) -> str:
    for line in log_text.splitlines():
        if "loaded plugins:" in line:
            return line.split("loaded plugins:", 1)[1]
    return ""


def _installed_children(status_json: str) -> list[str]:
    try:
        entries = json.loads(status_json or "[]")
    except ValueError:
        return []
    return [
        child.get("name", "?")
        for entry in entries
        if entry.get("name") == VPNJAIL_PROFILE
        for child in entry.get("children", [])
        if child.get("state") == "INSTALLED"
    ]


def _vpnjail_traffic(host: SSHNode, gateway_name: str) -> dict[str, str | None]:
    target = topology.PROTECTED_SERVICE
    ping = host.run(
        ["jexec", VPNJAIL_JAIL, "ping", "-c", "2", "-i", "0.2", "-W", "2000",
         target.address], check=False, timeout=15,
    )  # fmt: skip
    token = os.urandom(4).hex()
    expect = f"{gateway_name}-lan {token}"
    ask = host.run(
        ["jexec", VPNJAIL_JAIL, "sh", "-c",
         f"printf '%s\\n' {token} | nc -w 5 {target.address} {target.port}"],
        check=False, timeout=15,
    )  # fmt: skip
    return {
        "ping": None if ping.ok else f"{VPNJAIL_JAIL}: no ping replies",
        "tcp": None
        if ask.stdout.strip() == expect
        else f"{VPNJAIL_JAIL}: TCP to {target.address}:{target.port} expected "
        f"'{expect}', got '{ask.stdout.strip() or ask.stderr.strip()}'",
    }


AF_KEY_ARGV = ["python3", "-c", "import socket; socket.socket(15, 3, 2).close()"]


def _answer(node: Node, argv: list[str], what: str) -> dict:
    result = node.run(argv, check=False)
    detail = what if result.ok else f"{what}: {(result.stderr or 'no').strip()}"
    return {"value": result.ok, "detail": detail}


def _client_node(world: World) -> Node:
    """Where the cell's client runs: the guest's own stack, or the jail."""
    if world.cell["isolation"] == "host" or "jail" not in world.nodes:
        return world.nodes["host"]
    return world.nodes["jail"]


def jail_kind(cell: Cell) -> str:
    """The jail a cell needs: its client's, one for the forwarded service
    when the client runs in the host stack, or none (vpnjail makes its own).
    """
    if cell["client"] == "vpnjail" or (
        cell["client"] == "probe" and cell["isolation"] == "host"
    ):
        return "none"
    return "vnet" if cell["isolation"] == "host" else cell["isolation"]


def jail_devfs(cell: Cell) -> str:
    # The service jail of a host-stack cell gets the vnet jail's ruleset.
    return "rs5" if cell["isolation"] == "host" else cell["devfs"]


def _login_kind(image: images.Image) -> str:
    return images.load_manifest().flavours[image.flavour].login


def _image_identity(image: images.Image) -> str:
    if image.digest:
        return f"sha512:{image.digest}"
    stat = os.stat(image.path)
    return f"{image.path}:{stat.st_size}:{int(stat.st_mtime)}"


def _mgmt_nic(port: int) -> Nic:
    return Nic(kind="user", forwards=((port, 22),), net=MGMT_NET)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wan_nic(listen: int, peer: int) -> Nic:
    # QEMU sends to the relay's port and listens on its own.
    return Nic(kind="socket", name=f"udp=127.0.0.1:{listen},localaddr=127.0.0.1:{peer}")


class EmptyPasswordNode(SSHNode):
    """BASIC-CI's first login: root with an empty password, used once to
    install the lab's key; sshd is locked down right after."""

    def connect(self, timeout: float = 10.0) -> None:
        import paramiko

        self.close()
        client = paramiko.SSHClient()
        # Only ever a 127.0.0.1 port forwarded to a guest of this run.
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect(
                self.host, port=self.port, username=self.user, password="",
                look_for_keys=False, allow_agent=False, timeout=timeout,
                banner_timeout=timeout, auth_timeout=timeout,
            )  # fmt: skip
        except Exception:
            client.close()
            raise
        self._client = client


def _empty_password_login(guest, port: int, spec: VmSpec) -> SSHNode:
    import paramiko

    node = EmptyPasswordNode("first-login", spec.run_id, "127.0.0.1", port, "root", "")
    timeout = resolve_accel("auto").scaled(BOOT_SECONDS)

    def logged_in() -> str | None:
        if not guest.alive():
            raise RuntimeError(f"{guest.name} exited:\n{guest.console_tail(20)}")
        try:
            node.connect()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    wait_until(logged_in, timeout, f"{guest.name}: root login, empty password", 1.0)
    return node


def _copy_guest_files(host: SSHNode) -> None:
    files = guest_files()
    host.run(["mkdir", "-p", *sorted({os.path.dirname(g) for _, g in files})])
    for local, remote in files:
        host.put(local, remote)


def guest_files() -> list[tuple[str, str]]:
    """(local, guest) paths of the lab's modules that run in the guest.

    lab.service (the TCP checks), pfkey (the probe, as a top-level package
    as its documentation runs it) and vpnjail; all need only python3 and,
    for vpnjail, the packages provisioning installs.
    """
    files = [(str(REPO / path), f"{fp.GUEST_PY}/{path}") for path in GUEST_MODULES]
    for package, source in GUEST_PACKAGES.items():
        top = REPO / source
        for path in sorted(top.rglob("*")):
            if path.is_file() and path.suffix in (".py", ".rc", ".yaml", ".conf"):
                relative = path.relative_to(top).as_posix()
                files.append((str(path), f"{fp.GUEST_PY}/{package}/{relative}"))
    return files


def reported_cell(versions: list[str]) -> Cell:
    """The cell of the public report, on the newest release given."""
    axes = (
        ("freebsd", versions[-1] if versions else "15.0"),
        ("strongswan", "pkg"),
        ("client", "charon"),
        ("isolation", "vnet"),
        ("backend", "pfkey"),
        ("devfs", "rs5"),
        ("ipsec", "ipsec-unloaded"),
        ("nat", "pf"),
        ("auth", "good"),
    )
    return Cell("freebsd", axes)


def probe_outcome(returncode: int, report: dict | None, stderr: str) -> Outcome:
    """The probe's answer in the lab's outcome words.

    The baseline ADD is shaped like strongSwan's: accepted means the kernel
    would install the SA (``UP(<verdict>)``), refused gives its errno.
    """
    if returncode == 3:
        return Outcome("KERNEL_IPSEC_UNAVAILABLE", "socket", stderr.strip())
    if returncode == 4:
        return Outcome("KERNEL_IPSEC_UNAVAILABLE", "capability", stderr.strip())
    if report is None:
        return Outcome("ERROR", "", f"the probe gave no report: {stderr.strip()}")
    verdict = report.get("verdict", {})
    baseline = next(
        (s for s in report.get("steps", []) if s.get("variant") == "baseline"), {}
    )
    deciding = tuple(("client", reason) for reason in verdict.get("reasons", []))
    summary = verdict.get("summary", "")
    if baseline.get("errno") == 0:
        return Outcome("UP", verdict.get("code", ""), summary, deciding)
    name = baseline.get("errno_name") or str(baseline.get("errno", "?"))
    return Outcome("SAD_INSTALL_FAILED", name, summary, deciding)


def _delete_namespaces(world: World) -> list[str]:
    problems = []
    for role in LINUX_ROLES:
        name = world.names.get(role)
        if not name or not os.path.exists(f"/run/netns/{name}"):
            continue
        leftovers = netns.kill_members(name)
        if leftovers:
            problems.append(f"{name}: killed leftover pids {leftovers}")
        result = command.run(["ip", "netns", "delete", name], check=False)
        if not result.ok:
            problems.append(f"{name}: {result.stderr.strip()}")
    return problems


# -- the wan relay: QEMU's UDP socket <-> a tap in the wan namespace ---------------

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000
READY = "relay ready"


def relay_argv(netns_name: str, tap: str, listen: int, peer: int) -> list[str]:
    return [
        "env", f"PYTHONPATH={REPO}", sys.executable, "-m", "lab.platforms.freebsd",
        "relay", "--netns", netns_name, "--tap", tap,
        "--listen", str(listen), "--peer", str(peer),
    ]  # fmt: skip


def _relay_ready(process: Process) -> str | None:
    with open(process.log_path, errors="replace") as out:
        if READY in out.read():
            return None
    if process.exited() is not None:
        raise RuntimeError(f"wan relay exited; see {process.log_path}")
    return "relay not ready"


def tap_request(name: str) -> bytes:
    """The ifreq TUNSETIFF takes: a tap without packet information."""
    if not 0 < len(name) < 16:
        raise ValueError(f"interface name {name!r}: 1 to 15 characters")
    return struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI)


def enter_netns(name: str) -> None:
    """Move this thread into network namespace *name* (ip netns)."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/run/netns/{name}") as handle:
        if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns into {name}: {os.strerror(error)}")


def open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, tap_request(name))
    return fd


def relay(netns_name: str, tap: str, listen: int, peer: int) -> None:
    """Frames between QEMU's UDP socket (root namespace) and a wan tap.

    The socket is bound before entering the wan namespace, so it stays on
    the root namespace's loopback where QEMU is; the tap is made after, so
    it exists only in the wan namespace.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", listen))
    enter_netns(netns_name)
    fd = open_tap(tap)
    print(READY, flush=True)
    while True:
        ready, _, _ = select.select([sock, fd], [], [])
        if sock in ready:
            os.write(fd, sock.recv(65536))
        if fd in ready:
            sock.sendto(os.read(fd, 65536), ("127.0.0.1", peer))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.platforms.freebsd")
    sub = parser.add_subparsers(dest="command", required=True)
    relay_parser = sub.add_parser("relay", help="QEMU UDP socket <-> wan tap")
    relay_parser.add_argument("--netns", required=True)
    relay_parser.add_argument("--tap", required=True)
    relay_parser.add_argument("--listen", type=int, required=True)
    relay_parser.add_argument("--peer", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    relay(args.netns, args.tap, args.listen, args.peer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
