"""Disk layers as ZFS volumes, for bhyve hosts: the qcow2 layers' counterpart.

::

    <dataset>/freebsd-<version>-base-<key>@image              the release image
      <dataset>/freebsd-<version>-<build>-<key>@provisioned   a clone, provisioned
        <dataset>/vjlab-<run>-<label>-guest                   a clone per guest

bhyve reads raw disks and zvols, never qcow2 (bhyve(8), block storage
backends), so where QEMU stacks qcow2 overlays (:mod:`lab.vm.disks`) a
bhyve host stacks clones: a clone shares every block with its snapshot
until the guest writes. A kept layer is made under a scratch name that
carries the run id (``vjlab-<run>-...``, so the reaper finds a half-made
one), snapshotted, then renamed to its kept name; the snapshot under the
kept name therefore exists only once the layer is complete, and a later
run that finds it reuses it. Kept layers carry no run id and are never
reaped; a guest's clone carries one and is destroyed at teardown.

Every zvol gets ``volmode=dev`` (zfsprops(7)): a plain device, so GEOM on
the host never tastes and mounts the guest's partitions.

This module only builds names and command lists; lab.platforms.freebsd
runs them, and :func:`tagged_volumes` / :func:`destroy_volume` serve the
reaper.
"""

import logging
import math
import os
import platform
import re
import shutil
import struct

from lab import command, runid
from lab.vm import disks

log = logging.getLogger(__name__)

ZFS = "zfs"
BASE_SNAPSHOT = "image"
LAYER_SNAPSHOT = "provisioned"
MIN_VOLUME_GIB = 20  # room above the image's own size for packages and cells
GIB = 1 << 30
QCOW2_MAGIC = b"QFI\xfb"
# ZFS component names: letters, digits and _ - : . (ZFS naming requirements).
DATASET_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*(/[A-Za-z0-9_.:-]+)*$")


def check_dataset(dataset: str | None) -> str:
    """*dataset* if it names a ZFS file system the lab may put zvols under."""
    if not dataset or not DATASET_PATTERN.match(dataset):
        raise ValueError(
            f"--zfs-dataset {dataset!r}: expected pool/dataset, e.g. zroot/vjlab "
            "(letters, digits, _ - . : and / only; no @, no leading /)"
        )
    return dataset


def base_volume(dataset: str, version: str, key: str) -> str:
    return f"{dataset}/freebsd-{version}-base-{key}"


def layer_volume(dataset: str, version: str, build: str, key: str) -> str:
    return f"{dataset}/freebsd-{version}-{build}-{key}"


def snapshot(volume: str, name: str) -> str:
    return f"{volume}@{name}"


def run_volume(dataset: str, name: str) -> str:
    """The volume of a guest (or a scratch layer) *name*, which carries a run id."""
    if runid.run_of_namespace(name) is None:
        raise ValueError(
            f"volume {name!r}: expected vjlab-<run>-..., so the reaper can find it"
        )
    return f"{dataset}/{name}"


def exists_argv(name: str) -> list[str]:
    """Succeeds when volume or snapshot *name* exists."""
    return [ZFS, "list", "-H", "-o", "name", "-t", "all", name]


def image_bytes(path: str, image_format: str) -> int:
    """The disk size an image stands for: a raw file's length, a qcow2's
    virtual size (big-endian at offset 24 of its header)."""
    if image_format == "raw":
        return os.path.getsize(path)
    with open(path, "rb") as src:
        header = src.read(32)
    if len(header) < 32 or not header.startswith(QCOW2_MAGIC):
        raise ValueError(f"{path}: not a qcow2 image (no QFI\\xfb header)")
    return struct.unpack(">Q", header[24:32])[0]


def volume_size(size_bytes: int) -> str:
    """A zvol size for an image of *size_bytes*: whole GiB, at least the minimum."""
    return f"{max(MIN_VOLUME_GIB, math.ceil(size_bytes / GIB))}G"


def create_argv(volume: str, size: str) -> list[str]:
    # -s: sparse, no reservation of the whole size (zfs-create(8)).
    return [ZFS, "create", "-s", "-V", size, "-o", "volmode=dev", volume]


def write_image_argv(path: str, image_format: str, device: str) -> list[str]:
    """Write the release image into a fresh zvol *device*."""
    if image_format == "raw":
        # conv=sparse seeks over zero blocks: a new sparse zvol reads as zeros.
        return ["dd", f"if={path}", f"of={device}", "bs=1m", "conv=sparse"]
    if image_format == "qcow2":
        # -n: the target exists (the zvol); qemu-img must not create it.
        return ["qemu-img", "convert", "-n", "-f", "qcow2", "-O", "raw", path, device]
    raise ValueError(f"{path}: image format {image_format!r}: expected raw or qcow2")


def publish_commands(scratch: str, kept: str, name: str) -> list[list[str]]:
    """Snapshot *scratch*, then rename it (its snapshot goes along) to *kept*."""
    return [
        [ZFS, "snapshot", snapshot(scratch, name)],
        [ZFS, "rename", scratch, kept],
    ]


def clone_commands(source_snapshot: str, volume: str) -> list[list[str]]:
    return disks.zfs_clone_commands(source_snapshot, volume)


def destroy_commands(volume: str) -> list[list[str]]:
    """Destroy a run's volume; a kept layer (no run id) is refused."""
    if runid.run_of_namespace(volume.rsplit("/", 1)[-1]) is None:
        raise ValueError(f"{volume}: carries no run id; kept layers are not destroyed")
    return disks.zfs_destroy_commands(volume)


LIST_VOLUMES = [ZFS, "list", "-H", "-o", "name", "-t", "volume"]


def parse_tagged(listing: str, run_id: str | None) -> list[str]:
    """Volumes of ``zfs list -H -o name -t volume`` that carry *run_id* (or any)."""
    found = []
    for line in listing.splitlines():
        name = line.strip()
        run = runid.run_of_namespace(name.rsplit("/", 1)[-1])
        if name and run is not None and run_id in (None, run):
            found.append(name)
    return found


def tagged_volumes(run_id: str | None) -> list[str]:
    """Run-tagged zvols on this FreeBSD host (none elsewhere, none without zfs)."""
    if platform.system() != "FreeBSD" or shutil.which(ZFS) is None:
        return []
    return parse_tagged(command.run(LIST_VOLUMES, check=False).stdout, run_id)


def destroy_volume(volume: str) -> None:
    for argv in destroy_commands(volume):
        command.run(argv, where=volume, check=False)
