"""The FreeBSD matrix: one test per cell, each in a FreeBSD guest of its own.

Cells come from fixtures/matrix/freebsd.yaml (narrowed with ``--axis`` and
``--cells``). The ``client`` axis says what runs in the guest: the lab's
charon (the same steps as on Linux, lab/cell.py), the PF_KEY probe
(lab/pfkey, its report kept as probe.json) or vpnjail's FreeBSD driver.

A cell needs its release's image: given with ``--image``, found in
images/cache/, or downloaded with ``--download-images``. Without one the
cell is skipped before anything is built, and the reason names the command
to run. A cell with no recorded expectation fails as NEW, never passes;
``--record`` writes what the cells did into fixtures/expectations/freebsd.yaml.
"""

import logging
import os
import time

import allure
import pytest

from lab import cell as cell_runner
from lab import config as lab_config
from lab import results, runid
from lab.capabilities import values
from lab.evidence import EvidenceDir
from lab.expectations import expected
from lab.platforms.freebsd import FreeBSDPlatform, Settings, check_local_libvirt
from lab.pytest_plugin import debug_log, selected_cells
from lab.vm import images, placement

log = logging.getLogger(__name__)

COMMAND = ".venv/bin/python -m pytest scenarios/test_freebsd.py"


def freebsd_lab(config) -> lab_config.LabConfig:
    """The FreeBSD fixtures, loaded once per session."""
    if not hasattr(config, "vjlab_freebsd"):
        root = config.getoption("lab_fixtures", default=str(lab_config.FIXTURES))
        config.vjlab_freebsd = lab_config.load("freebsd", root)
    return config.vjlab_freebsd


def freebsd_cells(config) -> list:
    return selected_cells(config, freebsd_lab(config).matrix)


def pytest_generate_tests(metafunc):
    if "freebsd_cell" in metafunc.fixturenames:
        cells = freebsd_cells(metafunc.config)
        metafunc.parametrize("freebsd_cell", cells, ids=[c.id for c in cells])


@pytest.fixture(scope="session")
def freebsd_run(request):
    """This session's FreeBSD run (``--record`` is handled by the plugin)."""
    config = request.config
    run = {
        "id": config.vjlab_run_id,
        "dir": config.vjlab_run_dir,
        "runtime": runid.runtime_dir(config.vjlab_run_id),
        "config": freebsd_lab(config),
        "manifest": images.load_manifest(),
        "images": {},
    }
    return run


def image_for(config, run, version: str) -> images.Image:
    """The release image, or a skip naming the command that supplies one."""
    if version not in run["images"]:
        try:
            run["images"][version] = images.availability(
                version,
                run["manifest"],
                config.getoption("image", default=None) or [],
                config.getoption("download_images", default=False),
                COMMAND,
            )
        except images.ImageError as exc:
            pytest.fail(f"--image: {exc}", pytrace=False)
    found = run["images"][version]
    if isinstance(found, str):
        pytest.skip(found)
    return found


@pytest.fixture
def freebsd_log(freebsd_run, freebsd_cell):
    """The cell's evidence directory, with the harness's DEBUG log in it."""
    evidence = os.path.join(freebsd_run["dir"], "cells", freebsd_cell.slug)
    with debug_log(os.path.join(evidence, "cell.log")):
        yield evidence


@pytest.fixture
def freebsd_platform(request, freebsd_run, freebsd_cell):
    # Settings that cannot work fail before any image is looked for.
    hypervisor, problem = _hypervisor_for_worker(request.config)
    if problem:
        pytest.fail(problem, pytrace=False)
    image = image_for(request.config, freebsd_run, freebsd_cell["freebsd"])
    settings = Settings(
        images={image.version: image},
        hypervisor=hypervisor,
        zfs_dataset=request.config.getoption("zfs_dataset", default=None),
    )
    try:
        return FreeBSDPlatform(settings)
    except ValueError as exc:  # a setting that cannot work: one line, no trace
        problem = str(exc)
    pytest.fail(problem, pytrace=False)


