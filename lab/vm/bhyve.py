"""bhyve on FreeBSD hosts: one ``bhyve`` process per guest.

Flags follow bhyve(8): ``-A`` (ACPI tables; a no-op where bhyve always
builds them, required by older releases), ``-H`` (yield on HLT), ``-P``
(exit on PAUSE), ``-D`` (destroy the VM on guest power-off), a virtio-blk
disk (bhyve reads raw images and zvols, never qcow2), the seed on an
AHCI CD, a virtio RNG and virtio NICs on taps or on bhyve's slirp, which
is always restricted and forwards ``proto:hostaddr:hostport-:guestport``
rules separated by ``;``. UEFI boots from
/usr/local/share/uefi-firmware/BHYVE_UEFI.fd; "bios" means FreeBSD's
loader through ``bhyveload``. COM1 is an nmdm(4) pair whose B side a
thread copies into the console log. SIGTERM asks for an ACPI power-off;
``bhyvectl --destroy`` ends what is left.
"""

import logging
import os
import platform
import select
import shutil
import signal
import subprocess
import threading
import tty

from lab import command, runid
from lab.vm import accel as vm_accel
from lab.vm.hypervisor import Guest, GuestError, Hypervisor, spawn_tagged
from lab.vm.spec import Nic, SpecError, VmSpec

log = logging.getLogger(__name__)

BHYVE = "/usr/sbin/bhyve"
BHYVECTL = "/usr/sbin/bhyvectl"
BHYVELOAD = "/usr/sbin/bhyveload"
IFCONFIG = "/sbin/ifconfig"
UEFI_FIRMWARE = "/usr/local/share/uefi-firmware/BHYVE_UEFI.fd"
VMM_DIR = "/dev/vmm"
FIRST_NIC_SLOT = 5
HARDWARE = vm_accel.Accel("vmm", "bhyve always runs on vmm(4)", 1.0)


def console_devices(name: str) -> tuple[str, str]:
    """The nmdm(4) pair for guest *name*: bhyve's A side, the reader's B."""
    return f"/dev/nmdm-{name}A", f"/dev/nmdm-{name}B"


def bhyve_argv(spec: VmSpec, console: str, taps: list[str | None]) -> list[str]:
    """bhyve's command line; *taps* has one tap name per non-user NIC."""
    _check(spec)
    argv = [BHYVE, "-A", "-H", "-P", "-D", "-c", str(spec.cpus)]
    argv += ["-m", f"{spec.memory_mib}M"]
    argv += ["-s", "0:0,hostbridge", "-s", "1:0,lpc"]
    argv += ["-s", f"2:0,virtio-blk,{spec.disk}"]
    if spec.seed_iso:
        argv += ["-s", f"3:0,ahci-cd,{spec.seed_iso}"]
    argv += ["-s", "4:0,virtio-rnd"]
    pending = iter(taps)
    for index, nic in enumerate(spec.nics):
        backend = _slirp(nic) if nic.kind == "user" else next(pending)
        device = f"{FIRST_NIC_SLOT + index}:0,virtio-net,{backend}"
        if nic.mac:
            device += f",mac={nic.mac}"
        argv += ["-s", device]
    argv += ["-l", f"com1,{console}"]
    if spec.firmware == "uefi":
        argv += ["-l", f"bootrom,{UEFI_FIRMWARE}"]
    return argv + [spec.name]


def _check(spec: VmSpec) -> None:
    if spec.disk_format != "raw":
        raise SpecError(
            f"{spec.name}: bhyve reads raw images and zvols, not {spec.disk_format}: "
            "`qemu-img convert -O raw`, or a zvol clone (disks.zfs_clone_commands)"
        )
    if spec.kernel:
        raise SpecError(
            f"{spec.name}: bhyve has no direct kernel boot; boot the disk instead"
        )
    for nic in spec.nics:
        if nic.kind == "socket":
            raise SpecError(f"{spec.name}: bhyve has no socket NICs; use a tap")
        if nic.kind == "user" and nic.net:
            raise SpecError(
                f"{spec.name}: bhyve's slirp network is fixed (10.0.2.0/24); "
                f"drop net={nic.net}"
            )


