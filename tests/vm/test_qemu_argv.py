"""lab/vm/qemu.py: the QEMU command line for each kind of guest."""

import pytest

from lab.vm import qemu
from lab.vm.accel import Accel
from lab.vm.hypervisor import GuestError
from lab.vm.spec import Nic, VmSpec

RUN = "20261204-154353-a1a0"
TCG = Accel("tcg", "kvm: reset loop; tcg: booted", 6.0)
KVM = Accel("kvm", "kvm: booted", 1.0)
FIRMWARE = ("/fw/OVMF_CODE_4M.fd", "/fw/OVMF_VARS_4M.fd")


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


def argv(accel=TCG, **changes) -> list[str]:
    return qemu.argv(
        spec(**changes), accel, "/run/vjlab/g.qmp", "/run/vjlab/v.fd", FIRMWARE
    )


def option(args: list[str], flag: str) -> list[str]:
    """Every value given to *flag*."""
    return [args[i + 1] for i, arg in enumerate(args) if arg == flag]


def test_tcg_asks_for_the_max_cpu_and_kvm_for_the_host_cpu():
    assert option(argv(TCG), "-accel") == ["tcg"]
    assert option(argv(TCG), "-cpu") == ["max"]
    assert option(argv(KVM), "-accel") == ["kvm"]
    assert option(argv(KVM), "-cpu") == ["host"]


def test_machine_is_q35_without_default_devices_and_stops_on_reboot():
    args = argv()
    assert option(args, "-machine") == ["q35"]
    assert "-nodefaults" in args and "-no-reboot" in args
    assert option(args, "-m") == ["1536"] and option(args, "-smp") == ["2"]
    assert option(args, "-name") == [f"guest=vjlab-{RUN}-debian12-cells"]


def test_disk_is_virtio_and_the_seed_a_read_only_cdrom():
    args = argv(seed_iso="/run/vjlab/seed.iso")
    drives = option(args, "-drive")
    assert drives[0].startswith("file=/cache/overlays/guest.qcow2,format=qcow2,")
    assert "virtio-blk-pci,drive=disk0,bootindex=1" in option(args, "-device")
    assert any("media=cdrom,readonly=on" in d and "seed.iso" in d for d in drives)
    assert "ide-cd,drive=seed" in option(args, "-device")


def test_bios_guest_has_no_pflash():
    assert not any("pflash" in d for d in option(argv(), "-drive"))


def test_uefi_guest_boots_ovmf_from_pflash_with_its_own_vars():
    drives = option(argv(firmware="uefi"), "-drive")
    assert "if=pflash,format=raw,unit=0,readonly=on,file=/fw/OVMF_CODE_4M.fd" in drives
    assert "if=pflash,format=raw,unit=1,file=/run/vjlab/v.fd" in drives


def test_uefi_without_ovmf_names_the_package():
    with pytest.raises(GuestError, match="apt-get install ovmf"):
        qemu.argv(spec(firmware="uefi"), TCG, "/q", None, None)


def test_direct_kernel_boot_passes_kernel_initrd_and_cmdline():
    args = argv(
        kernel="/img/vmlinuz", initrd="/img/initrd.img", cmdline="root=/dev/vda"
    )
    assert option(args, "-kernel") == ["/img/vmlinuz"]
    assert option(args, "-initrd") == ["/img/initrd.img"]
    assert option(args, "-append") == ["root=/dev/vda"]


def test_disk_boot_passes_no_kernel():
    args = argv()
    assert "-kernel" not in args and "-append" not in args


def test_user_nic_is_restricted_and_forwards_only_on_loopback():
    nic = Nic("user", forwards=((40022, 22), (40080, 8080)), net="198.51.100.128/25")
    netdev = option(argv(nics=(nic,)), "-netdev")
    assert netdev == [
        "user,id=net0,restrict=on,net=198.51.100.128/25,"
        "hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:127.0.0.1:40080-:8080"
    ]


def test_every_forward_binds_127_0_0_1():
    nic = Nic("user", forwards=((40022, 22), (40023, 23)))
    rules = [part for part in qemu._netdev(nic, "n").split(",") if "hostfwd" in part]
    assert rules and all(rule.startswith("hostfwd=tcp:127.0.0.1:") for rule in rules)


def test_bridge_tap_and_socket_nics():
    nics = (
        Nic("bridge", "vjbr0", mac="52:54:00:00:00:01"),
        Nic("tap", "vjtap0"),
        Nic("socket", "listen=127.0.0.1:41000"),
    )
    args = argv(nics=nics)
    assert option(args, "-netdev") == [
        "bridge,id=net0,br=vjbr0",
        "tap,id=net1,ifname=vjtap0,script=no,downscript=no",
        "socket,id=net2,listen=127.0.0.1:41000",
    ]
    devices = option(args, "-device")
    assert "virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01" in devices
    assert "virtio-net-pci,netdev=net2" in devices


def test_serial_console_is_appended_to_the_log_file():
    args = argv()
    assert option(args, "-chardev") == [
        "file,id=console,path=/run/vjlab/console.log,append=on"
    ]
    assert option(args, "-serial") == ["chardev:console"]


def test_no_console_log_means_a_null_serial():
    assert option(argv(console_log=""), "-serial") == ["null"]


def test_commas_in_paths_are_doubled():
    args = argv(disk="/odd,dir/guest.qcow2")
    assert option(args, "-drive")[0].startswith("file=/odd,,dir/guest.qcow2,")


def test_qmp_socket_and_rng():
    args = argv()
    assert option(args, "-qmp") == ["unix:/run/vjlab/g.qmp,server=on,wait=off"]
    assert "virtio-rng-pci" in option(args, "-device")


def test_unavailable_names_the_packages(monkeypatch):
    monkeypatch.setattr(qemu.shutil, "which", lambda tool: None)
    problem = qemu.Qemu().unavailable()
    assert "apt-get install qemu-system-x86" in problem
    assert "apt-get install qemu-utils" in problem
