"""One record per cell, and the run's results.json built from them."""

import json
import os
from dataclasses import asdict, dataclass, field

RESULTS = "results.json"
RECORD = "result.json"


@dataclass
class CellRecord:
    id: str
    axes: dict[str, str]
    expected: str
    outcome: str
    verdict: str  # pass | fail | new
    detail: str
    duration: float
    evidence: str  # relative to the run directory
    why_expected: str = ""
    deciding: list[list[str]] = field(default_factory=list)
    traffic: dict = field(default_factory=dict)


def verdict(expected: str | None, outcome: str) -> str:
    if expected is None:
        return "new"
    return "pass" if expected == outcome else "fail"


def write_record(run_dir: str, record: CellRecord) -> None:
    path = os.path.join(run_dir, record.evidence, RECORD)
    with open(path, "w") as out:
        json.dump(asdict(record), out, indent=2)


def collect(run_dir: str) -> list[dict]:
    cells_dir = os.path.join(run_dir, "cells")
    records = []
    if not os.path.isdir(cells_dir):
        return records
    for name in sorted(os.listdir(cells_dir)):
        path = os.path.join(cells_dir, name, RECORD)
        if os.path.exists(path):
            with open(path) as src:
                records.append(json.load(src))
    return records


def write_results(run_dir: str, run: dict, records: list[dict]) -> str:
    path = os.path.join(run_dir, RESULTS)
    with open(path, "w") as out:
        json.dump({"run": run, "cells": records}, out, indent=2)
    return path


def load_results(path: str) -> dict:
    """Read a results file (or a run directory holding one)."""
    if os.path.isdir(path):
        path = os.path.join(path, RESULTS)
    with open(path) as src:
        data = json.load(src)
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise ValueError(f"{path}: not a lab results file (no 'cells' list)")
    for number, cell in enumerate(data["cells"]):
        missing = [
            k for k in ("id", "outcome") if not isinstance(cell, dict) or k not in cell
        ]
        if missing:
            raise ValueError(f"{path}: cells[{number}] has no {', '.join(missing)}")
    return data