def _slirp(nic: Nic) -> str:
    # bhyve's slirp is restricted unless told ``open``; that option is in
    # the slirp helper of FreeBSD 15 and not in 14's backend, where a
    # provisioning guest needs a tap on a bridge with the host's NAT.
    options = ["slirp"] + (["open"] if nic.outbound else [])
    rules = ";".join(f"tcp:127.0.0.1:{h}-:{g}" for h, g in nic.forwards)
    if rules:
        options.append(f"hostfwd={rules}")
    return ",".join(options)


def bhyveload_argv(spec: VmSpec, console: str) -> list[str]:
    """FreeBSD's loader, run before bhyve when the firmware is "bios"."""
    return [
        BHYVELOAD,
        "-c",
        console,
        "-m",
        f"{spec.memory_mib}M",
        "-d",
        spec.disk,
        spec.name,
    ]


def destroy_argv(name: str) -> list[str]:
    return [BHYVECTL, "--destroy", f"--vm={name}"]


def tap_commands(tap: str, guest: str, bridge: str | None) -> list[list[str]]:
    """Describe *tap* with the guest's name (so leftovers finds it), up it."""
    commands = [
        [IFCONFIG, tap, "description", guest],
        [IFCONFIG, tap, "up"],
    ]
    if bridge:
        commands.append([IFCONFIG, bridge, "addm", tap])
    return commands


def bridge_create_argv() -> list[str]:
    """``ifconfig bridge create``: prints the new bridge's name (ifconfig(8))."""
    return [IFCONFIG, "bridge", "create"]


def bridge_commands(bridge: str, description: str) -> list[list[str]]:
    """Describe *bridge* with a run-tagged name (so leftovers finds it), up it.

    A bridge that is down passes nothing; if_bridge(4)'s examples end in ``up``.
    """
    return [
        [IFCONFIG, bridge, "description", description],
        [IFCONFIG, bridge, "up"],
    ]


def bridge_destroy_argv(bridge: str) -> list[str]:
    return [IFCONFIG, bridge, "destroy"]


def parse_tap_descriptions(ifconfig_output: str) -> dict[str, str]:
    """{tap: description} from ``ifconfig -a`` output."""
    return parse_descriptions(ifconfig_output, "tap")


def parse_descriptions(ifconfig_output: str, kind: str) -> dict[str, str]:
    """{interface: description} of the *kind* interfaces (tap, bridge) listed."""
    found, current = {}, None
    for line in ifconfig_output.splitlines():
        if line and not line[0].isspace():
            name = line.split(":", 1)[0]
            current = name if name.rstrip("0123456789") == kind else None
        elif current and line.strip().startswith("description:"):
            found[current] = line.split("description:", 1)[1].strip()
    return found


class ConsoleReader(threading.Thread):
    """Copies the nmdm B side into the console log, in raw mode.

    Raw mode matters: a tty in its default mode would echo the guest's
    output back to the guest as input.
    """

    def __init__(self, device: str, log_path: str):
        super().__init__(name=f"console {device}", daemon=True)
        self.device = device
        self.log_path = log_path
        self.done = threading.Event()

    def run(self) -> None:
        fd = os.open(self.device, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            tty.setraw(fd)
            with open(self.log_path, "ab", buffering=0) as out:
                while not self.done.is_set():
                    ready, _, _ = select.select([fd], [], [], 0.5)
                    if ready:
                        out.write(os.read(fd, 4096))
        finally:
            os.close(fd)

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=5)


