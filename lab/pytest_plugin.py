"""pytest glue: run ids, fixtures for cells, per-cell logs and the run report.

Loaded by the top-level conftest.py. The controller picks the run id and
hands it to xdist workers; each worker writes one record per cell; the
controller assembles results.json and the HTML page when the session ends.
"""

import contextlib
import json
import logging
import os
import platform as host_platform
import signal
import threading
import time

import pytest

from lab import config as lab_config
from lab import preflight, reaper, report, results, runid, schema
from lab.matrix import default, full, parse_selection_across, select
from lab.platforms import RESPONDERS
from lab.platforms import get as get_platform

log = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_addoption(parser):
    group = parser.getgroup("vpnjail lab")
    group.addoption(
        "--axis",
        action="append",
        default=[],
        metavar="AXIS=VALUE[,VALUE]",
        help="run only cells with these axis values (repeatable)",
    )
    group.addoption(
        "--cells",
        choices=("default", "full"),
        default="default",
        help="start from the default set or from every combination",
    )
    group.addoption(
        "--platform",
        choices=("local",),
        default="local",
        help="the platform of test_matrix's cells (FreeBSD cells are "
        "scenarios/test_freebsd.py's)",
    )
    group.addoption(
        "--responder",
        choices=RESPONDERS,
        default="namespaces",
        help="the responder side in namespaces, or in a Debian VM with ESP",
    )
    group.addoption(
        "--lab-fixtures",
        default=str(lab_config.FIXTURES),
        help="directory of matrix/, expectations/, responder.yaml, client.yaml",
    )
    group.addoption(
        "--image",
        action="append",
        default=[],
        metavar="[VERSION=]PATH",
        help="a FreeBSD VM image you already have (repeatable)",
    )
    group.addoption(
        "--download-images",
        action="store_true",
        help="download missing FreeBSD images from the FreeBSD project",
    )
    group.addoption(
        "--hypervisor",
        default=None,
        help="qemu (default), libvirt:URI or bhyve",
    )
    group.addoption(
        "--zfs-dataset",
        default=None,
        metavar="POOL/DATASET",
        help="with --hypervisor bhyve: the ZFS dataset holding the guests' zvols",
    )
    group.addoption(
        "--vm-hosts",
        default="",
        metavar="URI[,URI]",
        help="libvirt hosts to spread VM cells over (one per xdist worker)",
    )
    group.addoption(
        "--record",
        action="store_true",
        help="write observed FreeBSD outcomes into the expectations file",
    )
    group.addoption(
        "--lab-reports",
        default=os.environ.get("VJLAB_REPORTS", os.path.join(REPO, "reports")),
        help="directory holding one sub-directory per run",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    _stop_on_sigterm()
    workerinput = getattr(config, "workerinput", None)
    run_id = workerinput["vjlab_run_id"] if workerinput else runid.new_run_id()
    config.vjlab_run_id = run_id
    config.vjlab_run_dir = os.path.join(config.getoption("lab_reports"), run_id)
    config.vjlab_started = time.time()
    config.addinivalue_line("markers", "cell: a matrix cell of the lab")
    try:
        config.vjlab_config = lab_config.load(
            config.getoption("platform"), config.getoption("lab_fixtures")
        )
    except schema.FixtureError as exc:
        raise pytest.UsageError(f"bad fixture:\n{exc}") from None
    axis_selection(config)  # a bad --axis stops the run before collection
    check_vm_options(config)
    if workerinput is not None:
        # xdist workers re-parse the command line; the allure directory
        # chosen by the controller has to be handed over explicitly.
        config.option.allure_report_dir = workerinput.get("vjlab_allure_dir")
        return
    if not config.option.collectonly:
        os.makedirs(config.vjlab_run_dir, exist_ok=True)
        reaper.claim(run_id)
        if getattr(config.option, "allure_report_dir", None) is None:
            config.option.allure_report_dir = os.path.join(
                config.vjlab_run_dir, "allure"
            )


def _stop_on_sigterm() -> None:
    """SIGTERM as Ctrl-C: fixtures tear down and the run's reaper runs,
    instead of the process vanishing with its guests still up."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def check_vm_options(config) -> None:
    """--hypervisor, --vm-hosts and --zfs-dataset, once, before anything is made."""
    from lab.vm import hypervisor

    chosen = config.getoption("hypervisor")
    try:
        hypervisor.select(chosen)
    except ValueError as exc:
        raise pytest.UsageError(f"--hypervisor: {exc}") from None
    for host in filter(None, config.getoption("vm_hosts").split(",")):
        if host.startswith("libvirt:") or "://" not in host:
            raise pytest.UsageError(
                f"--vm-hosts {host}: expected libvirt URIs without a prefix, "
                "e.g. qemu:///system,qemu+ssh://lab@192.0.2.10/system"
            )
    dataset = config.getoption("zfs_dataset")
    if chosen == "bhyve":
        from lab.platforms import freebsd

        try:
            freebsd.check_bhyve_settings(dataset)
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
    if dataset and chosen != "bhyve":
        raise pytest.UsageError(
            f"--zfs-dataset {dataset}: only bhyve uses it; add --hypervisor bhyve "
            "or drop the option"
        )


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    node.workerinput["vjlab_run_id"] = node.config.vjlab_run_id
    node.workerinput["vjlab_allure_dir"] = getattr(
        node.config.option, "allure_report_dir", None
    )


def selected_cells(config, matrix=None):
    """The cells of *matrix* (default: the platform's) the command line asks for."""
    matrix = matrix or config.vjlab_config.matrix
    base = full(matrix) if config.getoption("cells") == "full" else default(matrix)
    return select(base, axis_selection(config))


def axis_selection(config) -> dict[str, set[str]]:
    """``--axis`` checked against every platform's matrix."""
    try:
        return parse_selection_across(all_matrices(), config.getoption("axis"))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def all_matrices() -> list:
    folder = lab_config.FIXTURES / "matrix"
    return [schema.load(path, schema.Matrix) for path in sorted(folder.glob("*.yaml"))]


@pytest.fixture(scope="session")
def lab_run(request):
    """This process's view of the run: id, directories, platform, capabilities."""
    config = request.config
    problems = preflight.problems()
    if problems:
        pytest.fail("preflight found problems:\n" + "\n".join(problems), pytrace=False)
    platform = get_platform(
        config.getoption("platform"),
        config.getoption("responder"),
        config.getoption("hypervisor"),
    )
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    probed = platform.capabilities(f"{config.vjlab_run_id}-{worker}")
    _write_once(os.path.join(config.vjlab_run_dir, "capabilities.json"), probed)
    yield {
        "id": config.vjlab_run_id,
        "dir": config.vjlab_run_dir,
        "runtime": runid.runtime_dir(config.vjlab_run_id),
        "platform": platform,
        "capabilities": probed,
        "config": config.vjlab_config,
    }
    platform.close()


def _write_once(path: str, data) -> None:
    if not os.path.exists(path):
        with open(path, "w") as out:
            json.dump(data, out, indent=2)


@contextlib.contextmanager
def debug_log(path: str):
    """Everything the lab logs, at DEBUG, into *path* while inside."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    lab_logger = logging.getLogger("lab")
    lab_logger.addHandler(handler)
    lab_logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        lab_logger.removeHandler(handler)
        handler.close()


@pytest.fixture
def cell_log(request, lab_run, cell):
    """A DEBUG log file for this cell, inside its evidence directory."""
    evidence = os.path.join(lab_run["dir"], "cells", cell.slug)
    with debug_log(os.path.join(evidence, "cell.log")):
        log.info("TEST-START %s", cell.id)
        yield evidence
        log.info("TEST-END %s", cell.id)


@pytest.fixture
def world(lab_run, cell, cell_log):
    """The cell's world, built before and torn down after, even on failure."""
    platform = lab_run["platform"]
    try:
        built = platform.build(cell, lab_run["id"], lab_run["runtime"])
    except Exception as exc:
        record_error(lab_run, cell, cell_log, f"building its world failed: {exc}")
        raise
    yield built
    problems = platform.teardown(built)
    for problem in problems:
        log.warning("teardown: %s", problem)


def record_error(lab_run, cell, evidence: str, detail: str) -> None:
    """A cell that could not even start still appears in the run's report."""
    record = results.CellRecord(
        id=cell.id,
        axes=cell.as_dict(),
        expected="?",
        outcome="ERROR",
        verdict="fail",
        detail=detail.splitlines()[0] if detail else "harness failed",
        duration=0.0,
        evidence=os.path.relpath(evidence, lab_run["dir"]),
    )
    results.write_record(lab_run["dir"], record)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if getattr(config, "workerinput", None) is not None or config.option.collectonly:
        return
    run_id = config.vjlab_run_id
    for line in reaper.reap(run_id=run_id, force=True):
        if not line.startswith("directory"):
            log.warning("left behind by this run, removed: %s", line)
    scrub_allure(config)
    # Every session's evidence is scanned, also one that judged no cell
    # (a VM scenario run alone keeps evidence too).
    leaks = secret_leaks(config.vjlab_run_dir, config.vjlab_config)
    if leaks:
        said = f"secrets found in the report {config.vjlab_run_dir}: {'; '.join(leaks)}"
        log.error("%s", said)
        _tell(config, said)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    records = results.collect(config.vjlab_run_dir)
    if not records:
        return
    run = {
        "id": run_id,
        "platform": "+".join(sorted({r["id"].split("/", 1)[0] for r in records})),
        "responder": responder_placement(config),
        "started": config.vjlab_started,
        "seconds": round(time.time() - config.vjlab_started, 2),
        "host": host_platform.node(),
        "kernel": host_platform.release(),
    }
    run.update(_run_facts(config.vjlab_run_dir))
    run["interrupted"] = exitstatus == pytest.ExitCode.INTERRUPTED
    if leaks:
        run["secret_leaks"] = leaks
    results.write_results(config.vjlab_run_dir, run, records)
    if config.getoption("record"):
        record_observed(config, records)
    report.write_html(config.vjlab_run_dir, run, records)
    report.point_latest(config.getoption("lab_reports"), run_id)


def responder_placement(config) -> str:
    """Where this run's responder ran: under bhyve FreeBSD cells have a
    FreeBSD responder VM whatever --responder says (it is for local cells)."""
    if config.getoption("hypervisor") == "bhyve":
        return "freebsd-vm"
    return config.getoption("responder")


def _tell(config, line: str) -> None:
    """A line on the terminal, where the log's records do not go."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"vjlab: {line}", red=True)


def record_observed(config, records: list[dict]) -> None:
    """``--record``: FreeBSD outcomes become that platform's expectations."""
    from lab import record

    cells = [r for r in records if r["id"].startswith("freebsd/")]
    if not cells:
        log.warning("--record: no FreeBSD cell ran; nothing recorded")
        return
    path = lab_config.load("freebsd", config.getoption("lab_fixtures")).paths[
        "expectations"
    ]
    versions = record.versions_from_evidence(config.vjlab_run_dir, {"cells": cells})
    # Outcomes are the client's, but a rule says which responder judged it.
    responder = (
        "a FreeBSD VM (kernel-pfkey)"
        if responder_placement(config) == "freebsd-vm"
        else "Linux namespaces"
    )
    for cell in cells:
        versions.setdefault(cell["id"], {})["responder"] = responder
    record.record({"cells": cells}, path, versions)


def scrub_allure(config) -> None:
    """allure-pytest records every test parameter; a unit test's parameters
    may hold a fixture's secret, so its results are redacted in place."""
    from lab.cell import redactor_for

    folder = getattr(config.option, "allure_report_dir", None)
    if not folder or not os.path.isdir(folder):
        return
    redactor = redactor_for(config.vjlab_config)
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        with open(path, "rb") as src:
            blob = src.read()
        if redactor.leaks(blob):
            with open(path, "w") as out:
                out.write(redactor.text(blob.decode(errors="replace")))


def secret_leaks(run_dir: str, lab) -> list[str]:
    """Every report file that contains one of the fixtures' secrets."""
    from lab.cell import redactor_for

    redactor = redactor_for(lab)
    found = []
    for folder, _, names in os.walk(run_dir):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as src:
                if redactor.leaks(src.read()):
                    found.append(os.path.relpath(path, run_dir))
    return found


def _run_facts(run_dir: str) -> dict:
    facts = {}
    path = os.path.join(run_dir, "capabilities.json")
    if os.path.exists(path):
        with open(path) as src:
            facts["capabilities"] = json.load(src)
    return facts
