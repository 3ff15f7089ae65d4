"""lab/platforms/freebsd.py under bhyve: ZFS layers, the bridge, the responder VM.

Nothing boots and no FreeBSD host is needed: the host's commands (zfs,
ifconfig, dd) go to a recorder that answers like one, guests are fakes
whose SSH commands are recorded per node, and the lists are compared.
"""

import os
import shlex

import pytest

from lab import command, runid, topology
from lab.matrix import Cell
from lab.platforms import freebsd
from lab.platforms.base import Stack
from lab.vm import disks, images, responder_guest, zfs_layers
from lab.vm.bhyve import Bhyve
from lab.vm.guest_charon import GuestCharon
from lab.vm.spec import Nic
from lab.vm.ssh import SSHNode

RUN = "20260501-120000-abcd"
DATASET = "tank/vjlab"
IFCONFIG = "/sbin/ifconfig"
RESPONDER_IFCONFIG = f"""\
vtnet0: flags=1008843<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST,LOWER_UP> mtu 1500
\tether 58:9c:fc:00:00:01
\tinet 10.0.2.15 netmask 0xffffff00 broadcast 10.0.2.255
vtnet1: flags=1008843<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST,LOWER_UP> mtu 1500
\tether {responder_guest.WAN_MAC}
lo0: flags=1008049<UP,LOOPBACK,RUNNING,MULTICAST,LOWER_UP> mtu 16384
"""

DATASET_CHECK = freebsd._check_dataset_exists  # the fixture replaces it


def cell(**axes) -> Cell:
    base = dict(
        freebsd="15.0", strongswan="pkg", client="charon", isolation="vnet",
        backend="pfkey", devfs="rs5", ipsec="ipsec-unloaded", nat="pf", auth="good",
    )  # fmt: skip
    base.update(axes)
    return Cell("freebsd", tuple(base.items()))


class Host:
    """The FreeBSD host's commands: recorded, answered like ZFS and ifconfig."""

    def __init__(self, existing=()):
        self.calls: list[list[str]] = []
        self.existing = {DATASET, *existing}

    def run(self, argv, where="root", check=True, timeout=60.0, **_):
        argv = list(argv)
        self.calls.append(argv)
        code, out = 0, ""
        if argv[:2] == ["zfs", "list"]:
            code = 0 if argv[-1] in self.existing else 1
        elif argv[:2] == ["zfs", "snapshot"]:
            self.existing.add(argv[2])
        elif argv[:2] == ["zfs", "rename"]:
            old, new = argv[2], argv[3]
            self.existing |= {
                name.replace(old, new, 1)
                for name in self.existing
                if name.startswith(f"{old}@")
            }
        elif argv == [IFCONFIG, "bridge", "create"]:
            out = "bridge7\n"
        err = "" if code == 0 else "dataset does not exist"
        result = command.Result(where, tuple(argv), code, out, err, 0.0)
        if check and not result.ok:
            raise command.CommandError(result)
        return result

    def zfs(self) -> list[list[str]]:
        """The ZFS commands that change something (not the look-ups)."""
        return [c for c in self.calls if c[0] == "zfs" and c[1] != "list"]


class Guests:
    """Every SSH command and file transfer, by node label, as a guest answers."""

    def __init__(self, esp: str = "1"):
        self.calls: list[tuple[str, list[str]]] = []
        self.transfers: list[tuple[str, str, str, str]] = []
        self.listing = RESPONDER_IFCONFIG
        self.esp = esp

    def exec(self, node, line, timeout, input_text):
        argv = shlex.split(line)
        self.calls.append((node.label, argv))
        if argv == ["ifconfig", "-a"]:
            return 0, self.listing, ""
        if argv[:1] == ["ifconfig"] and argv[2:3] == ["name"]:
            self.listing = self.listing.replace(f"{argv[1]}:", f"{argv[3]}:")
        if argv == ["sysctl", "-n", "kern.features.ipsec"]:
            return 0, f"{self.esp}\n", ""
        return 0, "", ""

    def transfer(self, node, way, source, target):
        self.transfers.append((node.label, way, source, target))
        if way == "get":
            with open(target, "wb") as out:
                out.write(b"pcap")

    def of(self, label: str) -> list[list[str]]:
        return [argv for where, argv in self.calls if where == label]


