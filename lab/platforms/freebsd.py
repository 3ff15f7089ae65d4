"""The FreeBSD platform: each cell's client in a FreeBSD guest of its own.

On a Linux host (QEMU or libvirt)::

    lan ---- gw ==== wan ~~~~ [ guest: host ---- jail ]
    Linux namespaces       |   FreeBSD VM (QEMU)
                           relay: the wan's tap <-> the guest's vtnet1

The responder side is the local lab's: ``lan``, ``gw`` (the FortiGate-like
responder in a sandbox) and ``wan`` are Linux network namespaces, so on
a Linux host the responder is the same in every cell and on every
platform. ``host`` is the
guest itself (its pf NATs and forwards) and ``jail`` a classic or vnet
jail in it, per the cell's isolation; commands reach them over SSH and
``jexec``. The guest's wan NIC is a QEMU UDP socket; a relay process,
started in the root namespace, moves its frames to a tap it creates inside
the ``wan`` namespace, so the root namespace gains no interface.

A guest boots from a throw-away overlay of a provisioned layer (kept under
images/cache/freebsd/layers/, keyed by what made it), which sits on the
release image. The cell's kernel modules are loaded in the overlay only.

On a FreeBSD host under bhyve there are no namespaces and no relay::

    [ responder VM: lan, gw, wan ] ~~ bridgeN ~~ [ guest: host ---- jail ]
      FreeBSD, kernel-pfkey          per cell      FreeBSD VM (bhyve)

Each cell gets a bridge (described ``vjlab-<run>-...-wan`` so the reaper
finds it) and a responder VM (:mod:`lab.vm.responder_guest`): a second
FreeBSD guest from the same provisioned pkg layer, outside any jail, that
takes the ``lan``, ``gw`` and ``wan`` roles, answering for the wan
router's address too, so the client's configuration is the QEMU one. The
responder VM is booted per cell, not kept per platform instance: a cell
then starts from a fresh kernel whatever the last one left, and its
teardown takes everything with it. Disks are ZFS clones of kept snapshots
(:mod:`lab.vm.zfs_layers`), each guest's named with the run id and
destroyed at teardown. This path has never run on a real FreeBSD host.
"""

import contextlib
import datetime
import functools
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

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
    topology,
)
from lab.matrix import Cell
from lab.netns import NetnsNode
from lab.node import Node, Process
from lab.outcome import Outcome
from lab.platforms.base import Platform, Stack, World
from lab.vm import (
    bhyve,
    disks,
    freebsd_evidence,
    images,
    relay,
    responder_guest,
    seed,
    zfs_layers,
)
from lab.vm import freebsd_provision as fp
from lab.vm import hypervisor as vm_hypervisor
from lab.vm.accel import resolve as resolve_accel
from lab.vm.guest_charon import STACK_RUN
from lab.vm.spec import Nic, VmSpec
from lab.vm.ssh import SSHNode, generate_key, wait_for_ssh
from lab.wait import wait_until

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
LINUX_ROLES = ("lan", "gw", "wan")
MGMT_NET = "198.51.100.192/26"  # the slirp network of the management NIC
WAN_LINK = next(link for link in topology.CELL.links if link.b == "host")
JAIL_LINK = next(link for link in topology.CELL.links if link.b == "jail")
BOOT_SECONDS = 240.0  # to an SSH login under KVM; scaled under TCG
ZVOL_SECONDS = 30.0  # for a new zvol's device node to appear
WRITE_IMAGE_SECONDS = 1800.0
WRITE_LOCK_SECONDS = WRITE_IMAGE_SECONDS + 300.0
LAYER_LOCK_SECONDS = 4 * 3600.0  # a ports build runs for hours
CAPTURE_IF = topology.CAPTURE[1]  # lab/cell.py's capture, on the wan node
PROVISION_HINT = (
    "if pkg or git could not fetch: provisioning needs this machine to reach "
    "pkg.FreeBSD.org (and git.FreeBSD.org for the ports build) through the "
    "guest's unrestricted slirp NIC"
)
# Modules copied to the guest: stdlib only, run by the guest's python3.
GUEST_MODULES = ("lab/__init__.py", "lab/service.py")
GUEST_PACKAGES = {"pfkey": "lab/pfkey", "vpnjail": "vpnjail"}


