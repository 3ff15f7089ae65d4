"""The compatibility matrix: one test per cell, each with a recorded outcome.

The cells come from fixtures/matrix/local.yaml (narrowed with ``--axis`` and
``--cells``); their expected outcomes from fixtures/expectations/. A cell
passes when what the daemons did matches what is recorded for it.
"""

import os
import time

import allure
import pytest

from lab import capabilities as caps
from lab import cell as cell_runner
from lab import results
from lab.evidence import EvidenceDir
from lab.expectations import expected
from lab.pytest_plugin import selected_cells


def pytest_generate_tests(metafunc):
    if "cell" in metafunc.fixturenames:
        cells = selected_cells(metafunc.config)
        metafunc.parametrize("cell", cells, ids=[c.id for c in cells])


@pytest.mark.cell
def test_cell(cell, lab_run, world, cell_log):
    started = time.monotonic()
    lab = lab_run["config"]
    probed = caps.values(lab_run["capabilities"])
    expectation = expected(lab.expectations, cell, probed)
    evidence = EvidenceDir(cell_log, cell_runner.redactor_for(lab))

    try:
        report = cell_runner.run_cell(lab_run["platform"], world, lab, probed, evidence)
    except Exception as exc:  # the cell must still appear in the report
        report = cell_runner.harness_failure(exc, evidence)

    outcome = str(report.outcome)
    want = str(expectation.outcome) if expectation else None
    record = results.CellRecord(
        id=cell.id,
        axes=cell.as_dict(),
        expected=want or "NEW",
        outcome=outcome,
        verdict=results.verdict(want, outcome),
        detail=report.outcome.detail,
        duration=round(time.monotonic() - started, 2),
        evidence=os.path.relpath(cell_log, lab_run["dir"]),
        why_expected=expectation.why if expectation else "",
        deciding=[list(pair) for pair in report.outcome.deciding],
        traffic=report.traffic,
    )
    evidence.write_json("classification.json", record.__dict__)
    results.write_record(lab_run["dir"], record)
    _describe_for_allure(record, evidence)

    assert want is not None, (
        f"{cell.id}: no recorded expectation (NEW); observed {outcome}. "
        f"Add a rule to {lab.paths['expectations']}"
    )
    assert outcome == want, _mismatch(record)


def _describe_for_allure(record: results.CellRecord, evidence: EvidenceDir) -> None:
    for axis, value in record.axes.items():
        allure.dynamic.parameter(axis, value)
    allure.dynamic.label("outcome", record.outcome)
    allure.dynamic.description(f"{record.detail}\n\nexpected {record.expected}")
    for name in ("client/charon.log", "responder/charon.log", "classification.json"):
        path = os.path.join(evidence.path, name)
        if os.path.exists(path):
            allure.attach.file(
                path, name=name, attachment_type=allure.attachment_type.TEXT
            )


def _mismatch(record: results.CellRecord) -> str:
    lines = "\n".join(f"  {node}: {line}" for node, line in record.deciding)
    return (
        f"{record.id}: expected {record.expected}, got {record.outcome} "
        f"({record.detail})\ndeciding lines:\n{lines or '  (none)'}\n"
        f"evidence: {record.evidence}"
    )
