"""libvirt: a transient domain per guest, on any libvirt host by URI.

The domain XML is built here from a :class:`~lab.vm.spec.VmSpec` and
tested without libvirt; only starting and stopping need libvirt-python
and a libvirtd that answers. A transient domain disappears when it stops,
so a crashed run leaves at most a running domain whose name carries the
run id (see :func:`tagged`).

libvirt's own ``user`` interface has neither slirp's ``restrict=on`` nor
host forwards bound to 127.0.0.1, so a ``user`` NIC is passed to QEMU as
is, through ``<qemu:commandline>``. Paths (disks, kernel, console log) are
paths on the libvirt host.
"""

import logging
import xml.etree.ElementTree as ET
from urllib.parse import urlparse

from lab import runid
from lab.vm import accel as vm_accel
from lab.vm import qemu
from lab.vm.hypervisor import Guest, GuestError, Hypervisor
from lab.vm.spec import Nic, VmSpec
from lab.wait import WaitTimeout, wait_until

log = logging.getLogger(__name__)

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
USER_NIC_FIRST_SLOT = 0x18
INSTALL_HINT = (
    "apt-get install libvirt-dev pkg-config gcc python3-dev && "
    ".venv/bin/pip install libvirt-python"
)


def domain_xml(
    spec: VmSpec, accel: str, firmware: tuple[str, str] | None = None
) -> str:
    """The transient domain for *spec*; *accel* is "kvm" or "tcg"."""
    ET.register_namespace("qemu", QEMU_NS)
    domain = ET.Element("domain", type="kvm" if accel == "kvm" else "qemu")
    ET.SubElement(domain, "name").text = spec.name
    ET.SubElement(domain, "memory", unit="MiB").text = str(spec.memory_mib)
    ET.SubElement(domain, "vcpu").text = str(spec.cpus)
    domain.append(_os(spec, firmware))
    features = ET.SubElement(domain, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    if accel == "kvm":
        ET.SubElement(domain, "cpu", mode="host-passthrough")
    else:
        ET.SubElement(domain, "cpu", mode="maximum", check="none")
    ET.SubElement(domain, "clock", offset="utc")
    # As QEMU's -no-reboot: a guest that reboots or crashes stops.
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        ET.SubElement(domain, event).text = "destroy"
    domain.append(_devices(spec))
    user_args = _user_nic_args(spec.nics)
    if user_args:
        line = ET.SubElement(domain, f"{{{QEMU_NS}}}commandline")
        for arg in user_args:
            ET.SubElement(line, f"{{{QEMU_NS}}}arg", value=arg)
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode")


def _os(spec: VmSpec, firmware) -> ET.Element:
    element = ET.Element("os")
    ET.SubElement(element, "type", arch="x86_64", machine="q35").text = "hvm"
    if spec.firmware == "uefi":
        if firmware is None:
            raise GuestError(f"{spec.name}: UEFI needs OVMF: apt-get install ovmf")
        code, template = firmware
        # An explicit loader, not firmware='efi': libvirt drops the path
        # when both are given (libvirt issue 327).
        ET.SubElement(element, "loader", readonly="yes", type="pflash").text = code
        nvram = f"{spec.disk}.efivars.fd"
        ET.SubElement(element, "nvram", template=template).text = nvram
    if spec.kernel:
        ET.SubElement(element, "kernel").text = spec.kernel
        if spec.initrd:
            ET.SubElement(element, "initrd").text = spec.initrd
        if spec.cmdline:
            ET.SubElement(element, "cmdline").text = spec.cmdline
    else:
        ET.SubElement(element, "boot", dev="hd")
    return element


def _devices(spec: VmSpec) -> ET.Element:
    devices = ET.Element("devices")
    disk = ET.SubElement(devices, "disk", type="file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type=spec.disk_format, discard="unmap")
    ET.SubElement(disk, "source", file=spec.disk)
    ET.SubElement(disk, "target", dev="vda", bus="virtio")
    if spec.seed_iso:
        cdrom = ET.SubElement(devices, "disk", type="file", device="cdrom")
        ET.SubElement(cdrom, "driver", name="qemu", type="raw")
        ET.SubElement(cdrom, "source", file=spec.seed_iso)
        ET.SubElement(cdrom, "target", dev="sda", bus="sata")
        ET.SubElement(cdrom, "readonly")
    for nic in spec.nics:
        if nic.kind != "user":
            devices.append(_interface(nic))
    devices.append(_serial(spec))
    console = ET.SubElement(devices, "console", type="pty")
    ET.SubElement(console, "target", type="serial", port="0")
    rng = ET.SubElement(devices, "rng", model="virtio")
    ET.SubElement(rng, "backend", model="random").text = "/dev/urandom"
    ET.SubElement(devices, "memballoon", model="none")
    return devices


def _serial(spec: VmSpec) -> ET.Element:
    serial = ET.Element("serial", type="pty")
    if spec.console_log:
        ET.SubElement(serial, "log", file=spec.console_log, append="on")
    ET.SubElement(serial, "target", port="0")
    return serial


def _interface(nic: Nic) -> ET.Element:
    if nic.kind == "bridge":
        element = ET.Element("interface", type="bridge")
        ET.SubElement(element, "source", bridge=nic.name)
    elif nic.kind == "tap":
        element = ET.Element("interface", type="ethernet")
        if nic.name:
            ET.SubElement(element, "target", dev=nic.name, managed="no")
    else:
        element = _socket_interface(nic.name)
    if nic.mac:
        ET.SubElement(element, "mac", address=nic.mac)
    ET.SubElement(element, "model", type="virtio")
    return element


def _socket_interface(name: str) -> ET.Element:
    """listen=/connect=/mcast=/udp= as libvirt's server/client/mcast/udp."""
    mode, _, address = name.partition("=")
    kind = {"listen": "server", "connect": "client"}.get(mode, mode)
    element = ET.Element("interface", type=kind)
    host, _, port = address.split(",")[0].rpartition(":")
    ET.SubElement(element, "source", address=host or "127.0.0.1", port=port)
    return element


def _user_nic_args(nics: tuple[Nic, ...]) -> list[str]:
    """QEMU arguments for the ``user`` NICs libvirt cannot express.

    libvirt addresses the PCI devices it knows and QEMU gives an unaddressed
    one the first free slot, which is the one libvirt planned for its first
    root port: the domain would not start. A slot of our own, far above
    what libvirt uses on q35 and below the chipset's 0x1f, avoids that.
    """
    args = []
    for index, nic in enumerate(nics):
        if nic.kind != "user":
            continue
        netdev = f"vjnet{index}"
        slot = USER_NIC_FIRST_SLOT + index
        device = f"virtio-net-pci,netdev={netdev},bus=pcie.0,addr={slot:#x}"
        if nic.mac:
            device += f",mac={nic.mac}"
        args += ["-netdev", qemu._netdev(nic, netdev), "-device", device]
    return args


def _connect(uri: str):
    import libvirt

    # libvirt-python prints every error to stderr besides raising it; the
    # lab reports the exception, once, where it belongs.
    libvirt.registerErrorHandler(lambda context, error: None, None)
    return libvirt.open(uri)


class LibvirtGuest(Guest):
    def __init__(self, spec: VmSpec, domain, chosen: vm_accel.Accel):
        super().__init__(spec, chosen)
        self.domain = domain

    def alive(self) -> bool:
        import libvirt

        try:
            return bool(self.domain.isActive())
        except libvirt.libvirtError:
            return False

    def stop(self, timeout: float = 60) -> None:
        """ACPI shutdown; destroy after *timeout*. The transient domain goes."""
        import libvirt

        if not self.alive():
            return
        try:
            self.domain.shutdown()
        except libvirt.libvirtError as exc:
            log.debug("[%s] shutdown refused: %s", self.name, exc)
        try:
            wait_until(
                lambda: "still running" if self.alive() else None,
                timeout,
                f"{self.name}: power-off",
                interval=0.5,
            )
        except WaitTimeout:
            log.debug("[%s] no power-off after %.0fs, destroying", self.name, timeout)
            self.domain.destroy()


class Libvirt(Hypervisor):
    name = "libvirt"

    def __init__(self, uri: str):
        self.uri = uri
        self._conn = None

    def unavailable(self) -> str | None:
        try:
            import libvirt
        except ImportError:
            return f"python module libvirt missing: {INSTALL_HINT}"
        try:
            self._conn = self._conn or _connect(self.uri)
        except libvirt.libvirtError as exc:
            return f"no libvirtd answers at {self.uri}: {exc}"
        return None

    def accel_for(self, spec: VmSpec) -> vm_accel.Accel:
        """Probe locally for a local URI; trust KVM on a remote host."""
        if spec.accel != "auto" or not urlparse(self.uri).hostname:
            return vm_accel.resolve(spec.accel, spec.run_id)
        return vm_accel.Accel("kvm", f"remote libvirt host {self.uri}", 1.0)

    def start(self, spec: VmSpec) -> LibvirtGuest:
        problem = self.unavailable()
        if problem:
            raise GuestError(f"{spec.name}: cannot start: {problem}")
        chosen = self.accel_for(spec)
        xml = domain_xml(spec, chosen.name, qemu.ovmf())
        log.debug("[%s] libvirt %s createXML:\n%s", spec.name, self.uri, xml)
        domain = self._conn.createXML(xml, 0)
        return LibvirtGuest(spec, domain, chosen)


def tagged(uri: str, run_id: str | None) -> list[str]:
    """Names of the domains at *uri* that carry *run_id* (or any run id)."""
    try:
        conn = _connect(uri)
    except Exception as exc:  # libvirt missing or host down: nothing to list
        log.debug("libvirt %s: cannot list domains: %s", uri, exc)
        return []
    names = [domain.name() for domain in conn.listAllDomains()]
    return [
        name
        for name in names
        if runid.run_of_namespace(name)
        and run_id in (None, runid.run_of_namespace(name))
    ]


def destroy(uri: str, name: str) -> None:
    import libvirt

    domain = _connect(uri).lookupByName(name)
    if domain.isActive():
        domain.destroy()
    if domain.isPersistent():
        domain.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
