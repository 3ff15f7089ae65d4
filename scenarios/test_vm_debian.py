"""The Linux cells inside a Debian 12 guest: same cells, a kernel with ESP.

Builds (or finds cached) the lab's Debian 12 image and its provisioned
layer, boots a throw-away overlay under QEMU (KVM where it really boots,
else TCG), runs the Linux subset of the matrix inside the guest and
brings its results.json and evidence back to ``reports/<run>/vm-debian/``.
Debian's kernel has ESP, so the kernel-netlink cells that end in
SAD_INSTALL_FAILED(EPROTONOSUPPORT) on a host without it are expected UP
in the guest: the same cell, judged by the same rules, where the kernel
can. Slow under TCG, but never skipped for that.

The same runs under libvirt: on the hosts of ``--vm-hosts URI[,URI]``
(spread over xdist workers), else at ``VJLAB_LIBVIRT_URI``, else on a
libvirtd the scenario starts for itself (:mod:`lab.vm.libvirt_daemon`:
private configuration and state, no network). Where none of these can
be had, that variant is skipped with the reason.
"""

import json
import logging
import os
import shutil
import time

import pytest

from lab import runid
from lab.matrix import default, select
from lab.pytest_plugin import axis_selection, debug_log
from lab.vm import guest_lab, libvirt_daemon, placement

log = logging.getLogger(__name__)

# Tool -> Debian package, for the skip message.
TOOLS = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "debootstrap": "debootstrap",
    "mkfs.ext4": "e2fsprogs",
}


LIBVIRT_URI = os.environ.get("VJLAB_LIBVIRT_URI")
FOLDERS = {"qemu": "vm-debian", "libvirt": "vm-debian-libvirt"}


def missing_pieces() -> str | None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        packages = " ".join(TOOLS[tool] for tool in missing)
        return (
            f"the Debian guest needs {', '.join(missing)}: apt-get install {packages}"
        )
    if os.geteuid() != 0:
        return "the Debian guest is built with debootstrap and chroot: run as root"
    return None


@pytest.fixture(params=sorted(FOLDERS))
def flavour(request) -> str:
    return request.param


@pytest.fixture
def report_dir(request, flavour):
    """reports/<run>/vm-debian[-libvirt], with the lab's DEBUG log in vm.log."""
    path = os.path.join(request.config.vjlab_run_dir, FOLDERS[flavour])
    with debug_log(os.path.join(path, "vm.log")):
        yield path


def outside_selection(config) -> str | None:
    """The guest runs local cells; an --axis choosing none of them skips it."""
    chosen = select(
        [c for c in default(config.vjlab_config.matrix) if _in_subset(c)],
        axis_selection(config),
    )
    return None if chosen else "--axis selects none of the cells the guest runs"


def _in_subset(cell) -> bool:
    return all(
        cell.as_dict().get(k) == v
        for k, v in (item.split("=") for item in guest_lab.LINUX_SUBSET)
    )


@pytest.fixture
def debian_lab(request, flavour):
    why = missing_pieces() or outside_selection(request.config)
    if why:
        pytest.skip(why)
    run_id = request.config.vjlab_run_id
    daemon = None
    uri = None
    if flavour == "libvirt":
        uri = _chosen_libvirt_uri(request.config)
        if uri is None:
            daemon, uri = _private_libvirtd(run_id)
    lab = guest_lab.GuestLab(
        run_id, os.path.join(runid.runtime_dir(run_id), FOLDERS[flavour]), uri
    )
    try:
        unavailable = lab.hypervisor.unavailable()
        if unavailable and flavour == "libvirt" and daemon is None:
            # A host the user named must work; only an absent one skips.
            pytest.fail(
                f"libvirt host {uri.removeprefix('libvirt:')}: {unavailable}",
                pytrace=False,
            )
        if unavailable:
            pytest.skip(f"{flavour}: {unavailable}")
        yield lab
    finally:
        if daemon is not None:
            daemon.stop()


def _chosen_libvirt_uri(config) -> str | None:
    hosts = [h for h in config.getoption("vm_hosts").split(",") if h]
    if hosts:
        # --vm-hosts spreads xdist workers over several libvirt hosts.
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        return f"libvirt:{placement.host_for_worker(hosts, worker)}"
    return f"libvirt:{LIBVIRT_URI}" if LIBVIRT_URI else None


def _private_libvirtd(run_id: str):
    problem = libvirt_daemon.unavailable()
    if problem:
        pytest.skip(
            f"libvirt: no libvirt host given (--vm-hosts, VJLAB_LIBVIRT_URI) and "
            f"no private libvirtd possible: {problem}"
        )
    daemon = libvirt_daemon.PrivateLibvirtd(run_id)
    try:
        uri = daemon.start()
    except RuntimeError as exc:
        failure = str(exc)
    else:
        return daemon, f"libvirt:{uri}"
    pytest.fail(failure, pytrace=False)


def test_debian_guest_runs_the_linux_cells(debian_lab, flavour, report_dir):
    purpose = "cells" if flavour == "qemu" else f"cells-{flavour}"
    started = time.monotonic()
    layers = debian_lab.layers()
    try:
        with debian_lab.guest(purpose, layers.provisioned, layers.base) as node:
            run = debian_lab.run_cells(node, report_dir)
    finally:
        debian_lab.keep_consoles(os.path.join(report_dir, "guest"))
    again = debian_lab.layers()
    _write_summary(report_dir, debian_lab, layers, run, time.monotonic() - started)

    assert not again.built_base and not again.provisioned_now, (
        f"a second lookup rebuilt a layer: {again}"
    )
    capabilities = run.results["run"].get("capabilities", {})
    assert capabilities.get("esp", {}).get("value"), (
        f"{flavour}: expected a guest kernel with ESP, got {capabilities}"
    )
    cells = run.results["cells"]
    assert len(cells) == 4, (
        f"{flavour}: expected the 4 cells of {guest_lab.LINUX_SUBSET}, "
        f"got {[cell['id'] for cell in cells]}\n{run.output[-2000:]}"
    )
    assert not run.mismatches(), _mismatches(run, report_dir)


def _write_summary(path, lab, layers, run, seconds) -> None:
    summary = {
        "accel": lab.accel.name if lab.accel else None,
        "accel_detail": lab.accel.detail if lab.accel else None,
        "image": layers.base.manifest(),
        "built_base": layers.built_base,
        "provisioned_now": layers.provisioned_now,
        "layer_seconds": layers.seconds,
        "boot_seconds": lab.timings,
        "cells_seconds": run.seconds,
        "scenario_seconds": round(seconds, 1),
        "guest_pytest_exit": run.returncode,
    }
    with open(os.path.join(path, "vm.json"), "w") as out:
        json.dump(summary, out, indent=2)
    log.info("vm-debian: %s", json.dumps(summary["layer_seconds"]))


def _mismatches(run, path: str) -> str:
    lines = [
        f"  {cell['id']}: expected {cell['expected']}, got {cell['outcome']} "
        f"({cell['detail']}); evidence {os.path.join(path, cell['evidence'])}"
        for cell in run.mismatches()
    ]
    return "cells in the Debian guest did not match:\n" + "\n".join(lines)
