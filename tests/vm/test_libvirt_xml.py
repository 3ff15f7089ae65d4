"""lab/vm/libvirt_backend.py: the domain XML, checked without libvirt."""

import xml.etree.ElementTree as ET

import pytest

from lab.vm import libvirt_backend
from lab.vm.hypervisor import GuestError
from lab.vm.spec import Nic, VmSpec

RUN = "20261204-154353-a1a0"
FIRMWARE = ("/fw/OVMF_CODE_4M.fd", "/fw/OVMF_VARS_4M.fd")
QEMU_NS = "{http://libvirt.org/schemas/domain/qemu/1.0}"


def spec(**changes) -> VmSpec:
    fields = {
        "name": f"vjlab-{RUN}-debian12-cells",
        "memory_mib": 1536,
        "cpus": 2,
        "disk": "/cache/overlays/guest.qcow2",
        "console_log": "/run/vjlab/console.log",
        "nics": (Nic("user", forwards=((40022, 22),)),),
    }
    fields.update(changes)
    return VmSpec(**fields)


def domain(accel="tcg", ovmf=FIRMWARE, **changes) -> ET.Element:
    return ET.fromstring(libvirt_backend.domain_xml(spec(**changes), accel, ovmf))


def test_tcg_makes_a_qemu_domain_with_the_maximum_cpu():
    root = domain("tcg")
    assert root.get("type") == "qemu"
    assert root.find("cpu").get("mode") == "maximum"


def test_kvm_makes_a_kvm_domain_with_the_host_cpu():
    root = domain("kvm")
    assert root.get("type") == "kvm"
    assert root.find("cpu").get("mode") == "host-passthrough"


def test_name_memory_and_cpus():
    root = domain()
    assert root.findtext("name") == f"vjlab-{RUN}-debian12-cells"
    assert root.find("memory").get("unit") == "MiB"
    assert root.findtext("memory") == "1536"
    assert root.findtext("vcpu") == "2"
    assert root.find("os/type").get("machine") == "q35"


def test_a_reboot_or_crash_ends_the_domain():
    root = domain()
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        assert root.findtext(event) == "destroy"


def test_bios_boots_the_disk_without_a_loader():
    root = domain()
    assert root.find("os/loader") is None
    assert root.find("os/boot").get("dev") == "hd"


def test_uefi_names_the_loader_and_a_per_guest_nvram():
    root = domain(firmware="uefi")
    loader = root.find("os/loader")
    assert loader.text == "/fw/OVMF_CODE_4M.fd"
    assert loader.get("type") == "pflash" and loader.get("readonly") == "yes"
    nvram = root.find("os/nvram")
    assert nvram.get("template") == "/fw/OVMF_VARS_4M.fd"
    assert nvram.text == "/cache/overlays/guest.qcow2.efivars.fd"
    assert root.find("os").get("firmware") is None


def test_uefi_without_ovmf_is_refused():
    with pytest.raises(GuestError, match="apt-get install ovmf"):
        libvirt_backend.domain_xml(spec(firmware="uefi"), "tcg", None)


def test_direct_kernel_boot_elements():
    root = domain(
        kernel="/img/vmlinuz", initrd="/img/initrd.img", cmdline="root=/dev/vda"
    )
    assert root.findtext("os/kernel") == "/img/vmlinuz"
    assert root.findtext("os/initrd") == "/img/initrd.img"
    assert root.findtext("os/cmdline") == "root=/dev/vda"
    assert root.find("os/boot") is None


def test_disk_is_virtio_qcow2_and_the_seed_a_readonly_cdrom():
    root = domain(seed_iso="/run/vjlab/seed.iso")
    disk, cdrom = root.findall("devices/disk")
    assert disk.find("driver").get("type") == "qcow2"
    assert disk.find("source").get("file") == "/cache/overlays/guest.qcow2"
    assert disk.find("target").get("bus") == "virtio"
    assert cdrom.get("device") == "cdrom"
    assert cdrom.find("source").get("file") == "/run/vjlab/seed.iso"
    assert cdrom.find("readonly") is not None


def test_serial_console_is_logged_to_the_spec_file():
    log = domain().find("devices/serial/log")
    assert log.get("file") == "/run/vjlab/console.log"
    assert log.get("append") == "on"


def test_user_nic_goes_to_qemu_restricted_and_on_loopback():
    root = domain()
    args = [arg.get("value") for arg in root.iter(f"{QEMU_NS}arg")]
    assert args == [
        "-netdev",
        "user,id=vjnet0,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22",
        "-device",
        "virtio-net-pci,netdev=vjnet0,bus=pcie.0,addr=0x18",
    ]
    assert root.find("devices/interface") is None


def test_bridge_tap_and_socket_interfaces():
    nics = (
        Nic("bridge", "vjbr0", mac="52:54:00:00:00:01"),
        Nic("tap", "vjtap0"),
        Nic("socket", "connect=127.0.0.1:41000"),
    )
    root = domain(nics=nics)
    bridge, tap, sock = root.findall("devices/interface")
    assert bridge.get("type") == "bridge"
    assert bridge.find("source").get("bridge") == "vjbr0"
    assert bridge.find("mac").get("address") == "52:54:00:00:00:01"
    assert tap.get("type") == "ethernet"
    assert tap.find("target").get("dev") == "vjtap0"
    assert sock.get("type") == "client"
    assert sock.find("source").attrib == {"address": "127.0.0.1", "port": "41000"}
    for interface in (bridge, tap, sock):
        assert interface.find("model").get("type") == "virtio"
    assert root.find(f"{QEMU_NS}commandline") is None


def test_no_libvirt_module_is_reported_with_the_install_command(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_libvirt(name, *args, **kwargs):
        if name == "libvirt":
            raise ImportError("No module named 'libvirt'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_libvirt)
    problem = libvirt_backend.Libvirt("qemu:///system").unavailable()
    assert "pip install libvirt-python" in problem
    assert "libvirt-dev pkg-config" in problem


def test_an_unreachable_libvirt_lists_no_leftovers(monkeypatch):
    def refuse(uri):
        raise OSError(f"{uri}: connection refused")

    monkeypatch.setattr(libvirt_backend, "_connect", refuse)
    assert libvirt_backend.tagged("qemu+ssh://lab@192.0.2.10/system", RUN) == []


def test_leftover_domains_are_those_named_with_the_run(monkeypatch):
    class Domain:
        def __init__(self, name):
            self._name = name

        def name(self):
            return self._name

    class Conn:
        def listAllDomains(self):
            names = [f"vjlab-{RUN}-a", "vjlab-20261204-000000-beef-b", "webserver"]
            return [Domain(name) for name in names]

    monkeypatch.setattr(libvirt_backend, "_connect", lambda uri: Conn())
    assert libvirt_backend.tagged("qemu:///system", RUN) == [f"vjlab-{RUN}-a"]
    assert len(libvirt_backend.tagged("qemu:///system", None)) == 2