class FakeGuest:
    def __init__(self, spec, log):
        self.spec = spec
        self.name = spec.name
        self.log = log

    def alive(self) -> bool:
        return True

    def stop(self, timeout: float = 60) -> None:
        self.log.append(("stop", self.name))


class FakeBhyve:
    name = "bhyve"

    def __init__(self, log):
        self.specs = []
        self.log = log

    def start(self, spec):
        self.specs.append(spec)
        self.log.append(("start", spec.name))
        return FakeGuest(spec, self.log)


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "FreeBSD-15.0-RELEASE-amd64-BASIC-CLOUDINIT-ufs.raw"
    path.write_bytes(b"\0" * 4096)
    return images.Image(path, "15.0", "basic-cloudinit", "raw", "user")


@pytest.fixture
def platform(tmp_path, image, monkeypatch):
    # This is not a FreeBSD host: bhyve and the dataset are taken as there.
    monkeypatch.setattr(Bhyve, "unavailable", lambda self: None)
    monkeypatch.setattr(freebsd, "_check_dataset_exists", lambda dataset: None)
    settings = freebsd.Settings(
        images={"15.0": image}, hypervisor="bhyve", cache=tmp_path / "cache",
        zfs_dataset=DATASET,
    )  # fmt: skip
    return freebsd.FreeBSDPlatform(settings)


@pytest.fixture
def lab(platform, monkeypatch, tmp_path):
    """The platform on a recorded FreeBSD host with fake guests."""
    events = []
    host = Host()
    guests = Guests()
    monkeypatch.setattr(command, "run", host.run)
    monkeypatch.setattr(freebsd, "zvol_ready", disks.zvol)
    monkeypatch.setattr(
        SSHNode, "_exec", lambda node, line, t, i: guests.exec(node, line, t, i)
    )
    monkeypatch.setattr(
        SSHNode, "_transfer", lambda node, way, s, t: guests.transfer(node, way, s, t)
    )
    monkeypatch.setattr(
        platform,
        "_login",
        lambda guest, port, user, role: SSHNode(role, RUN, "127.0.0.1", port, user,
                                                "/k/lab_ed25519"),
    )  # fmt: skip
    platform._hypervisor = FakeBhyve(events)
    return {"host": host, "guests": guests, "events": events, "tmp": tmp_path}


def layer(platform, build: str) -> str:
    """The provisioned snapshot's name, keyed as the qcow2 layer is."""
    key = platform._layer_inputs("15.0", build)[2]
    return f"{DATASET}/freebsd-15.0-{build}-{key}@provisioned"


def build(platform, lab, the_cell):
    lab["host"].existing |= {layer(platform, "pkg"), layer(platform, "ports")}
    runtime = str(lab["tmp"] / "rt")
    return platform.build(the_cell, RUN, runtime)


# -- settings ----------------------------------------------------------------------


def test_bhyve_without_a_dataset_is_refused_naming_the_option(tmp_path):
    settings = freebsd.Settings(images={}, hypervisor="bhyve", cache=tmp_path)

    with pytest.raises(ValueError, match="needs --zfs-dataset POOL/DATASET") as info:
        freebsd.FreeBSDPlatform(settings)
    assert "zfs create" in str(info.value) and "\n" not in str(info.value)


def test_a_host_without_bhyve_is_refused_before_anything_is_made(tmp_path):
    settings = freebsd.Settings(
        images={}, hypervisor="bhyve", cache=tmp_path, zfs_dataset=DATASET
    )

    with pytest.raises(ValueError, match="^--hypervisor bhyve: ") as info:
        freebsd.FreeBSDPlatform(settings)
    assert "\n" not in str(info.value)


def test_a_missing_dataset_is_refused_when_the_platform_is_made(tmp_path, monkeypatch):
    monkeypatch.setattr(Bhyve, "unavailable", lambda self: None)
    monkeypatch.setattr(freebsd, "_zfs_exists", lambda dataset: False)
    settings = freebsd.Settings(
        images={}, hypervisor="bhyve", cache=tmp_path, zfs_dataset=DATASET
    )

    with pytest.raises(ValueError, match="no such ZFS dataset; create it with"):
        freebsd.FreeBSDPlatform(settings)


