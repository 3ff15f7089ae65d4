"""Which accelerator really boots a guest here: KVM, else TCG.

A /dev/kvm that opens proves nothing: on some hosts KVM starts and then
reset-loops in the firmware. So each accelerator is tried with a guest
that has firmware and nothing else, and it counts only if SeaBIOS says
"Booting from" on its debug port before a deadline. Under TCG every guest
timeout grows by :attr:`Accel.timeout_factor`; the log says why, once.
"""

import logging
import os
import selectors
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from lab.runid import ENV_VAR

log = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"
BOOT_MARK = b"Booting from"
TIMEOUT_FACTORS = {"kvm": 1.0, "tcg": 6.0}
OVERRIDE_VAR = "VJLAB_VM_ACCEL"  # "kvm" or "tcg": skip the probe
KVM_DEVICE = "/dev/kvm"

_probed: "Accel | None" = None
_explained: set[str] = set()


class AccelError(RuntimeError):
    """No accelerator boots even the firmware of a guest."""


@dataclass(frozen=True)
class Accel:
    name: str  # "kvm" or "tcg"
    detail: str  # why this one: what each probe saw
    timeout_factor: float

    @property
    def cpu(self) -> str:
        """The CPU model to ask for: the host's under KVM, all TCG can under TCG."""
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


def probe_argv(name: str) -> list[str]:
    """A guest with SeaBIOS only, its debug console on stdout."""
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
        "-chardev",
        "stdio,id=dbg",
        "-device",
        "isa-debugcon,iobase=0x402,chardev=dbg",
    ]


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
) -> Accel:
    """Try KVM, then TCG; return the first whose firmware reaches its boot."""
    tried = []
    for name in ("kvm", "tcg"):
        missing = _device_problem(kvm_device) if name == "kvm" else None
        booted, reason = (
            (False, missing)
            if missing
            else _firmware_boots(name, deadline, run_id, launch)
        )
        tried.append(f"{name}: {reason}")
        if booted:
            log.debug("accelerator %s chosen: %s", name, "; ".join(tried))
            return Accel(name, "; ".join(tried), TIMEOUT_FACTORS[name])
    raise AccelError(
        "no accelerator boots a firmware-only guest: " + "; ".join(tried)
    )


def _device_problem(path: str) -> str | None:
    if not os.path.exists(path):
        return f"{path} missing"
    if not os.access(path, os.R_OK | os.W_OK):
        return f"{path} not readable and writable by uid {os.getuid()}"
    return None


def _firmware_boots(name, deadline, run_id, launch) -> tuple[bool, str]:
    """(True, how long it took) or (False, what went wrong)."""
    argv = probe_argv(name)
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
    log.debug(
        "[accel] %s -> %s (%.2fs)",
        " ".join(argv),
        "booted" if BOOT_MARK in output else "no boot",
        seconds,
    )
    if BOOT_MARK in output:
        return True, f"firmware reached 'Booting from' in {seconds:.1f}s"
    last = _last_line(output)
    if exited is not None:
        return False, (
            f"QEMU exited with status {exited} before 'Booting from' "
            f"(last output: {last})"
        )
    return False, f"no 'Booting from' within {deadline:.0f}s (last output: {last})"


def _read_until_mark(process, deadline: float) -> tuple[bytes, int | None]:
    """Read the debug console until the mark, EOF or the deadline."""
    output = b""
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    end = time.monotonic() + deadline
    try:
        while BOOT_MARK not in output:
            remaining = end - time.monotonic()
            if remaining <= 0:
                return output, None
            if not selector.select(timeout=min(remaining, 0.5)):
                continue
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                return output, process.wait(timeout=5)
            output += chunk
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
    lines = [line for line in output.decode(errors="replace").splitlines() if line]
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
