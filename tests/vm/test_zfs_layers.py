"""lab/vm/zfs_layers.py: the ZFS layer commands of bhyve hosts.

No ZFS here: commands are compared as lists (zfs-create(8), zfs-clone(8),
zfs-snapshot(8), zfs-rename(8), zfs-destroy(8), zfs-list(8), dd(1)).
"""

import struct

import pytest

from lab import command
from lab.vm import zfs_layers

RUN = "20261204-154353-a1a0"
DATASET = "tank/vjlab"
GUEST = f"vjlab-{RUN}-1a2b3c4d-guest"


def test_names_of_the_layers_and_of_a_guest():
    assert zfs_layers.base_volume(DATASET, "15.0", "k1") == (
        "tank/vjlab/freebsd-15.0-base-k1"
    )
    assert zfs_layers.layer_volume(DATASET, "15.0", "pkg", "k2") == (
        "tank/vjlab/freebsd-15.0-pkg-k2"
    )
    assert zfs_layers.snapshot("tank/vjlab/x", "provisioned") == (
        "tank/vjlab/x@provisioned"
    )
    assert zfs_layers.run_volume(DATASET, GUEST) == f"tank/vjlab/{GUEST}"


def test_a_guest_volume_must_carry_the_run_id():
    with pytest.raises(ValueError, match="vjlab-<run>-"):
        zfs_layers.run_volume(DATASET, "freebsd-15.0-guest")


@pytest.mark.parametrize("dataset", ["zroot/vjlab", "tank", "tank/a_b/c-d.e:f"])
def test_datasets_the_lab_accepts(dataset):
    assert zfs_layers.check_dataset(dataset) == dataset


@pytest.mark.parametrize(
    "dataset", [None, "", "/dev/zvol/tank", "tank/x@snap", "tank//x", "tank/x y"]
)
def test_datasets_the_lab_refuses_name_the_option(dataset):
    with pytest.raises(ValueError, match="--zfs-dataset"):
        zfs_layers.check_dataset(dataset)


def test_a_base_volume_is_sparse_device_only_and_written_with_dd():
    assert zfs_layers.create_argv(f"{DATASET}/{GUEST}", "20G") == [
        "zfs", "create", "-s", "-V", "20G", "-o", "volmode=dev", f"tank/vjlab/{GUEST}",
    ]  # fmt: skip
    assert zfs_layers.write_image_argv("/img/a.raw", "raw", "/dev/zvol/tank/x") == [
        "dd", "if=/img/a.raw", "of=/dev/zvol/tank/x", "bs=1m", "conv=sparse",
    ]  # fmt: skip


def test_a_qcow2_image_is_converted_into_the_existing_zvol():
    assert zfs_layers.write_image_argv("/img/a.qcow2", "qcow2", "/dev/zvol/t/x") == [
        "qemu-img", "convert", "-n", "-f", "qcow2", "-O", "raw", "/img/a.qcow2",
        "/dev/zvol/t/x",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="expected raw or qcow2"):
        zfs_layers.write_image_argv("/img/a.vmdk", "vmdk", "/dev/zvol/t/x")


def test_publishing_snapshots_then_renames_to_the_kept_name():
    scratch = f"{DATASET}/vjlab-{RUN}-provision-15.0-pkg"
    assert zfs_layers.publish_commands(
        scratch, "tank/vjlab/freebsd-15.0-pkg-k2", "provisioned"
    ) == [
        ["zfs", "snapshot", f"{scratch}@provisioned"],
        ["zfs", "rename", scratch, "tank/vjlab/freebsd-15.0-pkg-k2"],
    ]


def test_a_guest_clone_and_its_destruction():
    volume = f"{DATASET}/{GUEST}"
    assert zfs_layers.clone_commands("tank/vjlab/l@provisioned", volume) == [
        ["zfs", "clone", "-o", "volmode=dev", "tank/vjlab/l@provisioned", volume]
    ]
    assert zfs_layers.destroy_commands(volume) == [["zfs", "destroy", "-r", volume]]


def test_kept_layers_are_never_destroyed():
    with pytest.raises(ValueError, match="kept layers"):
        zfs_layers.destroy_commands("tank/vjlab/freebsd-15.0-pkg-k2")


def test_existence_is_asked_of_any_type_by_name():
    assert zfs_layers.exists_argv("tank/vjlab/l@provisioned") == [
        "zfs", "list", "-H", "-o", "name", "-t", "all", "tank/vjlab/l@provisioned",
    ]  # fmt: skip


def test_image_sizes(tmp_path):
    raw = tmp_path / "a.raw"
    raw.write_bytes(b"\0" * 4096)
    qcow2 = tmp_path / "a.qcow2"
    header = b"QFI\xfb" + struct.pack(">I", 3) + b"\0" * 16
    qcow2.write_bytes(header + struct.pack(">Q", 6 << 30) + b"\0" * 64)

    assert zfs_layers.image_bytes(str(raw), "raw") == 4096
    assert zfs_layers.image_bytes(str(qcow2), "qcow2") == 6 << 30
    with pytest.raises(ValueError, match="not a qcow2 image"):
        zfs_layers.image_bytes(str(raw), "qcow2")


def test_volume_size_is_whole_gib_and_never_below_the_minimum():
    assert zfs_layers.volume_size(6 << 30) == "20G"
    assert zfs_layers.volume_size((25 << 30) + 1) == "26G"


LISTING = f"""\
zroot/swap
tank/vjlab/freebsd-15.0-base-k1
tank/vjlab/freebsd-15.0-pkg-k2
tank/vjlab/{GUEST}
tank/vjlab/vjlab-20261204-000000-beef-provision-15.0-pkg
"""


def test_leftover_clones_are_found_by_the_run_id_in_their_name():
    assert zfs_layers.parse_tagged(LISTING, RUN) == [f"tank/vjlab/{GUEST}"]
    assert zfs_layers.parse_tagged(LISTING, None) == [
        f"tank/vjlab/{GUEST}",
        "tank/vjlab/vjlab-20261204-000000-beef-provision-15.0-pkg",
    ]


def test_no_leftover_volumes_are_listed_off_freebsd(monkeypatch):
    monkeypatch.setattr(zfs_layers.platform, "system", lambda: "Linux")
    assert zfs_layers.tagged_volumes(RUN) == []


def test_leftover_volumes_on_freebsd(monkeypatch):
    asked = []

    def run(argv, where="root", check=True, **_):
        asked.append(argv)
        return command.Result(where, tuple(argv), 0, LISTING, "", 0.0)

    monkeypatch.setattr(zfs_layers.platform, "system", lambda: "FreeBSD")
    monkeypatch.setattr(zfs_layers.shutil, "which", lambda tool: f"/sbin/{tool}")
    monkeypatch.setattr(zfs_layers.command, "run", run)

    assert zfs_layers.tagged_volumes(RUN) == [f"tank/vjlab/{GUEST}"]
    zfs_layers.destroy_volume(f"tank/vjlab/{GUEST}")
    assert asked == [
        ["zfs", "list", "-H", "-o", "name", "-t", "volume"],
        ["zfs", "destroy", "-r", f"tank/vjlab/{GUEST}"],
    ]
