"""Reports keep no secret: run real cells and search every file they leave.

The cells chosen send and use every secret the fixtures hold: a good
profile (pre-shared key, XAuth password) and a wrong XAuth password.
"""

import os

import pytest

from lab import cell as cell_runner
from lab import report, results
from lab.capabilities import values
from lab.evidence import EvidenceDir
from lab.matrix import default
from lab.pytest_plugin import secret_leaks

CHECKED = ("good", "wrong-xauth")


@pytest.fixture
def leak_world(lab_run, request):
    """A world of its own, so it never collides with the matrix's cells."""
    cells = [
        c
        for c in default(lab_run["config"].matrix)
        if c["isolation"] == "jail"
        and c["backend"] == "libipsec"
        and c["devices"] == "tun-visible"
        and c["auth"] == request.param
    ]
    cell = cells[0]
    platform = lab_run["platform"]
    world = platform.build(
        cell, lab_run["id"], lab_run["runtime"], label=f"leakcheck-{request.param}"
    )
    yield world
    platform.teardown(world)


@pytest.mark.parametrize("leak_world", CHECKED, indirect=True)
def test_evidence_holds_no_secret(lab_run, leak_world, tmp_path):
    lab = lab_run["config"]
    redactor = cell_runner.redactor_for(lab)
    evidence = EvidenceDir(str(tmp_path / "cells" / "checked"), redactor)
    capabilities = values(lab_run["capabilities"])

    outcome = cell_runner.run_cell(
        lab_run["platform"], leak_world, lab, capabilities, evidence
    ).outcome
    record = {
        "id": leak_world.cell.id,
        "axes": leak_world.cell.as_dict(),
        "expected": "-",
        "outcome": str(outcome),
        "verdict": "new",
        "detail": outcome.detail,
        "duration": 0,
        "evidence": "cells/checked",
        "deciding": [list(pair) for pair in outcome.deciding],
        "traffic": {},
    }
    results.write_results(str(tmp_path), {"id": "leakcheck"}, [record])
    report.write_html(str(tmp_path), {"id": "leakcheck"}, [record])

    written = sorted(os.listdir(evidence.path))
    assert "wan.pcap" in written and "client" in written, written
    assert outcome.kind != "ERROR", f"the cell itself failed: {outcome.detail}"
    assert secret_leaks(str(tmp_path), lab) == []


def test_leak_search_finds_a_planted_secret(lab_run, tmp_path):
    # Proves the search above can fail: a secret written anywhere is found.
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "note.txt").write_text(f"x {lab_run['config'].responder.psk}")
    assert secret_leaks(str(tmp_path), lab_run["config"]) == ["deep/note.txt"]
