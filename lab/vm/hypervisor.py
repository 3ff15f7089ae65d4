"""One interface over plain QEMU, libvirt and bhyve.

``select(uri).start(spec)`` returns a :class:`Guest`; nothing above this
module knows which hypervisor runs it. :func:`leftovers` and :func:`remove`
find and delete what a run left behind (guests, overlays, taps, bridges,
zvol clones) by the run id their names carry, for the lab's reaper.
"""

import logging
import os
import re
import shlex
import socket
import subprocess

from lab import runid

log = logging.getLogger(__name__)

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]")


class GuestError(RuntimeError):
    """A guest could not be started or stopped; the message names it."""


class Guest:
    """A running guest: its name, the host port for SSH, its console."""

    name: str
    ssh_port: int | None
    console_log: str
    accel = None  # the lab.vm.accel.Accel it runs under, where known

    def __init__(self, spec, accel=None):
        self.spec = spec
        self.name = spec.name
        self.ssh_port = spec.ssh_port
        self.console_log = spec.console_log
        self.accel = accel

    def alive(self) -> bool:
        raise NotImplementedError

    def stop(self, timeout: float = 60) -> None:
        """Ask the guest to power off; force it after *timeout* seconds."""
        raise NotImplementedError

    def console_tail(self, lines: int = 20) -> str:
        return tail(self.console_log, lines)


class Hypervisor:
    name: str

    def unavailable(self) -> str | None:
        """None when usable here, else why not and how to fix it."""
        raise NotImplementedError

    def start(self, spec) -> Guest:
        raise NotImplementedError


def select(uri: str | None) -> Hypervisor:
    """None or "qemu": plain QEMU; "libvirt:<uri>"; "bhyve"."""
    if uri in (None, "", "qemu"):
        from lab.vm.qemu import Qemu

        return Qemu()
    if uri.startswith("libvirt:"):
        from lab.vm.libvirt_backend import Libvirt

        return Libvirt(uri[len("libvirt:") :])
    if uri == "bhyve":
        from lab.vm.bhyve import Bhyve

        return Bhyve()
    raise ValueError(
        f"hypervisor {uri!r}: expected qemu, libvirt:<uri> "
        "(e.g. libvirt:qemu:///system) or bhyve"
    )


def tail(path: str, lines: int = 20) -> str:
    """The last *lines* lines of a console log, without terminal escapes."""
    if not path or not os.path.exists(path):
        return f"(no console log at {path or 'an unset path'})"
    with open(path, "rb") as src:
        src.seek(0, os.SEEK_END)
        src.seek(max(0, src.tell() - 64 * 1024))
        text = src.read().decode(errors="replace")
    text = ANSI_ESCAPE.sub("", text).replace("\r", "")
    kept = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:]) if kept else "(console log empty)"


def spawn_tagged(name: str, run_id: str, argv: list[str], log_path: str):
    """A hypervisor process for guest *name*, tagged with its run, output to
    *log_path*, in a session of its own (a Ctrl-C reaches the lab first)."""
    env = dict(os.environ, **{runid.ENV_VAR: run_id})
    log.debug("[%s] spawn %s > %s", name, shlex.join(argv), log_path)
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def leftovers(run_id: str | None, libvirt_uris: tuple[str, ...] = ()) -> list[str]:
    """What runs left behind, as ``kind:what`` items for :func:`remove`.

    Kinds: ``file`` (overlays, partial image builds, guest state under
    images/cache), ``domain`` (libvirt, for the URIs given), ``bhyve``
    (VMs under /dev/vmm), ``tap`` and ``bridge`` (FreeBSD interfaces
    described with the run id) and ``zvol`` (ZFS clones named with it).
    QEMU processes are not listed: the reaper kills them as processes, by
    ``VJLAB_RUN`` in their environment or, for those libvirtd started, by
    the guest name on their command line. *run_id* None lists
    every run's. The order is the order of removal: a zvol is busy while
    its bhyve VM lives.
    """
    from lab.vm import bhyve, disks, libvirt_backend, zfs_layers

    found = [f"file:{path}" for path in disks.tagged_files(run_id)]
    for uri in libvirt_uris:
        found += [
            f"domain:{uri}|{name}" for name in libvirt_backend.tagged(uri, run_id)
        ]
    found += [f"bhyve:{name}" for name in bhyve.tagged_vms(run_id)]
    found += [f"tap:{name}" for name in bhyve.tagged_taps(run_id)]
    found += [f"bridge:{name}" for name in bhyve.tagged_bridges(run_id)]
    found += [f"zvol:{name}" for name in zfs_layers.tagged_volumes(run_id)]
    return found


def run_of(item: str) -> str | None:
    """The run id an item of :func:`leftovers` belongs to."""
    match = re.search(rf"{runid.PREFIX}-(\d{{8}}-\d{{6}}-[0-9a-f]{{4}})-", item)
    return match.group(1) if match else None


def remove(item: str) -> None:
    """Remove one item of :func:`leftovers`."""
    from lab.vm import bhyve, disks, libvirt_backend, zfs_layers

    kind, _, what = item.partition(":")
    if kind == "file":
        disks.remove(what)
    elif kind == "domain":
        uri, _, name = what.rpartition("|")
        libvirt_backend.destroy(uri, name)
    elif kind == "bhyve":
        bhyve.destroy_vm(what)
    elif kind == "tap":
        bhyve.destroy_tap(what)
    elif kind == "bridge":
        bhyve.destroy_bridge(what)
    elif kind == "zvol":
        zfs_layers.destroy_volume(what)
    else:
        raise ValueError(f"leftover {item!r}: unknown kind {kind!r}")
    log.info("removed leftover %s", item)
