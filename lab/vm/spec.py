"""What a guest is, independent of the hypervisor that runs it.

A :class:`VmSpec` is checked when it is made: a guest whose name does not
carry the run id could never be found by the reaper, and a ``user`` NIC
that forwarded a port on every host address would expose the guest.
"""

import re
from dataclasses import dataclass

from lab import runid

NIC_KINDS = ("user", "bridge", "tap", "socket")
FIRMWARES = ("bios", "uefi")
ACCELS = ("kvm", "tcg", "auto")
DISK_FORMATS = ("qcow2", "raw")
SOCKET_MODES = ("listen=", "connect=", "udp=", "mcast=")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")
MAC_PATTERN = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


class SpecError(ValueError):
    """A guest or NIC description that no hypervisor should be given."""


@dataclass(frozen=True)
class Nic:
    """One network interface of a guest.

    ``kind`` is ``user`` (slirp with restrict=on: the guest reaches nothing
    but the ports forwarded to it on 127.0.0.1), ``bridge``, ``tap`` or
    ``socket``. ``name`` is the bridge or tap name, or for ``socket`` one of
    ``listen=``/``connect=``/``udp=``/``mcast=`` followed by an address.
    ``forwards`` are (host port on 127.0.0.1, guest port) pairs. ``net`` is
    the slirp network of a ``user`` NIC, e.g. ``198.51.100.128/25``; None
    keeps the hypervisor's default. ``outbound`` lets a ``user`` NIC open
    connections to the outside (slirp unrestricted): only for provisioning
    a guest that must fetch packages; cells never get it.
    """

    kind: str
    name: str | None = None
    mac: str | None = None
    forwards: tuple[tuple[int, int], ...] = ()
    net: str | None = None
    outbound: bool = False

    def __post_init__(self):
        if self.kind not in NIC_KINDS:
            raise SpecError(f"NIC kind {self.kind!r}: allowed {', '.join(NIC_KINDS)}")
        if self.mac is not None and not MAC_PATTERN.match(self.mac):
            raise SpecError(f"NIC mac {self.mac!r}: expected xx:xx:xx:xx:xx:xx")
        if self.outbound and self.kind != "user":
            raise SpecError(f"NIC kind {self.kind!r}: only 'user' NICs are outbound")
        if self.forwards and self.kind != "user":
            raise SpecError(f"NIC kind {self.kind!r}: only 'user' NICs forward ports")
        for pair in self.forwards:
            _check_forward(pair)
        # A tap may be created for the guest; a bridge or socket must exist.
        if self.kind in ("bridge", "socket") and not self.name:
            raise SpecError(f"NIC kind {self.kind!r} needs a name")
        if self.kind == "socket" and not self.name.startswith(SOCKET_MODES):
            raise SpecError(
                f"socket NIC {self.name!r}: expected one of {', '.join(SOCKET_MODES)}"
            )

    def forwarded(self, guest_port: int) -> int | None:
        """The host port forwarded to *guest_port*, or None."""
        for host_port, to in self.forwards:
            if to == guest_port:
                return host_port
        return None


def _check_forward(pair) -> None:
    if len(pair) != 2 or not all(isinstance(port, int) for port in pair):
        raise SpecError(f"forward {pair!r}: expected (host port, guest port)")
    for port in pair:
        if not 0 < port < 65536:
            raise SpecError(f"forward {pair!r}: port {port} out of range")


@dataclass(frozen=True)
class VmSpec:
    """A guest: its name carries the run id (``vjlab-<run>-...``)."""

    name: str
    memory_mib: int
    cpus: int
    disk: str
    disk_format: str = "qcow2"
    seed_iso: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    firmware: str = "bios"
    nics: tuple[Nic, ...] = ()
    console_log: str = ""
    accel: str = "auto"

    def __post_init__(self):
        if not NAME_PATTERN.match(self.name):
            raise SpecError(f"guest name {self.name!r}: use letters, digits, . _ -")
        if runid.run_of_namespace(self.name) is None:
            raise SpecError(
                f"guest name {self.name!r}: expected vjlab-<run>-..., "
                "so the reaper can find it"
            )
        _check_choice("firmware", self.firmware, FIRMWARES)
        _check_choice("accel", self.accel, ACCELS)
        _check_choice("disk_format", self.disk_format, DISK_FORMATS)
        if self.memory_mib < 16 or self.cpus < 1:
            raise SpecError(
                f"{self.name}: memory_mib={self.memory_mib}, cpus={self.cpus}: "
                "expected at least 16 MiB and 1 CPU"
            )
        if (self.initrd or self.cmdline) and not self.kernel:
            raise SpecError(f"{self.name}: initrd/cmdline given without a kernel")

    @property
    def run_id(self) -> str:
        return runid.run_of_namespace(self.name)

    @property
    def ssh_port(self) -> int | None:
        """The host port a ``user`` NIC forwards to the guest's port 22."""
        for nic in self.nics:
            port = nic.forwarded(22)
            if port is not None:
                return port
        return None


def _check_choice(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SpecError(f"{field}={value!r}: allowed {', '.join(allowed)}")
