"""Which accelerator really boots a guest here: KVM, else TCG.

A /dev/kvm that opens proves nothing, and neither does firmware that
starts. On the development machine SeaBIOS under KVM reaches "Booting
from Hard Disk..." and then the first FPU instruction of what it boots
ends in "KVM internal error. Suberror: 1 / emulation failure" (a Linux
kernel hangs after "Probing EDD"; OVMF fails the same way); elsewhere KVM
reset-loops inside SeaBIOS. So each accelerator boots a guest made of
SeaBIOS and a 512-byte boot sector that initialises the FPU and prints a
mark on the debug port, and counts only if the mark appears before a
deadline. Under TCG every guest timeout grows by
:attr:`Accel.timeout_factor`; the log says why, once.
"""

import logging
import os
import selectors
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from lab.runid import ENV_VAR

log = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"
FIRMWARE_MARK = b"Booting from"
BOOT_MARK = b"vjlab-fpu-ok"
KVM_FAILURE = b"KVM internal error"
# The boot sector, assembled with GNU as (.code16, loaded at 0x7c00):
#   cli; xor %ax,%ax; mov %ax,%ds
#   fninit; fldz; fldz; faddp; fwait        <- what the broken KVM fails on
#   mov $0x7c1f,%si; mov $0x402,%dx
#   1: lodsb; test %al,%al; jz 2f; outb %al,%dx; jmp 1b
#   2: hlt; jmp 2b
#   .asciz "vjlab-fpu-ok\n"                 (at offset 0x1f)
BOOT_CODE = (
    bytes.fromhex("fa31c08ed8dbe3d9eed9eedec19bbe1f7cba0204ac84c07403eeebf8f4ebfd")
    + BOOT_MARK
    + b"\n\0"
)
BOOT_SECTOR = BOOT_CODE.ljust(510, b"\0") + b"\x55\xaa"
BOOT_DISK_BYTES = 1024 * 1024  # SeaBIOS does not boot a one-sector disk
TIMEOUT_FACTORS = {"kvm": 1.0, "tcg": 6.0}
OVERRIDE_VAR = "VJLAB_VM_ACCEL"  # "kvm" or "tcg": skip the probe
KVM_DEVICE = "/dev/kvm"

_probed: "Accel | None" = None
_explained: set[str] = set()


class AccelError(RuntimeError):
    """No accelerator boots even the probe guest."""


@dataclass(frozen=True)
class Accel:
    name: str  # "kvm" or "tcg"
    detail: str  # why this one: what each probe saw
    timeout_factor: float

    @property
    def cpu(self) -> str:
        """The CPU to ask for: the host's under KVM, all TCG can under TCG."""
        return "host" if self.name == "kvm" else "max"

    def scaled(self, seconds: float) -> float:
        """*seconds* as a timeout under this accelerator (said once per run)."""
        if self.timeout_factor != 1.0 and self.name not in _explained:
            _explained.add(self.name)
            log.info(
                "guest timeouts x%s under %s: %s",
                self.timeout_factor,
                self.name,
                self.detail,
            )
        return seconds * self.timeout_factor


def probe_argv(name: str, disk: str) -> list[str]:
    """SeaBIOS and the boot sector on *disk*, the debug port on stdout."""
    cpu = "host" if name == "kvm" else "max"
    return [
        QEMU,
        "-accel",
        name,
        "-cpu",
        cpu,
        "-machine",
        "q35",
        "-m",
        "64",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-drive",
        f"file={disk},format=raw,if=none,id=boot,readonly=on",
        "-device",
        "virtio-blk-pci,drive=boot",
        "-chardev",
        "stdio,id=dbg",
        "-device",
        "isa-debugcon,iobase=0x402,chardev=dbg",
    ]


def write_boot_disk(path: str) -> str:
    with open(path, "wb") as out:
        out.write(BOOT_SECTOR)
        out.truncate(BOOT_DISK_BYTES)
    return path