@dataclass
class Settings:
    """Where the images, layers and keys are, and the guests' size.

    ``zfs_dataset`` (bhyve only, required there) is the ZFS file system
    the lab's zvols live under, e.g. ``zroot/vjlab``.
    """

    images: dict[str, images.Image]
    hypervisor: str | None = None
    cache: Path = images.CACHE
    memory_mib: int = 2048
    cpus: int = 2
    today: datetime.date = field(default_factory=datetime.date.today)
    zfs_dataset: str | None = None

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
    # bhyve only: the cell's bridge, the responder VM, each guest's zvol.
    bridge: str = ""
    responder_vm: object = None  # its lab.vm.hypervisor.Guest
    responder_guest: object = None  # the same as a lab.vm.responder_guest one
    volumes: dict[str, str] = field(default_factory=dict)  # guest -> zvol


class JailNode(SSHNode):
    """A jail in the guest: commands through ``jexec``, files under its root."""

    def __init__(self, host: SSHNode, jail: str, root: str, role: str = "jail"):
        super().__init__(
            role, host.run_id, host.host, host.port, host.user, host.key_path,
            host.known_host_key, host.system,
        )  # fmt: skip
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


class FreeBSDPlatform(Platform):
    name = "freebsd"
    system = "freebsd"

    def __init__(self, settings: Settings):
        self.settings = settings
        self._responder_esp: bool | None = None
        self._run_prefix = f"{runid.PREFIX}-"
        self._hypervisor = vm_hypervisor.select(settings.hypervisor)
        self._bhyve = self._hypervisor.name == "bhyve"
        if self._bhyve:
            _check_bhyve_settings(settings)
        check_local_libvirt(settings.hypervisor)

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
        # What the client's guest can do does not matter: the responder runs
        # on Linux, or under bhyve in a FreeBSD VM whose ESP configure() checks.
        if self._bhyve:
            return responder_guest.BACKENDS["freebsd"]
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
                if self._bhyve:
                    self._build_bridged_side(world, cell)
                else:
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
        problems += self._stop_responder(world)
        for process in [*getattr(world, "local", []), getattr(world, "relay", None)]:
            if process is not None:
                process.stop()
        # After the guests: their taps leave the bridge, their zvols are free.
        problems += _destroy_bridge(world)
        problems += _destroy_volumes(world)
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

    def responder_kernel_state(self, stack: Stack) -> dict[str, str]:
        # A responder VM's kernel holds its SAs; the Linux one keeps the
        # local lab's evidence (none).
        if isinstance(stack.node, SSHNode):
            return self.kernel_state(stack)
        return {}

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
        _fetch_responder_capture(world, evidence)
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
        """The responder's service and charon, as lab/cell.py starts them.

        charon comes from :meth:`charon` for the stack's node: a Linux
        charon in the gw namespace, or a GuestCharon in the responder VM.
        """
        stack = self._responder_stack(world)
        daemon = cell_runner.Daemon(
            "responder", stack,
            responder.build(config.responder, topology.GATEWAY_ADDRESS),
            self.responder_backend({}),
        )  # fmt: skip
        cell_runner.start_service(
            self, world, topology.PROTECTED_SERVICE, f"{config.responder.name}-lan"
        )
        cell_runner.start_daemon(self, daemon)
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
        if self._bhyve:
            # No namespaces: lan, gw and wan become the responder VM's node.
            names = {"responder": f"{prefix}{short}-responder",
                     "bridge": f"{prefix}{short}-wan"}  # fmt: skip
            nodes = {}
        else:
            names = {role: f"{prefix}{short}-{role}" for role in LINUX_ROLES}
            nodes = {
                role: NetnsNode(role=role, run_id=run_id, netns=names[role])
                for role in LINUX_ROLES
            }
        names["guest"] = f"{prefix}{short}-guest"
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
        world.relay_ports = (relay.free_udp_port(), relay.free_udp_port())
        return relay.start(
            runid.run_of_namespace(world.names["wan"]),
            world.names["wan"],
            WAN_LINK.a_if,
            world.relay_ports,
            os.path.join(world.runtime_dir, "relay.log"),
        )

    def _build_bridged_side(self, world: GuestWorld, cell: Cell) -> None:
        """bhyve: the cell's bridge and the responder VM on it."""
        self._create_bridge(world)
        self._boot_responder(world, cell)

    def _create_bridge(self, world: GuestWorld) -> str:
        where = world.names["bridge"]
        bridge = command.run(bhyve.bridge_create_argv(), where=where).stdout.strip()
        if not bridge.startswith("bridge"):
            raise RuntimeError(
                f"{where}: `ifconfig bridge create` expected a bridge name, "
                f"got {bridge!r}"
            )
        world.bridge = bridge  # so teardown destroys it even if the rest fails
        for argv in bhyve.bridge_commands(bridge, where):
            command.run(argv, where=where)
        log.info("%s: %s up", where, bridge)
        return bridge

    def _boot_guest(self, world: GuestWorld, cell: Cell) -> None:
        port = vm_hypervisor.free_port()
        nics = [self._mgmt_nic(port)]
        name = world.names["guest"]
        if self._bhyve:
            build = cell["strongswan"]
            disk = self._guest_volume(world, name, cell["freebsd"], build)
            disk_format = "raw"
            if world.bridge:
                nics.append(Nic(kind="bridge", name=world.bridge))
        else:
            layer = self.provisioned_layer(cell["freebsd"], cell["strongswan"])
            world.overlay = os.path.join(disks.OVERLAY_DIR, f"{name}.qcow2")
            disks.overlay(str(layer), world.overlay, "qcow2")
            disk, disk_format = world.overlay, "qcow2"
            if world.relay_ports is not None:
                nics.append(_wan_nic(*world.relay_ports))
        world.guest = self._hypervisor.start(
            self._spec(name, disk, disk_format, nics, world)
        )
        host = self._login(world.guest, port, "root", "host")
        world.nodes["host"] = host
        fp.run_steps(host, fp.module_steps(cell["ipsec"].removeprefix("ipsec-")))

    def _boot_responder(self, world: GuestWorld, cell: Cell) -> None:
        """bhyve: a FreeBSD guest from the pkg layer as lan, gw and wan.

        Its wan NIC carries responder_guest.WAN_MAC, which configure() looks
        for; it is renamed to lab.topology's capture interface because
        lab/cell.py captures there, on the ``wan`` node, which is this VM.
        """
        name = world.names["responder"]
        port = vm_hypervisor.free_port()
        disk = self._guest_volume(world, name, cell["freebsd"], "pkg")
        wan = Nic(kind="bridge", name=world.bridge, mac=responder_guest.WAN_MAC)
        world.responder_vm = self._hypervisor.start(
            self._spec(name, disk, "raw", [self._mgmt_nic(port), wan], world)
        )
        node = self._login(world.responder_vm, port, "root", "gw")
        _name_wan(node, CAPTURE_IF)
        # charon's config goes to /run; lab/cell.py's capture writes its pcap
        # to the same path as here, so that directory must exist there too.
        node.run(["mkdir", "-p", STACK_RUN, world.runtime_dir])
        guest = responder_guest.ResponderGuest(
            node, with_wan=True, stop=functools.partial(self._stop_responder, world)
        )
        guest.configure()
        guest.reset(cell["nat"])
        world.responder_guest = guest
        for role in LINUX_ROLES:
            world.nodes[role] = node
        log.info("%s: responder VM up, wan NIC %s", name, guest.wan_if)

    def _mgmt_nic(self, port: int, outbound: bool = False) -> Nic:
        # bhyve's slirp network is fixed; it refuses another one.
        if self._bhyve:
            return Nic(kind="user", forwards=((port, 22),), outbound=outbound)
        return _mgmt_nic(port, outbound)

    def _guest_volume(
        self, world: GuestWorld, name: str, version: str, build: str
    ) -> str:
        """A throw-away clone of the provisioned layer for guest *name*; its
        device."""
        source = self.provisioned_snapshot(version, build)
        volume = zfs_layers.run_volume(self.settings.zfs_dataset, name)
        for argv in zfs_layers.clone_commands(source, volume):
            command.run(argv, where=name)
        world.volumes[name] = volume
        return zvol_ready(volume)

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
        # The responder VM's charon runs in the guest's own stack (/run made
        # at boot); the Linux one in a sandbox of the gw namespace.
        if not isinstance(node, SSHNode):
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

    def _stop_responder(self, world: World) -> list[str]:
        """Power the responder VM off and destroy its clone; never raises."""
        guest = getattr(world, "responder_vm", None)
        if guest is None:
            return []
        world.responder_vm = None
        problems = []
        try:
            guest.stop(timeout=60)
        except Exception as exc:  # the clone goes anyway
            problems.append(f"{guest.name}: stopping: {exc}")
        volume = world.volumes.pop(guest.name, None)
        return problems + (_destroy_volume(guest.name, volume) if volume else [])

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
        image, branch, key = self._layer_inputs(version, build)
        layer = self.settings.folder / "layers" / f"{version}-{build}-{key}.qcow2"
        if layer.exists():
            log.info("FreeBSD %s (%s): reusing %s", version, build, layer)
            return layer
        self._provision(image, build, branch, layer)
        return layer

    def _layer_inputs(self, version: str, build: str) -> tuple[images.Image, str, str]:
        """The image, ports branch and layer key of a provisioned layer."""
        image = self.settings.images[version]
        branch = fp.ports_branch(self.settings.today) if build == "ports" else ""
        plan = fp.provision_plan(_login_kind(image), self.public_key(), build)
        key = disks.layer_key(
            "freebsd-provisioned", _image_identity(image), build, branch,
            fp.plan_text(plan),
        )  # fmt: skip
        return image, branch, key

    def provisioned_snapshot(self, version: str, build: str) -> str:
        """bhyve: the provisioned layer as a ZFS snapshot, keyed like the qcow2
        one; a second run finds it and reuses it."""
        image, branch, key = self._layer_inputs(version, build)
        dataset = self.settings.zfs_dataset
        layer = zfs_layers.layer_volume(dataset, version, build, key)
        kept = zfs_layers.snapshot(layer, zfs_layers.LAYER_SNAPSHOT)
        if _zfs_exists(kept):
            log.info("FreeBSD %s (%s): reusing %s", version, build, kept)
            return kept
        _check_dataset_exists(dataset)
        # One process builds it; a second one waiting here then finds it made.
        with disks.locked(self._lock(f"{version}-{build}-{key}"), LAYER_LOCK_SECONDS):
            if not _zfs_exists(kept):
                base = self._base_snapshot(image)
                self._provision_zfs(image, build, branch, base, layer)
        return kept

    def _lock(self, name: str) -> str:
        return str(self.settings.folder / "layers" / f"{name}.zfs.lock")

    def _base_snapshot(self, image: images.Image) -> str:
        """The release image written into a zvol, snapshotted; made once."""
        size = zfs_layers.volume_size(
            zfs_layers.image_bytes(str(image.path), image.format)
        )
        key = disks.layer_key("freebsd-base", _image_identity(image), size)
        base = zfs_layers.base_volume(self.settings.zfs_dataset, image.version, key)
        kept = zfs_layers.snapshot(base, zfs_layers.BASE_SNAPSHOT)
        # Both builds of a release share it: one writes it, the other waits.
        lock = self._lock(f"{image.version}-base-{key}")
        with disks.locked(lock, WRITE_LOCK_SECONDS):
            if not _zfs_exists(kept):
                self._write_base(image, size, base)
        return kept

    def _write_base(self, image: images.Image, size: str, base: str) -> None:
        if image.format == "qcow2" and shutil.which(disks.QEMU_IMG) is None:
            raise RuntimeError(
                f"{image.path}: a qcow2 image goes into a zvol through qemu-img, "
                "which is not installed: install it, or give a raw image (--image)"
            )
        run_id = runid.new_run_id()
        name = f"{runid.namespace_prefix(run_id)}base-{image.version}"
        scratch = zfs_layers.run_volume(self.settings.zfs_dataset, name)
        command.run(zfs_layers.create_argv(scratch, size), where=name)
        try:
            command.run(
                zfs_layers.write_image_argv(
                    str(image.path), image.format, zvol_ready(scratch)
                ),
                where=name,
                timeout=WRITE_IMAGE_SECONDS,
            )
            for argv in zfs_layers.publish_commands(
                scratch, base, zfs_layers.BASE_SNAPSHOT
            ):
                command.run(argv, where=name)
        except Exception:
            _destroy_volume(name, scratch)
            raise
        log.info("FreeBSD %s: release image in %s", image.version, base)

    def _provision(
        self, image: images.Image, build: str, branch: str, layer: Path
    ) -> None:
        with _provisioning(image, build) as (name, world):
            scratch = os.path.join(disks.OVERLAY_DIR, f"{name}.qcow2")
            disks.overlay(str(image.path), scratch, image.format)
            try:
                self._provision_guest(
                    image, build, branch, name, scratch, "qcow2", world
                )
            except Exception:
                if os.path.exists(scratch):
                    os.remove(scratch)
                raise
        layer.parent.mkdir(parents=True, exist_ok=True)
        os.replace(scratch, layer)

    def _provision_zfs(
        self, image: images.Image, build: str, branch: str, base: str, layer: str
    ) -> None:
        """Provision a run-tagged clone of *base*, then publish it as *layer*."""
        with _provisioning(image, build) as (name, world):
            scratch = zfs_layers.run_volume(self.settings.zfs_dataset, name)
            try:
                for argv in zfs_layers.clone_commands(base, scratch):
                    command.run(argv, where=name)
                disk = zvol_ready(scratch)
                self._provision_guest(image, build, branch, name, disk, "raw", world)
                for argv in zfs_layers.publish_commands(
                    scratch, layer, zfs_layers.LAYER_SNAPSHOT
                ):
                    command.run(argv, where=name)
            except Exception:
                _destroy_volume(name, scratch)
                raise

    def _provision_guest(
        self, image, build, branch, name, disk, disk_format, world
    ) -> None:
        port = vm_hypervisor.free_port()
        seed_iso = self._seed(image, name, world.runtime_dir)
        # Only this boot may leave the machine: pkg and git fetch from
        # FreeBSD's servers. Cells boot with the restricted NIC.
        nics = [self._mgmt_nic(port, outbound=True)]
        spec = self._spec(name, disk, disk_format, nics, world, seed_iso)
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