def test_a_malformed_dataset_is_refused(tmp_path):
    settings = freebsd.Settings(
        images={}, hypervisor="bhyve", cache=tmp_path, zfs_dataset="tank/x@snap"
    )

    with pytest.raises(ValueError, match="--zfs-dataset 'tank/x@snap'"):
        freebsd.FreeBSDPlatform(settings)


def test_qemu_needs_no_dataset(tmp_path):
    freebsd.FreeBSDPlatform(freebsd.Settings(images={}, cache=tmp_path))


def test_the_responder_is_the_freebsd_vm_with_pfkey(platform):
    assert platform.responder_backend({}) == "pfkey"


# -- ZFS layers ----------------------------------------------------------------------


def test_the_first_run_writes_the_image_provisions_a_clone_and_publishes_it(
    platform, lab, monkeypatch, image
):
    runs = iter(["20260501-120001-0001", "20260501-120002-0002"])
    monkeypatch.setattr(runid, "new_run_id", runs.__next__)
    provisioned = []
    monkeypatch.setattr(
        platform,
        "_provision_guest",
        lambda img, build, branch, name, disk, fmt, world: provisioned.append(
            (name, disk, fmt)
        ),
    )
    key = platform._layer_inputs("15.0", "pkg")[2]
    base_key = disks.layer_key("freebsd-base", freebsd._image_identity(image), "20G")
    base = f"{DATASET}/freebsd-15.0-base-{base_key}"
    kept = f"{DATASET}/freebsd-15.0-pkg-{key}"
    scratch_base = f"{DATASET}/vjlab-20260501-120001-0001-base-15.0"
    scratch = f"{DATASET}/vjlab-20260501-120002-0002-provision-15.0-pkg"

    assert platform.provisioned_snapshot("15.0", "pkg") == f"{kept}@provisioned"

    assert lab["host"].zfs() == [
        ["zfs", "create", "-s", "-V", "20G", "-o", "volmode=dev", scratch_base],
        ["zfs", "snapshot", f"{scratch_base}@image"],
        ["zfs", "rename", scratch_base, base],
        ["zfs", "clone", "-o", "volmode=dev", f"{base}@image", scratch],
        ["zfs", "snapshot", f"{scratch}@provisioned"],
        ["zfs", "rename", scratch, kept],
    ]
    assert [
        "dd", f"if={image.path}", f"of=/dev/zvol/{scratch_base}", "bs=1m",
        "conv=sparse",
    ] in lab["host"].calls  # fmt: skip
    assert provisioned == [
        ("vjlab-20260501-120002-0002-provision-15.0-pkg", f"/dev/zvol/{scratch}", "raw")
    ]


def test_a_second_run_reuses_the_provisioned_snapshot(platform, lab, monkeypatch):
    lab["host"].existing.add(layer(platform, "pkg"))
    monkeypatch.setattr(
        platform, "_provision_zfs", lambda *a: pytest.fail("provisioned again")
    )

    assert platform.provisioned_snapshot("15.0", "pkg") == layer(platform, "pkg")
    assert lab["host"].calls == [zfs_layers.exists_argv(layer(platform, "pkg"))]


def test_the_snapshot_is_keyed_like_the_qcow2_layer(platform, monkeypatch, lab):
    def provision(image, build, branch, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"layer")

    monkeypatch.setattr(platform, "_provision", provision)
    qcow2 = platform.provisioned_layer("15.0", "pkg")

    assert layer(platform, "pkg") == f"{DATASET}/freebsd-{qcow2.stem}@provisioned"