def _launch(argv: list[str], run_id: str | None) -> subprocess.Popen:
    env = dict(os.environ)
    if run_id:
        env[ENV_VAR] = run_id
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def probe(
    deadline: float = 20.0,
    run_id: str | None = None,
    launch: Callable[[list[str], str | None], subprocess.Popen] = _launch,
    kvm_device: str = KVM_DEVICE,
    scratch_dir: str | None = None,
) -> Accel:
    """Try KVM, then TCG; return the first that runs the boot sector.

    The probe's disk lives in a temporary directory (in *scratch_dir*, or
    the system's) that is gone when this returns.
    """
    tried = []
    with tempfile.TemporaryDirectory(prefix="vjlab-accel-", dir=scratch_dir) as scratch:
        disk = write_boot_disk(os.path.join(scratch, "boot.img"))
        for name in ("kvm", "tcg"):
            missing = _device_problem(kvm_device) if name == "kvm" else None
            if missing:
                booted, reason = False, missing
            else:
                booted, reason = _guest_boots(name, disk, deadline, run_id, launch)
            tried.append(f"{name}: {reason}")
            if booted:
                log.debug("accelerator %s chosen: %s", name, "; ".join(tried))
                return Accel(name, "; ".join(tried), TIMEOUT_FACTORS[name])
    raise AccelError("no accelerator boots the probe guest: " + "; ".join(tried))


def _device_problem(path: str) -> str | None:
    if not os.path.exists(path):
        return f"{path} missing"
    if not os.access(path, os.R_OK | os.W_OK):
        return f"{path} not readable and writable by uid {os.getuid()}"
    return None


def _guest_boots(name, disk, deadline, run_id, launch) -> tuple[bool, str]:
    """(True, how long it took) or (False, what went wrong)."""
    argv = probe_argv(name, disk)
    started = time.monotonic()
    try:
        process = launch(argv, run_id)
    except OSError as exc:
        return False, f"`{argv[0]}` could not start: {exc}"
    try:
        output, exited = _read_until_mark(process, deadline)
    finally:
        _kill(process)
    seconds = time.monotonic() - started
    booted = BOOT_MARK in output
    log.debug(
        "[accel] %s -> %s (%.2fs)",
        " ".join(argv),
        "booted" if booted else "no boot",
        seconds,
    )
    if booted:
        return True, f"boot sector ran its FPU test in {seconds:.1f}s"
    return False, _why_not(output, exited, deadline)


def _why_not(output: bytes, exited: int | None, deadline: float) -> str:
    firmware = "firmware reached 'Booting from', " if FIRMWARE_MARK in output else ""
    last = _last_line(output)
    if KVM_FAILURE in output:
        return f"{firmware}then failed: {last}"
    if exited is not None:
        return (
            f"{firmware}QEMU exited with status {exited} before the boot sector "
            f"ran (last output: {last})"
        )
    return f"{firmware}no boot-sector mark within {deadline:.0f}s (last output: {last})"


def _read_until_mark(process, deadline: float) -> tuple[bytes, int | None]:
    """Read the debug console until the mark, a KVM failure, EOF or the deadline."""
    output = b""
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    end = time.monotonic() + deadline
    try:
        while BOOT_MARK not in output and KVM_FAILURE not in output:
            remaining = end - time.monotonic()
            if remaining <= 0:
                return output, None
            if not selector.select(timeout=min(remaining, 0.5)):
                continue
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                return output, process.wait(timeout=5)
            output += chunk
        # KVM prints its error and then the register dump: keep a little.
        if KVM_FAILURE in output and selector.select(timeout=0.2):
            output += os.read(process.stdout.fileno(), 4096)
    finally:
        selector.close()
    return output, None


def _kill(process) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=5)
    if process.stdout is not None:
        process.stdout.close()


def _last_line(output: bytes) -> str:
    text = output.decode(errors="replace")
    failure = KVM_FAILURE.decode()
    if failure in text:
        # "KVM internal error. Suberror: 1" says more than the register dump.
        return text[text.index(failure) :].splitlines()[0].strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(none)"


def resolve(requested: str = "auto", run_id: str | None = None) -> Accel:
    """The accelerator for a guest that asked for *requested*.

    An explicit "kvm" or "tcg" (in the spec or in ``VJLAB_VM_ACCEL``) is
    taken as given; "auto" probes once per process.
    """
    choice = requested if requested != "auto" else os.environ.get(OVERRIDE_VAR, "")
    if choice in TIMEOUT_FACTORS:
        return Accel(choice, f"{choice} requested", TIMEOUT_FACTORS[choice])
    global _probed
    if _probed is None:
        _probed = probe(run_id=run_id)
    return _probed