@contextlib.contextmanager
def _provisioning(image: images.Image, build: str):
    """A run of its own for one provisioning boot: its guest name and world."""
    run_id = runid.new_run_id()
    name = f"{runid.namespace_prefix(run_id)}provision-{image.version}-{build}"
    folder = runid.runtime_dir(run_id)
    os.makedirs(folder, exist_ok=True)
    try:
        yield name, GuestWorld(None, {}, None, None, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def check_local_libvirt(hypervisor: str | None) -> None:
    """A guest on another libvirt host is out of reach of this machine's wan
    namespace (its relay) and of its SSH forward on 127.0.0.1 there."""
    if not hypervisor or not hypervisor.startswith("libvirt:"):
        return
    host = urlparse(hypervisor.removeprefix("libvirt:")).hostname
    if host:
        raise ValueError(
            f"--hypervisor/--vm-hosts {hypervisor}: FreeBSD cells need their "
            "guests on this machine (wan relay, SSH on 127.0.0.1); give a local "
            "libvirt URI, or run the lab on that host"
        )


def _mgmt_nic(port: int, outbound: bool = False) -> Nic:
    return Nic(kind="user", forwards=((port, 22),), net=MGMT_NET, outbound=outbound)


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


def _check_bhyve_settings(settings: Settings) -> None:
    check_bhyve_settings(settings.zfs_dataset)


def check_bhyve_settings(zfs_dataset: str | None) -> None:
    """A one-line ValueError unless bhyve can run here on *zfs_dataset*."""
    if not zfs_dataset:
        raise ValueError(
            "--hypervisor bhyve needs --zfs-dataset POOL/DATASET for the guests' "
            "zvols (bhyve reads no qcow2): e.g. `zfs create -o mountpoint=none "
            "zroot/vjlab`, then --zfs-dataset zroot/vjlab"
        )
    zfs_layers.check_dataset(zfs_dataset)
    # Before anything is made: a bridge per cell would come and go for
    # nothing on a host without bhyve or without the dataset.
    problem = vm_hypervisor.select("bhyve").unavailable()
    if problem:
        raise ValueError(f"--hypervisor bhyve: {problem}")
    try:
        _check_dataset_exists(zfs_dataset)
    except RuntimeError as exc:
        raise ValueError(str(exc)) from None


def _check_dataset_exists(dataset: str) -> None:
    if not _zfs_exists(dataset):
        raise RuntimeError(
            f"--zfs-dataset {dataset}: no such ZFS dataset; create it with "
            f"`zfs create -o mountpoint=none {dataset}`"
        )


def zvol_ready(volume: str) -> str:
    """The device of *volume*, once it exists.

    A zvol's device node may appear after ``zfs create``/``zfs clone``
    return; bhyve and dd need it there.
    """
    path = disks.zvol(volume)
    wait_until(
        lambda: None if os.path.exists(path) else f"{path} not there yet",
        ZVOL_SECONDS,
        f"{volume}: zvol device",
        interval=0.5,
    )
    return path


def _zfs_exists(name: str) -> bool:
    return command.run(zfs_layers.exists_argv(name), where="zfs", check=False).ok


def _destroy_volume(where: str, volume: str) -> list[str]:
    problems = []
    for argv in zfs_layers.destroy_commands(volume):
        result = command.run(argv, where=where, check=False)
        if not result.ok:
            problems.append(_failed(result))
    return problems


def _failed(result: command.Result) -> str:
    return (
        f"{result.where}: `{result.command}` expected exit status 0, got "
        f"{result.returncode}: {(result.stderr or result.stdout).strip()}"
    )


def _destroy_volumes(world: World) -> list[str]:
    """Every guest's clone still left: the client's, or a half-booted one's."""
    volumes = getattr(world, "volumes", {})
    problems = []
    for name, volume in list(volumes.items()):
        problems += _destroy_volume(name, volume)
        del volumes[name]
    return problems


def _destroy_bridge(world: World) -> list[str]:
    bridge = getattr(world, "bridge", "")
    if not bridge:
        return []
    world.bridge = ""
    result = command.run(
        bhyve.bridge_destroy_argv(bridge), where=world.names["bridge"], check=False
    )
    return [] if result.ok else [_failed(result)]


def _name_wan(node: SSHNode, name: str) -> None:
    """Rename the responder VM's wan NIC (found by its MAC) to *name*."""
    listing = node.run(responder_guest.listing_argv(node.system)).stdout
    current = responder_guest.interface_with_mac(
        node.system, listing, responder_guest.WAN_MAC
    )
    if current != name:
        node.run(["ifconfig", current, "name", name])


def _fetch_responder_capture(world: World, evidence) -> None:
    """bhyve: lab/cell.py's wan capture ran in the responder VM; fetch it."""
    guest = getattr(world, "responder_guest", None)
    if guest is None or world.cell["client"] != "charon":
        return
    remote = os.path.join(world.runtime_dir, "wan.pcap")
    try:
        guest.node.get(remote, os.path.join(evidence.path, "wan.pcap"))
    except OSError as exc:
        log.debug("%s: wan capture not fetched: %s", guest.node.label, exc)


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