def test_a_failed_provisioning_destroys_its_clone_and_keeps_nothing(
    platform, lab, monkeypatch
):
    monkeypatch.setattr(runid, "new_run_id", lambda: "20260501-120002-0002")

    def broken(*args):
        raise RuntimeError("pkg could not fetch")

    monkeypatch.setattr(platform, "_provision_guest", broken)

    with pytest.raises(RuntimeError, match="pkg could not fetch"):
        platform.provisioned_snapshot("15.0", "pkg")
    scratch = f"{DATASET}/vjlab-20260501-120002-0002-provision-15.0-pkg"
    assert lab["host"].zfs()[-1] == ["zfs", "destroy", "-r", scratch]
    assert layer(platform, "pkg") not in lab["host"].existing


def test_a_missing_dataset_is_named_before_anything_is_made(platform, lab, monkeypatch):
    monkeypatch.setattr(freebsd, "_check_dataset_exists", DATASET_CHECK)
    lab["host"].existing.discard(DATASET)

    with pytest.raises(RuntimeError, match="zfs create -o mountpoint=none tank/vjlab"):
        platform.provisioned_snapshot("15.0", "pkg")
    assert lab["host"].zfs() == []


# -- a charon cell's world -------------------------------------------------------------


def test_a_charon_cell_gets_a_bridge_a_responder_vm_and_a_client_guest(platform, lab):
    world = build(platform, lab, cell())
    names = world.names
    guest, responder = names["guest"], names["responder"]

    assert lab["host"].calls[:3] == [
        [IFCONFIG, "bridge", "create"],
        [IFCONFIG, "bridge7", "description", names["bridge"]],
        [IFCONFIG, "bridge7", "up"],
    ]
    assert (
        names["bridge"].startswith(f"vjlab-{RUN}-") and names["bridge"][-4:] == "-wan"
    )
    assert [c for c in lab["host"].calls if c[:2] == ["zfs", "clone"]] == [
        ["zfs", "clone", "-o", "volmode=dev", layer(platform, "pkg"),
         f"{DATASET}/{responder}"],
        ["zfs", "clone", "-o", "volmode=dev", layer(platform, "pkg"),
         f"{DATASET}/{guest}"],
    ]  # fmt: skip
    first, second = platform._hypervisor.specs
    assert (first.name, second.name) == (responder, guest)
    for spec in (first, second):
        assert spec.disk == f"/dev/zvol/{DATASET}/{spec.name}"
        assert spec.disk_format == "raw"
        assert spec.nics[0].kind == "user" and spec.nics[0].net is None
    assert first.nics[1] == Nic("bridge", "bridge7", mac=responder_guest.WAN_MAC)
    assert second.nics[1] == Nic("bridge", "bridge7")


def test_the_responder_vm_is_configured_once_and_reset_for_the_cell(platform, lab):
    world = build(platform, lab, cell(nat="direct"))
    commands = lab["guests"].of("gw")

    assert commands[:3] == [
        ["ifconfig", "-a"],
        ["ifconfig", "vtnet1", "name", "gw0"],
        ["mkdir", "-p", "/run", world.runtime_dir],
    ]
    network = responder_guest.network_steps("freebsd", "gw0", with_wan=True)
    reset = responder_guest.cell_steps("freebsd", "gw0", "direct", with_wan=True)
    assert all(step in commands for step in network + reset)
    assert commands.index(network[-1]) < commands.index(reset[0])
    assert world.responder_guest.wan_if == "gw0"
    assert world.responder_guest.with_wan is True


def test_lan_gw_and_wan_are_the_responder_vm(platform, lab):
    world = build(platform, lab, cell())
    node = world.responder_guest.node

    assert all(world.node(role) is node for role in ("lan", "gw", "wan"))
    assert world.node(topology.CAPTURE[0]) is node
    assert world.responder == Stack(node, os.path.join(world.runtime_dir, "gw"),
                                    "tun-visible")  # fmt: skip
    assert isinstance(platform.charon(world.responder), GuestCharon)
    assert platform.system_of(world.responder) == "freebsd"
    assert world.client.node is world.node("jail")


def test_the_client_guest_routes_through_the_responder_vm(platform, lab):
    build(platform, lab, cell())
    host = lab["guests"].of("host")

    assert ["ifconfig", "vtnet1", "inet", "198.51.100.66/26", "up"] in host
    assert ["route", "-n", "add", "-inet", "default", "198.51.100.65"] in host


