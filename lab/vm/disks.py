"""Layered disks: a base image, a provisioned layer, a throw-away overlay.

Each layer is a qcow2 file whose backing file is the layer below, so a
test writes only to its own overlay and the layers below stay as they
were. Cached layers are named by :func:`layer_key` of what made them:
change an input and the key, hence the file, changes. On bhyve hosts the
same idea is a ZFS snapshot and a clone per guest.
"""

import contextlib
import fcntl
import glob
import hashlib
import json
import logging
import os
import shutil

from lab import command, runid
from lab.wait import wait_until

log = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE_DIR = os.path.join(REPO, "images", "cache")
OVERLAY_DIR = os.path.join(CACHE_DIR, "overlays")
QEMU_IMG = "qemu-img"


def layer_key(*inputs: str) -> str:
    """A stable name for a layer made from *inputs* (order matters)."""
    digest = hashlib.sha256()
    for item in inputs:
        data = item.encode()
        # Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()[:16]


def overlay(base: str, path: str, base_format: str = "qcow2") -> str:
    """Create a qcow2 overlay at *path* over *base*; return *path*."""
    base = os.path.abspath(base)
    if not os.path.exists(base):
        raise FileNotFoundError(f"overlay {path}: base image {base} missing")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    command.run(
        [QEMU_IMG, "create", "-q", "-f", "qcow2", "-F", base_format, "-b", base, path]
    )
    return path


def convert(source: str, target: str, source_format: str, target_format: str) -> str:
    command.run(
        [
            QEMU_IMG,
            "convert",
            "-f",
            source_format,
            "-O",
            target_format,
            source,
            target,
        ],
        timeout=900,
    )
    return target


def backing_chain(path: str) -> list[str]:
    """*path* and every backing file below it, top first."""
    result = command.run(
        [QEMU_IMG, "info", "--backing-chain", "--output=json", "-U", path]
    )
    return [layer["filename"] for layer in json.loads(result.stdout)]


def zfs_clone_commands(snapshot: str, dataset: str) -> list[list[str]]:
    """Commands giving a guest *dataset*, a clone of *snapshot* (bhyve hosts).

    A clone shares every block with its snapshot until the guest writes,
    the ZFS counterpart of a qcow2 overlay; its zvol is
    ``/dev/zvol/<dataset>``.
    """
    if "@" not in snapshot:
        raise ValueError(f"{snapshot!r}: expected pool/dataset@snapshot")
    if "@" in dataset or dataset.startswith("/"):
        raise ValueError(f"{dataset!r}: expected pool/dataset")
    # volmode=dev: the host must not taste and mount the guest's partitions.
    return [["zfs", "clone", "-o", "volmode=dev", snapshot, dataset]]


def zfs_destroy_commands(dataset: str) -> list[list[str]]:
    return [["zfs", "destroy", "-r", dataset]]


def zvol(dataset: str) -> str:
    return f"/dev/zvol/{dataset}"


def tagged_files(run_id: str | None) -> list[str]:
    """Files and directories in the image cache that a run's names carry."""
    pattern = runid.namespace_prefix(run_id) if run_id else f"{runid.PREFIX}-"
    found = []
    for folder in (CACHE_DIR, OVERLAY_DIR):
        for path in sorted(glob.glob(os.path.join(folder, f"{pattern}*"))):
            if runid.run_of_namespace(os.path.basename(path)):
                found.append(path)
    return found


def remove(path: str) -> None:
    """Remove an overlay, or a partial build directory, if it exists."""
    if os.path.isdir(path) and not os.path.islink(path):
        unmount_below(path)
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


def unmount_below(path: str) -> None:
    """Unmount anything mounted inside *path* (a chroot a build left)."""
    root = os.path.realpath(path) + os.sep
    with open("/proc/self/mounts") as src:
        points = [line.split()[1] for line in src]
    for point in sorted(points, key=len, reverse=True):
        decoded = point.encode().decode("unicode_escape")
        if decoded.startswith(root):
            command.run(["umount", "--lazy", decoded], check=False)


@contextlib.contextmanager
def locked(path: str, timeout: float):
    """Hold an exclusive lock on *path*, so one process builds a layer at a time.

    A second run wanting the same layer waits here, then finds it cached.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as handle:

        def acquired() -> str | None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return f"{path} held by another build"
            return None

        wait_until(acquired, timeout, f"lock {path}", interval=1.0)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
