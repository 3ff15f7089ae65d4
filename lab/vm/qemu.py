"""Plain QEMU: one ``qemu-system-x86_64`` process per guest.

The machine is a q35 with virtio disk, virtio NICs and a virtio RNG (a
guest without entropy stalls at boot under TCG); the serial console goes
to the spec's console log; a QMP socket in the run's runtime directory
asks for a clean power-off. A ``user`` NIC is slirp with ``restrict=on``:
the guest reaches nothing but the ports forwarded to it, and those listen
on 127.0.0.1 only.
"""

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time

from lab import runid
from lab.vm import accel as vm_accel
from lab.vm.hypervisor import Guest, GuestError, Hypervisor, spawn_tagged
from lab.vm.spec import Nic, VmSpec
from lab.wait import WaitTimeout, wait_until

log = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"
QEMU_IMG = "qemu-img"
# (code, vars template) pairs from Debian's ovmf package, 4 MiB ones first.
OVMF = (
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
)
PACKAGES = {QEMU: "qemu-system-x86", QEMU_IMG: "qemu-utils"}
START_TIMEOUT = 30.0


def ovmf() -> tuple[str, str] | None:
    for code, template in OVMF:
        if os.path.exists(code) and os.path.exists(template):
            return code, template
    return None


def _escape(value: str) -> str:
    """A value inside a QEMU option list, where ',' separates options."""
    return value.replace(",", ",,")


def argv(
    spec: VmSpec,
    accel: vm_accel.Accel,
    qmp_path: str,
    efi_vars: str | None = None,
    firmware: tuple[str, str] | None = None,
) -> list[str]:
    """The full command line for *spec* under *accel*."""
    return [
        QEMU,
        "-name",
        f"guest={_escape(spec.name)}",
        "-machine",
        "q35",
        "-accel",
        accel.name,
        "-cpu",
        accel.cpu,
        "-m",
        str(spec.memory_mib),
        "-smp",
        str(spec.cpus),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        *_firmware(spec, efi_vars, firmware),
        *_boot(spec),
        *_drives(spec),
        *_nics(spec.nics),
        "-device",
        "virtio-rng-pci",
        *_console(spec),
        "-qmp",
        f"unix:{_escape(qmp_path)},server=on,wait=off",
    ]


def _firmware(spec, efi_vars, firmware) -> list[str]:
    if spec.firmware != "uefi":
        return []
    if firmware is None or efi_vars is None:
        raise GuestError(f"{spec.name}: UEFI needs OVMF: apt-get install ovmf")
    code, _ = firmware
    return [
        "-drive",
        f"if=pflash,format=raw,unit=0,readonly=on,file={_escape(code)}",
        "-drive",
        f"if=pflash,format=raw,unit=1,file={_escape(efi_vars)}",
    ]


def _boot(spec: VmSpec) -> list[str]:
    if not spec.kernel:
        return []
    args = ["-kernel", spec.kernel]
    if spec.initrd:
        args += ["-initrd", spec.initrd]
    if spec.cmdline:
        args += ["-append", spec.cmdline]
    return args


def _drives(spec: VmSpec) -> list[str]:
    args = [
        "-drive",
        f"file={_escape(spec.disk)},format={spec.disk_format},if=none,id=disk0,"
        "discard=unmap",
        "-device",
        "virtio-blk-pci,drive=disk0,bootindex=1",
    ]
    if spec.seed_iso:
        args += [
            "-drive",
            f"file={_escape(spec.seed_iso)},format=raw,if=none,id=seed,"
            "media=cdrom,readonly=on",
            "-device",
            "ide-cd,drive=seed",
        ]
    return args


def _nics(nics: tuple[Nic, ...]) -> list[str]:
    args = []
    for index, nic in enumerate(nics):
        netdev = f"net{index}"
        device = f"virtio-net-pci,netdev={netdev}"
        if nic.mac:
            device += f",mac={nic.mac}"
        args += ["-netdev", _netdev(nic, netdev), "-device", device]
    return args


def _netdev(nic: Nic, netdev: str) -> str:
    if nic.kind == "user":
        # restrict=on: no route out of slirp; forwards bind 127.0.0.1 only.
        # An outbound NIC (provisioning) may reach package mirrors.
        options = [
            f"user,id={netdev}",
            "restrict=off" if nic.outbound else "restrict=on",
        ]
        if nic.net:
            options.append(f"net={nic.net}")
        options += [f"hostfwd=tcp:127.0.0.1:{h}-:{g}" for h, g in nic.forwards]
        return ",".join(options)
    if nic.kind == "bridge":
        return f"bridge,id={netdev},br={_escape(nic.name)}"
    if nic.kind == "tap":
        name = f",ifname={_escape(nic.name)}" if nic.name else ""
        return f"tap,id={netdev}{name},script=no,downscript=no"
    return f"socket,id={netdev},{nic.name}"


def _console(spec: VmSpec) -> list[str]:
    if not spec.console_log:
        return ["-serial", "null"]
    return [
        "-chardev",
        f"file,id=console,path={_escape(spec.console_log)},append=on",
        "-serial",
        "chardev:console",
    ]