def _hypervisor_for_worker(config) -> tuple[str | None, str | None]:
    """--hypervisor, or this xdist worker's share of --vm-hosts; or a problem.

    Every host is checked, not only this worker's: a list that cannot work
    should fail the same way whatever the number of workers.
    """
    hosts = [h for h in config.getoption("vm_hosts", default="").split(",") if h]
    if not hosts:
        return config.getoption("hypervisor", default=None), None
    try:
        for host in hosts:
            check_local_libvirt(f"libvirt:{host}")
    except ValueError as exc:
        return None, str(exc)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"libvirt:{placement.host_for_worker(hosts, worker)}", None


@pytest.fixture
def freebsd_world(freebsd_platform, freebsd_run, freebsd_cell, freebsd_log):
    """The cell's world, built before and torn down after, even on failure."""
    world = freebsd_platform.build(
        freebsd_cell, freebsd_run["id"], freebsd_run["runtime"]
    )
    yield world
    for problem in freebsd_platform.teardown(world):
        log.warning("teardown: %s", problem)


@pytest.mark.cell
def test_freebsd_cell(
    freebsd_cell, freebsd_run, freebsd_platform, freebsd_world, freebsd_log
):
    started = time.monotonic()
    lab = freebsd_run["config"]
    evidence = EvidenceDir(freebsd_log, cell_runner.redactor_for(lab))
    probed = freebsd_platform.probe_world(freebsd_world)
    evidence.write_json("capabilities.json", probed)
    expectation = expected(lab.expectations, freebsd_cell, values(probed))

    freebsd_platform.before_cell(freebsd_world)
    outcome, traffic = _run(freebsd_platform, freebsd_world, lab, probed, evidence)
    freebsd_platform.keep_evidence(freebsd_world, evidence)

    record_ = _record_cell(freebsd_cell, freebsd_run, freebsd_log, outcome, traffic,
                           expectation, time.monotonic() - started)  # fmt: skip
    evidence.write_json("classification.json", record_.__dict__)
    results.write_record(freebsd_run["dir"], record_)
    _describe_for_allure(record_)
    assert expectation is not None, (
        f"{freebsd_cell.id}: no recorded expectation (NEW); observed {outcome}. "
        f"Record it with {COMMAND} --record, or add a rule to "
        f"{lab.paths['expectations']}"
    )
    assert str(outcome) == str(expectation.outcome), _mismatch(record_)


def _run(platform, world, lab, probed, evidence):
    """The cell's client: the lab's charon, the probe or vpnjail."""
    client = world.cell["client"]
    if client == "probe":
        return platform.run_probe(world, evidence), {}
    if client == "vpnjail":
        return platform.run_vpnjail(world, lab, evidence), {}
    report = cell_runner.run_cell(platform, world, lab, values(probed), evidence)
    return report.outcome, report.traffic


def _record_cell(cell, run, folder, outcome, traffic, expectation, seconds):
    want = str(expectation.outcome) if expectation else None
    return results.CellRecord(
        id=cell.id,
        axes=cell.as_dict(),
        expected=want or "NEW",
        outcome=str(outcome),
        verdict=results.verdict(want, str(outcome)),
        detail=outcome.detail,
        duration=round(seconds, 2),
        evidence=os.path.relpath(folder, run["dir"]),
        why_expected=expectation.why if expectation else "",
        deciding=[list(pair) for pair in outcome.deciding],
        traffic=traffic,
    )


def _describe_for_allure(record_: results.CellRecord) -> None:
    for axis, value in record_.axes.items():
        allure.dynamic.parameter(axis, value)
    allure.dynamic.label("outcome", record_.outcome)
    allure.dynamic.description(f"{record_.detail}\n\nexpected {record_.expected}")


def _mismatch(record_: results.CellRecord) -> str:
    lines = "\n".join(f"  {node}: {line}" for node, line in record_.deciding)
    return (
        f"{record_.id}: expected {record_.expected}, got {record_.outcome} "
        f"({record_.detail})\ndeciding lines:\n{lines or '  (none)'}\n"
        f"evidence: {record_.evidence}"
    )