class BhyveGuest(Guest):
    def __init__(self, spec, popen, created_taps, reader):
        super().__init__(spec, HARDWARE)
        self.popen = popen
        self.created_taps = created_taps
        self.reader = reader

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM (ACPI power-off), then ``bhyvectl --destroy``."""
        if self.alive():
            self._signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.debug("[%s] no power-off after %.0fs", self.name, timeout)
        command.run(destroy_argv(self.name), where=self.name, check=False)
        if self.alive():
            self._signal(signal.SIGKILL)
            self.popen.wait(timeout=10)
        for tap in self.created_taps:
            command.run([IFCONFIG, tap, "destroy"], where=self.name, check=False)
        if self.reader is not None:
            self.reader.stop()

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass


class Bhyve(Hypervisor):
    name = "bhyve"

    def unavailable(self) -> str | None:
        if platform.system() != "FreeBSD":
            return (
                f"bhyve runs on FreeBSD hosts only (this host runs {platform.system()})"
            )
        missing = [tool for tool in (BHYVE, BHYVECTL) if not os.access(tool, os.X_OK)]
        if missing:
            return f"missing {', '.join(missing)}: install FreeBSD's base system"
        for module in ("vmm", "nmdm"):
            loaded = command.run(["kldstat", "-q", "-m", module], check=False)
            if not loaded.ok:
                return f"kernel module {module} not loaded: kldload {module}"
        return None

    def start(self, spec: VmSpec) -> BhyveGuest:
        problem = self.unavailable()
        if problem:
            raise GuestError(f"{spec.name}: cannot start: {problem}")
        if spec.firmware == "uefi" and not os.path.exists(UEFI_FIRMWARE):
            raise GuestError(
                f"{spec.name}: {UEFI_FIRMWARE} missing: pkg install edk2-bhyve"
            )
        console_a, console_b = console_devices(spec.name)
        command.run(destroy_argv(spec.name), where=spec.name, check=False)
        taps, created = self._taps(spec)
        try:
            if spec.firmware == "bios":
                command.run(
                    bhyveload_argv(spec, console_a), where=spec.name, timeout=120
                )
            popen = self._spawn(spec, bhyve_argv(spec, console_a, taps))
        except Exception:
            for tap in created:
                command.run([IFCONFIG, tap, "destroy"], where=spec.name, check=False)
            raise
        reader = (
            ConsoleReader(console_b, spec.console_log) if spec.console_log else None
        )
        if reader is not None:
            reader.start()
        return BhyveGuest(spec, popen, created, reader)

    def _taps(self, spec: VmSpec) -> tuple[list[str], list[str]]:
        """A tap per non-user NIC: the named one, or a new one we destroy later."""
        taps, created = [], []
        for nic in spec.nics:
            if nic.kind == "user":
                continue
            if nic.kind == "tap" and nic.name:
                taps.append(nic.name)
                continue
            tap = command.run([IFCONFIG, "tap", "create"], where=spec.name).stdout
            tap = tap.strip()
            created.append(tap)
            bridge = nic.name if nic.kind == "bridge" else None
            for argv in tap_commands(tap, spec.name, bridge):
                command.run(argv, where=spec.name)
            taps.append(tap)
        return taps, created

    def _spawn(self, spec: VmSpec, argv: list[str]) -> subprocess.Popen:
        state = runid.runtime_dir(spec.run_id)
        os.makedirs(state, exist_ok=True)
        output = os.path.join(state, f"{spec.name}.bhyve.log")
        return spawn_tagged(spec.name, spec.run_id, argv, output)


def tagged_vms(run_id: str | None) -> list[str]:
    """bhyve VMs (under /dev/vmm) whose names carry *run_id*, or any run id."""
    if not os.path.isdir(VMM_DIR):
        return []
    return [name for name in sorted(os.listdir(VMM_DIR)) if _ours(name, run_id)]


def tagged_taps(run_id: str | None) -> list[str]:
    """``tapN|guest`` for taps described with a guest name of *run_id*."""
    return _tagged("tap", run_id)


def tagged_bridges(run_id: str | None) -> list[str]:
    """``bridgeN|wan`` for bridges described with a name of *run_id*."""
    return _tagged("bridge", run_id)


def _tagged(kind: str, run_id: str | None) -> list[str]:
    if platform.system() != "FreeBSD" or shutil.which("ifconfig") is None:
        return []
    output = command.run([IFCONFIG, "-a"], check=False).stdout
    return [
        f"{name}|{description}"
        for name, description in parse_descriptions(output, kind).items()
        if _ours(description, run_id)
    ]


def _ours(name: str, run_id: str | None) -> bool:
    run = runid.run_of_namespace(name)
    return run is not None and run_id in (None, run)


def destroy_vm(name: str) -> None:
    command.run(destroy_argv(name), check=False)


def destroy_tap(item: str) -> None:
    tap = item.split("|", 1)[0]
    command.run([IFCONFIG, tap, "destroy"], check=False)


def destroy_bridge(item: str) -> None:
    bridge = item.split("|", 1)[0]
    command.run(bridge_destroy_argv(bridge), check=False)
