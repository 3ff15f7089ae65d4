"""lab/vm/bhyve.py: bhyve, bhyveload, bhyvectl and ifconfig command lines.

Flags as documented in bhyve(8) (freebsd-src usr.sbin/bhyve/bhyve.8).
"""

import pytest

from lab.vm import bhyve
from lab.vm.spec import Nic, SpecError, VmSpec

RUN = "20261204-154353-a1a0"
NAME = f"vjlab-{RUN}-fbsd15-cells"


def spec(**changes) -> VmSpec:
    fields = {
        "name": NAME,
        "memory_mib": 2048,
        "cpus": 2,
        "disk": "/dev/zvol/tank/vjlab/" + NAME,
        "disk_format": "raw",
        "firmware": "uefi",
        "console_log": "/var/run/vjlab/console.log",
        "nics": (Nic("user", forwards=((40022, 22),)), Nic("bridge", "bridge0")),
    }
    fields.update(changes)
    return VmSpec(**fields)


def slots(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == "-s"]


def test_uefi_guest_command_line():
    console, _ = bhyve.console_devices(NAME)
    argv = bhyve.bhyve_argv(spec(seed_iso="/var/run/vjlab/seed.iso"), console, ["tap7"])
    assert argv[:7] == ["/usr/sbin/bhyve", "-A", "-H", "-P", "-D", "-c", "2"]
    assert argv[argv.index("-m") + 1] == "2048M"
    assert slots(argv) == [
        "0:0,hostbridge",
        "1:0,lpc",
        f"2:0,virtio-blk,/dev/zvol/tank/vjlab/{NAME}",
        "3:0,ahci-cd,/var/run/vjlab/seed.iso",
        "4:0,virtio-rnd",
        "5:0,virtio-net,slirp,hostfwd=tcp:127.0.0.1:40022-:22",
        "6:0,virtio-net,tap7",
    ]
    lpc = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-l"]
    assert lpc == [
        f"com1,/dev/nmdm-{NAME}A",
        "bootrom,/usr/local/share/uefi-firmware/BHYVE_UEFI.fd",
    ]
    assert argv[-1] == NAME


def test_bios_guest_has_no_bootrom_and_is_loaded_by_bhyveload():
    console, _ = bhyve.console_devices(NAME)
    argv = bhyve.bhyve_argv(spec(firmware="bios"), console, ["tap7"])
    assert not any(arg.startswith("bootrom,") for arg in argv)
    assert bhyve.bhyveload_argv(spec(firmware="bios"), console) == [
        "/usr/sbin/bhyveload",
        "-c",
        f"/dev/nmdm-{NAME}A",
        "-m",
        "2048M",
        "-d",
        f"/dev/zvol/tank/vjlab/{NAME}",
        NAME,
    ]


def test_slirp_forwards_are_separated_by_semicolons_on_loopback():
    nic = Nic("user", forwards=((40022, 22), (40080, 8080)))
    argv = bhyve.bhyve_argv(spec(nics=(nic,)), "/dev/nmdm-xA", [])
    assert slots(argv)[-1] == (
        "5:0,virtio-net,slirp,hostfwd=tcp:127.0.0.1:40022-:22;tcp:127.0.0.1:40080-:8080"
    )


def test_a_nic_mac_is_kept():
    nic = Nic("tap", "tap3", mac="58:9c:fc:00:00:01")
    argv = bhyve.bhyve_argv(spec(nics=(nic,)), "/dev/nmdm-xA", ["tap3"])
    assert slots(argv)[-1] == "5:0,virtio-net,tap3,mac=58:9c:fc:00:00:01"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"disk_format": "qcow2"}, "raw images and zvols"),
        ({"kernel": "/boot/vmlinuz"}, "no direct kernel boot"),
        ({"nics": (Nic("socket", "listen=127.0.0.1:41000"),)}, "no socket NICs"),
        ({"nics": (Nic("user", net="198.51.100.128/25"),)}, "slirp network is fixed"),
    ],
)
def test_what_bhyve_cannot_do_is_refused(changes, message):
    with pytest.raises(SpecError, match=message):
        bhyve.bhyve_argv(spec(**changes), "/dev/nmdm-xA", ["tap0"])


def test_destroy_and_tap_commands():
    assert bhyve.destroy_argv(NAME) == [
        "/usr/sbin/bhyvectl",
        "--destroy",
        f"--vm={NAME}",
    ]
    assert bhyve.tap_commands("tap7", NAME, "bridge0") == [
        ["/sbin/ifconfig", "tap7", "description", NAME],
        ["/sbin/ifconfig", "tap7", "up"],
        ["/sbin/ifconfig", "bridge0", "addm", "tap7"],
    ]
    assert len(bhyve.tap_commands("tap7", NAME, None)) == 2