def test_teardown_stops_both_guests_then_removes_bridge_and_clones(platform, lab):
    world = build(platform, lab, cell())
    guest, responder = world.names["guest"], world.names["responder"]
    lab["host"].calls.clear()

    assert platform.teardown(world) == []

    assert lab["events"][-2:] == [("stop", guest), ("stop", responder)]
    assert lab["host"].calls == [
        ["zfs", "destroy", "-r", f"{DATASET}/{responder}"],
        [IFCONFIG, "bridge7", "destroy"],
        ["zfs", "destroy", "-r", f"{DATASET}/{guest}"],
    ]
    assert world.volumes == {} and world.bridge == ""


def test_a_responder_without_esp_fails_the_build_and_leaves_nothing(platform, lab):
    lab["guests"].esp = "0"

    with pytest.raises(RuntimeError, match="cannot carry ESP"):
        build(platform, lab, cell())

    responder = [spec.name for spec in platform._hypervisor.specs]
    assert lab["events"] == [("start", responder[0]), ("stop", responder[0])]
    assert lab["host"].calls[-2:] == [
        ["zfs", "destroy", "-r", f"{DATASET}/{responder[0]}"],
        [IFCONFIG, "bridge7", "destroy"],
    ]


def test_a_probe_cell_boots_only_the_client_guest(platform, lab):
    world = build(platform, lab, cell(client="probe", isolation="host",
                                      devfs="hostdev"))  # fmt: skip

    assert [spec.name for spec in platform._hypervisor.specs] == [world.names["guest"]]
    assert len(platform._hypervisor.specs[0].nics) == 1
    assert not [c for c in lab["host"].calls if c[0] == IFCONFIG]
    assert set(world.nodes) == {"host"}


def test_the_responder_kernel_state_comes_from_the_responder_vm(platform, lab):
    world = build(platform, lab, cell())
    lab["guests"].calls.clear()

    state = platform.responder_kernel_state(world.responder)

    assert state and all(label == "gw" for label, _ in lab["guests"].calls)


def test_vpnjail_starts_the_responder_through_the_platform(platform, lab, monkeypatch):
    from lab import cell as cell_runner
    from lab import config

    started = []
    monkeypatch.setattr(
        cell_runner, "start_service",
        lambda plat, world, service, name: started.append((plat, service, name)),
    )  # fmt: skip
    monkeypatch.setattr(
        cell_runner, "start_daemon",
        lambda plat, daemon: started.append((plat, daemon)),
    )  # fmt: skip
    world = build(platform, lab, cell(client="vpnjail", devfs="rs5tun"))

    daemon = platform._start_responder(world, config.load("freebsd"))

    assert started[0][:2] == (platform, topology.PROTECTED_SERVICE)
    assert started[1] == (platform, daemon)
    assert daemon.stack.node is world.responder_guest.node
    assert daemon.backend == "pfkey"
    assert isinstance(platform.charon(daemon.stack), GuestCharon)


def test_the_wan_capture_is_fetched_from_the_responder_vm(platform, lab, tmp_path):
    world = build(platform, lab, cell())

    class Evidence:
        path = str(tmp_path / "evidence")

    os.makedirs(Evidence.path)
    freebsd._fetch_responder_capture(world, Evidence)

    assert lab["guests"].transfers[-1] == (
        "gw", "get", os.path.join(world.runtime_dir, "wan.pcap"),
        os.path.join(Evidence.path, "wan.pcap"),
    )  # fmt: skip


def test_teardown_reports_what_it_could_not_remove(platform, lab, monkeypatch):
    world = build(platform, lab, cell())
    guest = world.names["guest"]

    def refusing(argv, where="root", check=True, **_):
        code = 1 if argv[:2] == ["zfs", "destroy"] and argv[-1].endswith(guest) else 0
        err = "dataset is busy" if code else ""
        return command.Result(where, tuple(argv), code, "", err, 0.0)

    monkeypatch.setattr(command, "run", refusing)

    assert platform.teardown(world) == [
        f"{guest}: `zfs destroy -r {DATASET}/{guest}` expected exit status 0, "
        "got 1: dataset is busy"
    ]