class QemuGuest(Guest):
    def __init__(self, spec, accel, popen, qmp_path, stderr_log, efi_vars):
        super().__init__(spec, accel)
        self.popen = popen
        self.qmp_path = qmp_path
        self.stderr_log = stderr_log
        self.efi_vars = efi_vars

    def alive(self) -> bool:
        return self.popen.poll() is None

    def exit_status(self) -> int | None:
        return self.popen.poll()

    def stop(self, timeout: float = 60) -> None:
        """Power off over QMP; after *timeout*, SIGTERM, then SIGKILL.

        *timeout* 0 skips the power-off: for a throw-away disk, SIGTERM
        (QEMU closes its images cleanly) is all it takes.
        """
        if self.alive():
            if timeout > 0:
                self._powerdown()
            if not self._exits_within(timeout):
                log.debug("[%s] SIGTERM after %.0fs", self.name, timeout)
                self._signal(signal.SIGTERM)
                if not self._exits_within(10):
                    self._signal(signal.SIGKILL)
                    self.popen.wait(timeout=10)
        log.debug("[%s] stopped, exit status %s", self.name, self.popen.poll())
        for path in (self.qmp_path, self.efi_vars):
            if path and os.path.exists(path):
                os.unlink(path)

    def qemu_errors(self) -> str:
        """What QEMU itself printed (bad options, ports in use)."""
        if not os.path.exists(self.stderr_log):
            return ""
        with open(self.stderr_log, errors="replace") as src:
            return src.read().strip()

    def _powerdown(self) -> None:
        try:
            qmp(self.qmp_path, "system_powerdown")
        except (OSError, ValueError) as exc:
            log.debug("[%s] QMP system_powerdown failed: %s", self.name, exc)

    def _exits_within(self, seconds: float) -> bool:
        try:
            self.popen.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return False
        return True

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass


def qmp(path: str, execute: str, timeout: float = 5.0) -> dict:
    """Run one QMP command on the socket at *path*; return its reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        reader = sock.makefile("rb")
        json.loads(reader.readline())  # the greeting
        reply = {}
        for name in ("qmp_capabilities", execute):
            sock.sendall(json.dumps({"execute": name}).encode() + b"\n")
            reply = _reply(reader, name)
        return reply


def _reply(reader, name: str) -> dict:
    """The answer to *name*, skipping asynchronous events."""
    for line in reader:
        message = json.loads(line)
        if "error" in message:
            raise ValueError(f"QMP {name}: {message['error'].get('desc')}")
        if "return" in message:
            return message
    raise ValueError(f"QMP {name}: connection closed without an answer")


class Qemu(Hypervisor):
    name = "qemu"

    def unavailable(self) -> str | None:
        missing = [
            f"{tool} missing: apt-get install {package}"
            for tool, package in PACKAGES.items()
            if shutil.which(tool) is None
        ]
        return "; ".join(missing) or None

    def start(self, spec: VmSpec) -> QemuGuest:
        problem = self.unavailable()
        if problem:
            raise GuestError(f"{spec.name}: cannot start: {problem}")
        chosen = vm_accel.resolve(spec.accel, spec.run_id)
        state = runid.runtime_dir(spec.run_id)
        os.makedirs(state, exist_ok=True)
        qmp_path = os.path.join(state, f"{spec.name}.qmp")
        stderr_log = os.path.join(state, f"{spec.name}.qemu.log")
        firmware, efi_vars = self._uefi_vars(spec, state)
        full = argv(spec, chosen, qmp_path, efi_vars, firmware)
        popen = self._spawn(spec, full, stderr_log)
        guest = QemuGuest(spec, chosen, popen, qmp_path, stderr_log, efi_vars)
        self._wait_started(guest)
        return guest

    def _uefi_vars(self, spec: VmSpec, state: str):
        if spec.firmware != "uefi":
            return None, None
        firmware = ovmf()
        if firmware is None:
            raise GuestError(f"{spec.name}: UEFI needs OVMF: apt-get install ovmf")
        efi_vars = os.path.join(state, f"{spec.name}-efivars.fd")
        shutil.copyfile(firmware[1], efi_vars)
        return firmware, efi_vars

    def _spawn(self, spec: VmSpec, full: list[str], stderr_log: str):
        return spawn_tagged(spec.name, spec.run_id, full, stderr_log)

    def _wait_started(self, guest: QemuGuest) -> None:
        """QMP answers only from the main loop, after every device and forward."""

        def started() -> str | None:
            if guest.exit_status() is not None:
                raise GuestError(
                    f"{guest.name}: `{QEMU}` exited with status "
                    f"{guest.exit_status()} at start: {guest.qemu_errors()}"
                )
            if not os.path.exists(guest.qmp_path):
                return "no QMP socket yet"
            try:
                qmp(guest.qmp_path, "query-status")
            except (OSError, ValueError) as exc:
                return f"QMP not answering: {exc}"
            return None

        started_at = time.monotonic()
        try:
            wait_until(started, START_TIMEOUT, f"{guest.name}: QEMU started")
        except WaitTimeout:
            guest.stop(timeout=0)
            raise
        log.debug(
            "[%s] QEMU up under %s after %.2fs (ssh port %s)",
            guest.name,
            guest.accel.name,
            time.monotonic() - started_at,
            guest.ssh_port,
        )