def test_console_pair_is_named_after_the_guest():
    assert bhyve.console_devices(NAME) == (f"/dev/nmdm-{NAME}A", f"/dev/nmdm-{NAME}B")


IFCONFIG_A = f"""\
vtnet0: flags=1008843<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST,LOWER_UP> mtu 1500
\tinet 192.0.2.10 netmask 0xffffff00 broadcast 192.0.2.255
tap7: flags=1008943<UP,BROADCAST,RUNNING,PROMISC,SIMPLEX,MULTICAST> mtu 1500
\tdescription: {NAME}
\tether 58:9c:fc:10:ff:01
tap8: flags=1008902<BROADCAST,PROMISC,SIMPLEX,MULTICAST> mtu 1500
\tdescription: someone else's
bridge0: flags=1008843<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST,LOWER_UP> mtu 1500
\tdescription: lab bridge
"""


def test_tap_descriptions_are_read_from_ifconfig():
    assert bhyve.parse_tap_descriptions(IFCONFIG_A) == {
        "tap7": NAME,
        "tap8": "someone else's",
    }


def test_unavailable_off_freebsd(monkeypatch):
    monkeypatch.setattr(bhyve.platform, "system", lambda: "Linux")
    assert "FreeBSD hosts only" in bhyve.Bhyve().unavailable()


def test_no_leftovers_listed_off_freebsd(monkeypatch, tmp_path):
    monkeypatch.setattr(bhyve, "VMM_DIR", str(tmp_path / "vmm"))
    monkeypatch.setattr(bhyve.platform, "system", lambda: "Linux")
    assert bhyve.tagged_vms(RUN) == []
    assert bhyve.tagged_taps(RUN) == []


def test_leftover_vms_are_read_from_dev_vmm(monkeypatch, tmp_path):
    (tmp_path / NAME).touch()
    (tmp_path / "builder").touch()
    monkeypatch.setattr(bhyve, "VMM_DIR", str(tmp_path))
    assert bhyve.tagged_vms(RUN) == [NAME]
    assert bhyve.tagged_vms("20261204-000000-beef") == []


def test_bridge_commands():
    assert bhyve.bridge_create_argv() == ["/sbin/ifconfig", "bridge", "create"]
    assert bhyve.bridge_commands("bridge3", f"vjlab-{RUN}-1a2b3c4d-wan") == [
        ["/sbin/ifconfig", "bridge3", "description", f"vjlab-{RUN}-1a2b3c4d-wan"],
        ["/sbin/ifconfig", "bridge3", "up"],
    ]
    assert bhyve.bridge_destroy_argv("bridge3") == [
        "/sbin/ifconfig",
        "bridge3",
        "destroy",
    ]


def test_bridge_descriptions_are_read_from_ifconfig():
    assert bhyve.parse_descriptions(IFCONFIG_A, "bridge") == {"bridge0": "lab bridge"}


def test_no_bridges_listed_off_freebsd(monkeypatch):
    monkeypatch.setattr(bhyve.platform, "system", lambda: "Linux")
    assert bhyve.tagged_bridges(RUN) == []


def test_leftover_bridges_and_taps_on_freebsd(monkeypatch):
    listing = IFCONFIG_A + f"bridge4: flags=8843<UP> mtu 1500\n\tdescription: {NAME}\n"
    destroyed = []

    def run(argv, where="root", check=True, **_):
        if argv[-1] == "destroy":
            destroyed.append(argv)
        return bhyve.command.Result(where, tuple(argv), 0, listing, "", 0.0)

    monkeypatch.setattr(bhyve.platform, "system", lambda: "FreeBSD")
    monkeypatch.setattr(bhyve.shutil, "which", lambda tool: f"/sbin/{tool}")
    monkeypatch.setattr(bhyve.command, "run", run)

    assert bhyve.tagged_bridges(RUN) == [f"bridge4|{NAME}"]
    assert bhyve.tagged_taps(RUN) == [f"tap7|{NAME}"]
    bhyve.destroy_bridge(f"bridge4|{NAME}")
    assert destroyed == [["/sbin/ifconfig", "bridge4", "destroy"]]


def test_an_outbound_slirp_nic_is_opened_and_keeps_its_forwards():
    nic = Nic("user", forwards=((40022, 22),), outbound=True)

    assert bhyve._slirp(nic) == "slirp,open,hostfwd=tcp:127.0.0.1:40022-:22"
    assert bhyve._slirp(Nic("user")) == "slirp"


def test_only_a_user_nic_can_be_outbound():
    with pytest.raises(SpecError, match="only 'user' NICs are outbound"):
        Nic("tap", outbound=True)
