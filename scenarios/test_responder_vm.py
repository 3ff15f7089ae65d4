"""Local cells against a responder VM: the same cells, a gateway with ESP.

The responder side (``lan`` and ``gw``) runs in the lab's Debian guest
under QEMU, its wan NIC relayed into each cell's ``wan`` namespace; the
client stays in this machine's namespaces. The outcomes are the local
platform's (the client's kernel is unchanged), and in cells that come up
the responder's own kernel must hold the ESP SAs: the tunnel ends in a
real IPsec stack. ``python -m lab run --responder vm`` runs the whole
matrix this way; this scenario checks a subset on every test run.
"""

import os
import time

import pytest

from lab import capabilities as caps
from lab import cell as cell_runner
from lab.evidence import EvidenceDir
from lab.expectations import expected
from lab.matrix import default, select
from lab.platforms.local import LocalPlatform
from lab.pytest_plugin import axis_selection, debug_log
from lab.vm import guest_lab

SUBSET = guest_lab.LINUX_SUBSET


def _cells(config):
    subset = {axis: {value} for axis, value in (s.split("=") for s in SUBSET)}
    chosen = select(default(config.vjlab_config.matrix), subset)
    return select(chosen, axis_selection(config))


@pytest.fixture
def vm_platform(request, lab_run):
    if request.config.getoption("responder") == "vm":
        pytest.skip("--responder vm: the matrix itself runs against the VM")
    if not _cells(request.config):
        pytest.skip("--axis selects none of the cells this scenario runs")
    unavailable = guest_lab.GuestLab(lab_run["id"]).unavailable()
    if unavailable:
        pytest.skip(f"the responder VM cannot boot here: {unavailable}")
    platform = LocalPlatform("vm", request.config.getoption("hypervisor"))
    yield platform
    platform.close()


def test_local_cells_against_a_responder_vm(vm_platform, lab_run, request):
    # One test for the subset, so one guest serves it whatever xdist does.
    problems = []
    for cell in _cells(request.config):
        problems += _run_and_check(vm_platform, lab_run, cell)
    assert not problems, "\n".join(problems)


def _run_and_check(platform, lab_run, cell) -> list[str]:
    lab = lab_run["config"]
    probed = caps.values(lab_run["capabilities"])
    folder = os.path.join(lab_run["dir"], "responder-vm", cell.slug)
    with debug_log(os.path.join(folder, "cell.log")):
        world = platform.build(cell, lab_run["id"], lab_run["runtime"])
        try:
            evidence = EvidenceDir(folder, cell_runner.redactor_for(lab))
            started = time.monotonic()
            report = cell_runner.run_cell(platform, world, lab, probed, evidence)
            seconds = time.monotonic() - started
        finally:
            platform.teardown(world)

    want = expected(lab.expectations, cell, probed)
    got = str(report.outcome)
    evidence.write_json(
        "outcome.json",
        {
            "cell": cell.id,
            "responder": "vm",
            "expected": str(want.outcome) if want else None,
            "outcome": got,
            "detail": report.outcome.detail,
            "seconds": round(seconds, 2),
        },
    )
    if want is None or got != str(want.outcome):
        return [
            f"{cell.id} against the responder VM: expected "
            f"{want.outcome if want else 'a recorded outcome'}, got {got} "
            f"({report.outcome.detail}) after {seconds:.1f}s; evidence: {folder}"
        ]
    plugins = _loaded_plugins(_read(folder, "responder/charon.log"))
    if "kernel-netlink" not in plugins.split():
        return [
            f"{cell.id}: gw (responder VM): expected kernel-netlink among loaded "
            f"plugins, got: {plugins or 'no plugin line'}"
        ]
    states = _read(folder, "responder/kernel/xfrm-state.txt")
    if got.startswith("UP") and "proto esp" not in states:
        return [
            f"{cell.id}: gw (responder VM): `ip xfrm state` expected ESP SAs for "
            f"an UP tunnel, got: {states.strip() or '(nothing)'}"
        ]
    return []


def _read(folder: str, name: str) -> str:
    try:
        with open(os.path.join(folder, name), errors="replace") as src:
            return src.read()
    except FileNotFoundError:
        return ""


def _loaded_plugins(log_text: str) -> str:
    for line in log_text.splitlines():
        if "loaded plugins:" in line:
            return line.split("loaded plugins:", 1)[1].strip()
    return ""
